// Veil's account pages in real headless Chromium (playwright-core), tried the way a new
// person would: sign up through the form, open the confirmation link from the mail,
// log in with the keyboard alone, correct the display name, download the export, turn
// the survey opt-in off, change the e-mail address, start a meeting from the landing page, forget the password and
// set a new one through the mailed link, close the account — and then be refused.
//
// Along the way it checks that the only cookie is the session cookie (HttpOnly,
// SameSite=Lax), that no script can read it and nothing is kept in web storage, that
// every request stays on Veil's origin, that mailed tokens leave the address bar and
// reach nothing but their API call, that every control has an accessible name, and that
// the API's refusals (429 with its Retry-After included) are said in a live region.
//
// Run it like meeting.mjs, in a network namespace of its own:
//
//   unshare -n sh -c 'ip link set lo up && VEIL_BIN=target/debug/veil exec node web/e2e/accounts.mjs'
//
// (`cargo test --test browser_accounts` does exactly that.) VEIL_E2E_WEB_DIR=web serves
// the pages from that folder instead of the binary's copies while working on them.

import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { assert, checkCount, consoleLines, everyone, fmt, harness, log, mailedLink, ok, serveWebDir, waitFor } from './lib.mjs';

// The whole run; each wait has its own, shorter limit.
const DEADLINE_MS = 80_000;

const requests = []; // {url, method, body}
const setCookies = []; // Set-Cookie header values, as received
const problems = []; // uncaught page errors
let page = null;

/** The text of the live region `id`, once it matches `re`. */
async function says(id, re, what = `#${id} says ${re}`) {
  const region = page.locator(`#${id}`);
  const text = await waitFor(what, async () => {
    const t = (await region.textContent()) ?? '';
    return re.test(t) && t;
  }, 15_000, 100);
  assert((await region.getAttribute('aria-live')) === 'polite', `#${id} is a live region`);
  return text;
}

/** Controls (text boxes, check boxes, buttons, links, lists) without an accessible name. */
async function unnamedControls() {
  const cdp = await page.context().newCDPSession(page);
  try {
    const { nodes } = await cdp.send('Accessibility.getFullAXTree');
    const roles = new Set(['textbox', 'checkbox', 'button', 'link', 'combobox', 'radio', 'searchbox']);
    const controls = nodes.filter((n) => !n.ignored && roles.has(n.role?.value));
    return {
      count: controls.length,
      unnamed: controls.filter((n) => !String(n.name?.value ?? '').trim()).map((n) => n.role.value),
    };
  } finally {
    await cdp.detach();
  }
}

async function allNamed(where) {
  const { count, unnamed } = await unnamedControls();
  assert(count > 0 && unnamed.length === 0, `${where}: controls without an accessible name: ${fmt(unnamed)}`);
  return count;
}

/** Presses Tab until the element with id `id` has the focus. */
async function tabTo(id) {
  await waitFor(`Tab reaches #${id}`, async () => {
    await page.keyboard.press('Tab');
    return page.evaluate((want) => document.activeElement?.id === want, id);
  }, 10_000, 0);
}

async function storageIsEmpty(where) {
  const s = await page.evaluate(() => ({ local: localStorage.length, session: sessionStorage.length, cookie: document.cookie }));
  assert(s.local === 0 && s.session === 0 && s.cookie === '', `${where}: storage or readable cookies: ${fmt(s)}`);
}

async function logInWithMouse(email, password) {
  await page.goto(`${base}/login`);
  await page.getByLabel('E-mail address', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Log in', exact: true }).click();
}

let base = '';

/**
 * A mailed link's token went in request bodies to `api` only, and in no request's URL
 * but the page's own navigation (whose fragment the browser keeps to itself).
 */
function tokenStaysPut(link, api) {
  const token = new URL(link).hash.slice(1);
  const inBody = requests.filter((r) => r.body.includes(token));
  assert(
    inBody.length > 0 && inBody.every((r) => r.method === 'POST' && new URL(r.url).pathname === api),
    `the token went in bodies to ${api} only: ${fmt(inBody.map((r) => `${r.method} ${r.url}`))}`,
  );
  const inUrl = requests.filter((r) => r.url.includes(token));
  assert(inUrl.every((r) => r.navigation && r.url === link), `request URLs with the token: ${fmt(inUrl)}`);
}

async function run(veil, browser) {
  base = veil.base;
  const context = await browser.newContext({ viewport: { width: 1024, height: 900 }, acceptDownloads: true });
  await serveWebDir(context);
  context.on('request', (r) =>
    requests.push({ url: r.url(), method: r.method(), body: r.postData() ?? '', navigation: r.isNavigationRequest() }),
  );
  context.on('response', async (r) => {
    const headers = await r.headersArray().catch(() => []);
    for (const h of headers) if (h.name.toLowerCase() === 'set-cookie') setCookies.push(h.value);
  });
  page = await context.newPage();
  page.on('websocket', (ws) => requests.push({ url: ws.url(), method: 'WS', body: '' }));
  page.on('pageerror', (e) => problems.push(e.message));
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()} ${m.location()?.url ?? ''}`));

  const tag = randomBytes(4).toString('hex');
  let email = `grace-${tag}@example.com`;
  const firstPassword = 'a long enough passphrase to start with';
  const newPassword = 'another passphrase chosen after forgetting';

  // 1. Logged out, the landing page offers log-in and sign-up.
  await page.goto(`${base}/`);
  await page.getByRole('link', { name: 'Sign up' }).first().waitFor({ state: 'visible' });
  assert(await page.getByRole('link', { name: 'Log in' }).first().isVisible(), 'a log-in link');
  assert(!(await page.getByRole('link', { name: 'Your account' }).isVisible()), 'no account link when logged out');
  await allNamed('landing page');
  ok('logged out, the landing page links to log-in and sign-up');

  // 2. Sign-up through the form; a refusal from the API is said in the live region.
  await page.getByRole('link', { name: 'Sign up' }).first().click();
  await page.waitForURL(`${base}/signup`);
  assert(!(await page.getByLabel(/survey/).isChecked()), 'the survey opt-in starts unchecked');
  const signupControls = await allNamed('sign-up page');
  await page.getByLabel('E-mail address').fill(email);
  await page.getByLabel('Display name').fill('Grace');
  await page.getByLabel('Password').fill('aaaaaaaaaaaa');
  await page.getByLabel('I am 13 years old or older').check();
  await page.getByLabel('I accept the privacy policy summarised below').check();
  await page.getByLabel(/survey/).check();
  await page.getByRole('button', { name: 'Create account' }).click();
  const weak = await says('signup-status', /too easy to guess/i);
  ok(`the API's refusal is said in the live region: "${weak}"`);
  await page.getByLabel('Password').fill(firstPassword);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByRole('heading', { name: 'Check your mail' }).waitFor({ state: 'visible' });
  assert((await page.locator('#sent-to').textContent()) === email, 'says where the link went');
  ok(`signed up through the form (${signupControls} named controls); the page says to check the mail`);

  // 3. The confirmation link from the mail: the token leaves the address bar and goes
  // only to the verify API, in a request body.
  const verifyLink = await mailedLink(veil, '-verify.eml', email);
  const verifyUrl = new URL(verifyLink);
  assert(verifyUrl.origin === base && verifyUrl.pathname === '/verify' && verifyUrl.hash.length > 20, `link ${verifyLink}`);
  await page.goto(verifyLink);
  await says('verify-status', /confirmed/i);
  assert(new URL(page.url()).hash === '', `the token left the address bar (${page.url()})`);
  assert(!(await page.evaluate(() => location.href)).includes('#'), 'no fragment in location');
  tokenStaysPut(verifyLink, '/api/accounts/verify');
  ok('the /verify#… link confirms the address; its token left the address bar and went only to POST /api/accounts/verify');

  // 4. Log-in with the keyboard alone.
  await page.goto(`${base}/login`);
  await allNamed('log-in page');
  await tabTo('email');
  await page.keyboard.type(email);
  await page.keyboard.press('Tab');
  assert(await page.evaluate(() => document.activeElement?.id === 'password'), 'Tab goes from e-mail to password');
  await page.keyboard.type(firstPassword);
  await page.keyboard.press('Enter');
  await page.waitForURL(`${base}/account`);
  await says('account-status', /Logged in as Grace\./);
  ok('logged in with the keyboard alone (Tab, type, Enter); the account page follows');

  // 5. The account page: what Veil holds, every control named, the one cookie.
  await page.locator('#content').waitFor({ state: 'visible' });
  assert((await page.locator('#show-email').textContent()) === email, 'shows the e-mail address');
  assert(/ends .*start meetings until then/.test(await page.locator('#show-trial').textContent()), 'shows the trial end');
  assert(/yes/.test(await page.locator('#show-survey').textContent()), 'shows the survey opt-in');
  const accountControls = await allNamed('account page');
  const jar = await context.cookies();
  assert(jar.length === 1, `one cookie: ${fmt(jar)}`);
  const [cookie] = jar;
  assert(cookie.name === '__Host-veil_session' && cookie.httpOnly && cookie.sameSite === 'Lax' && cookie.secure && cookie.path === '/',
    `the session cookie's flags: ${fmt({ ...cookie, value: '…' })}`);
  assert(cookie.expires === -1, 'the session cookie ends with the browser session');
  await storageIsEmpty('account page');
  ok(`the account page shows profile and trial end (${accountControls} named controls); one cookie: ${cookie.name}, HttpOnly, SameSite=Lax, Secure; no web storage`);

  // 6. Correct the display name; it persists across a reload.
  await page.getByLabel('Display name').fill('Grace Hopper');
  await page.getByRole('button', { name: 'Save display name' }).click();
  await says('name-status', /Saved: others now see you as Grace Hopper\./);
  await page.reload();
  await says('account-status', /Logged in as Grace Hopper\./);
  assert((await page.locator('#show-name').textContent()) === 'Grace Hopper', 'the new name is shown after a reload');
  assert((await page.getByLabel('Display name').inputValue()) === 'Grace Hopper', 'and is in the form');
  ok('the display name changes and stays changed after a reload');

  // 7. The export downloads as a JSON file holding the new name.
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 15_000 }),
    page.getByRole('button', { name: 'Download my data (JSON)' }).click(),
  ]);
  const file = await download.path();
  const exported = JSON.parse(fs.readFileSync(file, 'utf8'));
  assert(download.suggestedFilename() === 'veil-account-export.json', `file name ${download.suggestedFilename()}`);
  assert(exported.format === 'veil.account-export' && exported.version === 1, `format ${exported.format} v${exported.version}`);
  assert(exported.profile.display_name === 'Grace Hopper' && exported.profile.email === email, 'the export holds the new name');
  assert(exported.opt_ins.survey_email === true, 'and the opt-in');
  await says('export-status', /Downloaded veil-account-export\.json/);
  ok(`the export downloads as ${download.suggestedFilename()} (veil.account-export v1, with the new name)`);

  // 8. Withdraw consent to survey mail.
  await page.getByLabel('E-mail me an occasional survey about Veil').uncheck();
  await page.getByRole('button', { name: 'Save consent choice' }).click();
  await says('survey-status', /consent withdrawn/);
  await page.reload();
  await page.locator('#content').waitFor({ state: 'visible' });
  assert(!(await page.getByLabel('E-mail me an occasional survey about Veil').isChecked()), 'the opt-in stays off');
  assert((await page.locator('#show-survey').textContent()) === 'no', 'and is shown as off');
  ok('the survey opt-in is turned off and stays off');

  // 9. A new e-mail address takes effect when the link mailed to it is opened.
  const newEmail = `hopper-${tag}@example.com`;
  await page.getByLabel('New e-mail address').fill(newEmail);
  await page.getByLabel('Current password, to change the e-mail address').fill(firstPassword);
  await page.getByRole('button', { name: 'Change e-mail address' }).click();
  await says('email-status', new RegExp(`We sent a link to ${newEmail}`));
  assert((await page.locator('#show-pending').textContent()).includes(newEmail), 'the pending change is shown');
  assert((await page.locator('#show-email').textContent()) === email, 'the old address holds until then');
  const changeLink = await mailedLink(veil, '-change_email.eml', newEmail);
  await page.goto(changeLink);
  await says('verify-status', /confirmed/i);
  assert(new URL(page.url()).hash === '', 'the token left the address bar');
  tokenStaysPut(changeLink, '/api/accounts/verify');
  await page.goto(`${base}/account`);
  await page.locator('#content').waitFor({ state: 'visible' });
  assert((await page.locator('#show-email').textContent()) === newEmail, 'the new address is the account\'s');
  email = newEmail;
  ok('the e-mail address changes once the /verify#… link mailed to the new address is opened');

  // 10. Logged in, the landing page has the account link; it starts a meeting.
  await page.getByRole('link', { name: 'Veil' }).click();
  await page.waitForURL(`${base}/`);
  await page.getByRole('link', { name: 'Your account' }).waitFor({ state: 'visible' });
  assert(!(await page.getByRole('link', { name: 'Log in' }).first().isVisible()), 'no log-in link when logged in');
  assert(/Grace Hopper/.test(await page.locator('#who').textContent()), 'says who is logged in');
  await page.getByRole('button', { name: 'Create a meeting' }).click();
  await page.waitForURL((u) => /^\/r\/[A-Za-z0-9_-]{16,}$/.test(u.pathname) && u.hash.length > 16, { timeout: 15_000 });
  const meeting = new URL(page.url());
  ok(`logged in, the landing page links to the account and creates a meeting (${meeting.pathname}#…)`);

  // 11. Log out; forgot the password: a reset link, a new password, the old one refused.
  await page.goto(`${base}/account`);
  await page.getByRole('button', { name: 'Log out', exact: true }).click();
  await page.waitForURL(`${base}/`);
  await page.getByRole('link', { name: 'Log in' }).first().waitFor({ state: 'visible' });
  assert((await context.cookies()).length === 0, 'logging out removes the cookie');
  await page.goto(`${base}/account`);
  await page.waitForURL(`${base}/login`);
  ok('logged out: the landing page offers log-in again, /account leads to /login');
  await page.getByLabel('E-mail address for the reset link').fill(email);
  await page.getByRole('button', { name: 'Send a reset link' }).click();
  await says('forgot-status', /link to choose a new password is on its way/);
  const resetLink = await mailedLink(veil, '-password_reset.eml', email);
  assert(new URL(resetLink).origin === base && new URL(resetLink).pathname === '/reset', `link ${resetLink}`);
  await page.goto(resetLink);
  assert(new URL(page.url()).hash === '', 'the reset token left the address bar');
  await allNamed('reset page');
  await page.getByLabel('New password', { exact: true }).fill(newPassword);
  await page.getByLabel('New password again').fill(`${newPassword}!`);
  await page.getByRole('button', { name: 'Set new password' }).click();
  await says('reset-status', /The two passwords differ/);
  await page.getByLabel('New password again').fill(newPassword);
  await page.getByRole('button', { name: 'Set new password' }).click();
  await says('reset-status', /Your password is changed/);
  tokenStaysPut(resetLink, '/api/accounts/password-reset/confirm');
  // The same link a second time is refused, and the page says so.
  await page.goto(`${base}/`);
  await page.goto(resetLink);
  await page.getByLabel('New password', { exact: true }).fill(newPassword);
  await page.getByLabel('New password again').fill(newPassword);
  await page.getByRole('button', { name: 'Set new password' }).click();
  await says('reset-status', /The link is invalid or has expired\./);
  ok('a new password is set through the mailed /reset#… link; the used link is refused with its message');

  await logInWithMouse(email, firstPassword);
  await says('login-status', /The e-mail address or the password is wrong\./);
  await logInWithMouse(email, newPassword);
  await page.waitForURL(`${base}/account`);
  await says('account-status', /Logged in as Grace Hopper\./);
  ok('the old password is refused with its message; the new one logs in');

  // 12. Close the account: the page says what goes and when, then log-in is refused.
  const what = await page.locator('#close-what').textContent();
  assert(/7 working days/.test(what) && /display name/.test(what) && /reopen/.test(what), `the confirmation says what and when: ${what}`);
  await page.getByRole('button', { name: 'Close my account' }).click();
  assert(await page.locator('#close-form').evaluate((f) => !f.checkValidity()), 'the confirmation is required');
  assert(!requests.some((r) => r.url.endsWith('/api/account/close')), 'nothing closes without ticking the confirmation');
  await page.getByLabel('I understand: close my account now and delete my data').check();
  await page.getByRole('button', { name: 'Close my account' }).click();
  await page.getByRole('heading', { name: 'Your account is closed' }).waitFor({ state: 'visible' });
  const closedText = await page.locator('#closed-when').textContent();
  assert(/will be deleted by/.test(closedText), `says by when: ${closedText}`);
  assert((await context.cookies()).length === 0, 'closing removes the cookie');
  ok(`the account is closed after its confirmation: "${closedText}"`);

  await logInWithMouse(email, newPassword);
  await says('login-status', /This account is closed\./);
  await page.getByRole('heading', { name: 'Reopen your account' }).waitFor({ state: 'visible' });
  await allNamed('log-in page after a refusal');
  await page.getByLabel('I accept the privacy policy again').check();
  await page.getByRole('button', { name: 'Reopen my account' }).click();
  await says('login-status', /can no longer be reopened/);
  ok('log-in is refused with "This account is closed."; without a grace period reopening is refused too');

  // 13. Too many log-ins for one address: the 429's Retry-After is said.
  let limited = '';
  for (let attempt = 0; attempt < 5 && !limited; attempt += 1) {
    await logInWithMouse(email, newPassword);
    const said = await says('login-status', /closed|Too many/);
    if (/Too many/.test(said)) limited = said;
  }
  assert(/^Too many attempts; try again in \d+ seconds?\.$/.test(limited), `the 429 is said with its Retry-After: ${limited}`);
  ok(`a rate-limited log-in says when to try again: "${limited}"`);

  return { meeting };
}

async function main() {
  // What the page showed, in the harness's report if a check fails.
  everyone.push({ diagnose: async () => (await diagnose()).join('\n') });
  await harness('accounts.mjs', DEADLINE_MS, async ({ veil, browser, started }) => {
    await run(veil, browser);

    const origin = new URL(veil.base);
    const foreign = requests.filter(({ url }) => {
      const u = new URL(url);
      return u.host !== origin.host || !['http:', 'ws:'].includes(u.protocol);
    });
    assert(requests.length > 30 && foreign.length === 0, `requests to other origins: ${fmt(foreign)}`);
    ok(`every one of ${requests.length} requests went to ${origin.host}`);
    const names = new Set(setCookies.map((c) => c.split('=')[0]));
    assert(setCookies.length >= 2 && names.size === 1 && names.has('__Host-veil_session'), `cookies set: ${fmt([...names])}`);
    assert(setCookies.every((c) => /; HttpOnly/.test(c) && /; SameSite=Lax/.test(c)), `cookie flags: ${fmt(setCookies.map((c) => c.replace(/=[^;]*/, '=…')))}`);
    ok(`the only cookie ever set (${setCookies.length} times) is the session cookie, always HttpOnly and SameSite=Lax`);
    assert(problems.length === 0, `uncaught errors in pages: ${fmt(problems)}`);
    ok('no uncaught error in any page');
    log(`\naccount pages: every check passed (${checkCount()} checks, ${((Date.now() - started) / 1000).toFixed(1)} s)`);
  });
}

async function diagnose() {
  if (!page || page.isClosed()) return ['page closed'];
  const d = await page
    .evaluate(() => ({
      url: location.pathname,
      statuses: [...document.querySelectorAll('[aria-live]')].map((e) => `${e.id}: ${e.textContent}`).filter((s) => !s.endsWith(': ')),
    }))
    .catch((e) => e.message);
  return [JSON.stringify(d)];
}

main();
