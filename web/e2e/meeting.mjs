// Veil's web client in real headless Chromium (Debian's `chromium`, driven by
// playwright-core): people join one meeting from the landing page or an invite link,
// decode each other's end-to-end encrypted audio and video, use the controls, leave,
// reconnect; one with the wrong key in the link's fragment decodes nothing and says so.
//
// Run it only inside a network namespace of its own, where loopback is the only interface,
// so that Chromium's WebRTC can reach nothing but this machine's loopback:
//
//   unshare -n sh -c 'ip link set lo up && VEIL_BIN=target/debug/veil exec node web/e2e/meeting.mjs'
//
// (`cargo test --test browser` does exactly that.) The script starts `veil` itself (all in
// one, its data in a temporary folder) and Chromium, and exits non-zero on the first failed
// check, printing Veil's log and the pages' console.
//
// Environment: VEIL_BIN (required) the veil binary; VEIL_CHROMIUM (default
// /usr/bin/chromium); VEIL_E2E_SCREENSHOT a path for a PNG of a three-person meeting
// (docs/meeting.png is made so). While working on web/: VEIL_E2E_WEB_DIR=web serves the
// pages and scripts from that folder instead of the binary's copies (no rebuild per
// change), VEIL_E2E_DEBUG_SDP=1 logs every description set (shown on failure).
//
// Printed, never asserted: join-to-first-decoded-frame times (with ICE and DTLS steps)
// and which Encoded Transform API Chromium used.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

import {
  Person, assert, checkCount, createRoom, decodes, fmt, harness, hears, log, ok, problems, requests,
  sameCode, setCookies, sleep, waitFor,
} from './lib.mjs';

const SCREENSHOT = process.env.VEIL_E2E_SCREENSHOT || '';
// The whole run; each wait below has its own, shorter limit.
const DEADLINE_MS = 170_000;

async function tileNames(person) {
  return person.page.locator('#tiles li .name').allTextContents();
}

// --- The run -------------------------------------------------------------------------------

async function run(veil, browser) {
  const { room } = await createRoom(veil);
  const secret = randomBytes(16).toString('base64url');
  const wrongSecret = randomBytes(16).toString('base64url');
  const link = `${veil.base}/r/${room}#${secret}`;
  ok('a meeting created by a signed-up, verified, logged-in host');

  // Ada opens the landing page and pastes the invite link.
  const ada = await Person.open(browser, veil.base, 'Ada');
  await ada.page.goto(`${veil.base}/`);
  // Without an account the landing page cannot create a meeting, and says why.
  await ada.page.getByRole('button', { name: 'Create a meeting' }).click();
  await waitFor('the landing page says creating needs a log-in', async () =>
    /log in/i.test(await ada.page.locator('#create-status').textContent()),
  );
  assert(new URL(ada.page.url()).pathname === '/', 'no meeting page without an account');
  await ada.page.getByLabel('Invite link').fill(link);
  await ada.page.getByRole('button', { name: 'Open' }).click();
  await ada.page.waitForURL((u) => u.pathname === `/r/${room}` && u.hash === `#${secret}`);
  ok('the landing page explains that creating needs a log-in, and opens an invite link, fragment kept');

  // Preview and device choice.
  await waitFor('the preview plays the camera', () =>
    ada.page.evaluate(() => document.getElementById('preview').videoWidth > 0),
  );
  const devices = await ada.page.evaluate(() =>
    ['camera', 'microphone'].map((id) => [...document.getElementById(id).options].map((o) => o.textContent)),
  );
  assert(devices[0].length >= 1 && devices[1].length >= 2, `devices listed: ${fmt(devices)}`);
  assert(devices.flat().every((label) => label.length > 0), 'every device has a label');
  const mics = await ada.page.evaluate(() => [...document.getElementById('microphone').options].map((o) => o.value));
  await ada.page.getByLabel('Microphone').selectOption(mics[1]);
  await waitFor('the preview uses the chosen microphone', () =>
    ada.page.evaluate(
      (want) => document.getElementById('preview').srcObject?.getAudioTracks()[0]?.getSettings().deviceId === want,
      mics[1],
    ),
  );
  ok(`preview plays; devices listed with labels (${devices[0].length} camera, ${devices[1].length} microphones); choosing one re-opens it`);

  await ada.join();
  ok('Ada joined');

  // Brook joins with the keyboard only: Tab through labelled fields, Enter on Join.
  const brook = await Person.open(browser, veil.base, 'Brook');
  await brook.page.goto(link);
  await waitFor('Brook sees the preview', () => brook.page.evaluate(() => document.getElementById('preview').videoWidth > 0));
  const focusOrder = [];
  await brook.page.keyboard.press('Tab');
  focusOrder.push(await brook.page.evaluate(() => document.activeElement.id));
  await brook.page.keyboard.type('Brook');
  for (let i = 0; i < 3; i++) {
    await brook.page.keyboard.press('Tab');
    focusOrder.push(await brook.page.evaluate(() => document.activeElement.id));
  }
  assert(fmt(focusOrder) === fmt(['display-name', 'camera', 'microphone', 'join']), `tab order ${fmt(focusOrder)}`);
  await brook.page.keyboard.press('Enter');
  await brook.inRoom();
  ok('Brook joined with the keyboard alone (name, camera, microphone, Join)');

  // 1. Two participants decode each other's video and audio; same security code.
  await decodes(brook, ada);
  await decodes(ada, brook);
  ok('Ada and Brook each decode the other\'s video (framesDecoded rising)');
  await hears(brook, ada);
  await hears(ada, brook);
  ok('Ada and Brook each receive and decode the other\'s audio');
  const code2 = await sameCode([ada, brook]);
  ok(`Ada and Brook show the same security code (${code2})`);
  const names = await tileNames(ada);
  assert(names.includes('Ada (you)') && names.includes('Brook'), `Ada's grid names: ${fmt(names)}`);
  ok('the grid shows names');

  // Controls. Focus is on "Mute microphone" after joining; Brook uses the keyboard.
  assert((await brook.page.evaluate(() => document.activeElement.id)) === 'mute', 'focus moves to the controls');
  await brook.page.keyboard.press('Space');
  assert((await brook.page.locator('#mute').getAttribute('aria-pressed')) === 'true', 'mute is pressed');
  await waitFor('Ada sees Brook muted', async () => (await ada.badges(brook)).includes('Muted'));
  await brook.page.keyboard.press('Space');
  await waitFor('Ada sees Brook unmuted', async () => !(await ada.badges(brook)).includes('Muted'));
  ok('mute with the keyboard: the other side sees the muted state come and go');

  await ada.page.getByRole('button', { name: 'Turn camera off' }).click();
  await waitFor('Brook sees Ada\'s camera off', async () => (await brook.badges(ada)).includes('Camera off'));
  await ada.page.getByRole('button', { name: 'Turn camera on' }).click();
  await waitFor('Brook sees Ada\'s camera on', async () => !(await brook.badges(ada)).includes('Camera off'));
  ok('camera off/on is shown to the other side');

  await waitFor('an active speaker is highlighted on Ada\'s screen', () =>
    ada.page.evaluate((id) => document.querySelector(`#tiles li[data-participant="${id}"]`)?.classList.contains('speaking'), brook.id),
  );
  ok('active speaker: Brook\'s tile is highlighted on Ada\'s screen (from decrypted audio levels)');

  await ada.page.getByRole('button', { name: 'Copy invite link' }).click();
  const copied = await ada.page.evaluate(() => navigator.clipboard.readText());
  assert(copied === link, `copied link ${copied}`);
  ok('copy invite link copies the full link, fragment included');

  // Screen share: the screen (fake: 1280x720, 16:9) replaces the camera (640x480, 4:3)
  // on Ada's one video; Brook decodes it, and the camera again after it stops.
  const aspect = (v) => v.width / v.height;
  const camera = await waitFor('Brook shows Ada\'s camera', async () => {
    const v = await tileVideo(brook, ada);
    return v.playing && Math.abs(aspect(v) - 4 / 3) < 0.05 && v;
  });
  await ada.page.getByRole('button', { name: 'Share screen' }).click();
  await waitFor('Brook sees Ada sharing', async () => (await brook.badges(ada)).includes('Sharing screen'));
  const screen = await waitFor('Brook\'s tile for Ada plays her screen', async () => {
    const v = await tileVideo(brook, ada);
    return v.playing && Math.abs(aspect(v) - 16 / 9) < 0.05 && v;
  });
  await ada.page.getByRole('button', { name: 'Stop sharing screen' }).click();
  await waitFor('Brook no longer sees Ada sharing', async () => !(await brook.badges(ada)).includes('Sharing screen'));
  await waitFor('Brook\'s tile for Ada plays her camera again', async () => {
    const v = await tileVideo(brook, ada);
    return v.playing && Math.abs(aspect(v) - 4 / 3) < 0.05 && v;
  });
  ok(`screen share reaches Brook decrypted (${camera.width}x${camera.height} camera, ${screen.width}x${screen.height} screen, camera again after)`);

  // 2. A third person with the right key: everyone decodes everyone; same code on three
  // screens. Cleo's page takes the createEncodedStreams path.
  const cleo = await Person.open(browser, veil.base, 'Cleo', { forceEncodedStreams: true });
  await cleo.page.goto(link);
  await cleo.join();
  await decodes(cleo, ada);
  await decodes(cleo, brook);
  await decodes(ada, cleo);
  await decodes(brook, cleo);
  await hears(ada, cleo);
  await hears(cleo, ada);
  const code3 = await sameCode([ada, brook, cleo]);
  assert(code3 !== code2, 'the code changes when someone joins');
  ok(`three people decode each other, Cleo through createEncodedStreams; one code on three screens (${code3})`);
  if (SCREENSHOT) {
    await waitFor('three playing tiles on Ada\'s screen', async () => {
      const playing = await ada.page.evaluate(() => [...document.querySelectorAll('#tiles video')].filter((v) => v.videoWidth > 0 && !v.paused).length);
      return playing === 3;
    });
    await ada.page.screenshot({ path: SCREENSHOT });
    ok(`screenshot of the three-person meeting: ${SCREENSHOT}`);
  }

  // Cleo leaves: her tile goes, the others rotate keys and keep decoding each other.
  await cleo.page.getByRole('button', { name: 'Leave' }).click();
  await cleo.page.locator('#ended').waitFor({ state: 'visible' });
  await waitFor('Cleo\'s tile is gone on Ada\'s and Brook\'s screens', async () =>
    (await ada.tile(cleo).count()) === 0 && (await brook.tile(cleo).count()) === 0,
  );
  const code2again = await sameCode([ada, brook]);
  assert(code2again === code2, 'after Cleo left, the code is the two-person one again');
  await sleep(2500); // past the 1 s switch to the rotated keys
  await decodes(ada, brook);
  await decodes(brook, ada);
  ok('Cleo left: her tile is gone, Ada and Brook still decode each other after the key rotation');

  // 3. Wrong key: Dan has the room id but another fragment.
  const dan = await Person.open(browser, veil.base, 'Dan');
  await dan.page.goto(`${veil.base}/r/${room}#${wrongSecret}`);
  await dan.join();
  await waitFor('Dan sees Ada and Brook', async () => (await dan.tile(ada).count()) === 1 && (await dan.tile(brook).count()) === 1);
  for (const [viewer, other] of [[dan, ada], [dan, brook], [ada, dan], [brook, dan]]) {
    await waitFor(`${viewer.name} shows ${other.name} as cannot decrypt`, async () => {
      const badge = viewer.tile(other).locator('.badge.undecryptable');
      return (await badge.count()) > 0 && (await badge.first().isVisible()) && /cannot decrypt/i.test(await badge.first().textContent());
    });
  }
  await waitFor('Dan\'s page says it cannot decrypt the meeting', () => dan.page.getByText(/cannot decrypt this meeting/i).isVisible());
  for (const p of [ada, brook]) {
    assert(!(await p.page.getByText(/cannot decrypt this meeting/i).isVisible()), `${p.name} does not show the warning`);
  }
  await waitFor('Dan receives the others\' media packets', async () => {
    const s = await dan.stats();
    return (s[ada.id]?.video.packets ?? 0) > 50 && (s[brook.id]?.video.packets ?? 0) > 50;
  });
  await sleep(2000);
  const danStats = await dan.stats();
  const danFrames = Object.values(danStats).reduce((n, s) => n + s.video.framesDecoded, 0);
  const danEnergy = Object.values(danStats).reduce((n, s) => n + s.audio.energy, 0);
  assert(danFrames === 0, `Dan decoded ${danFrames} frames`);
  assert(danEnergy === 0, `Dan decoded audio with energy ${danEnergy}`);
  const fromDan = [await ada.from(dan), await brook.from(dan)];
  assert(fromDan.every((s) => s.video.framesDecoded === 0), `the others decoded Dan: ${fmt(fromDan)}`);
  const [danCode, codeAB] = [await dan.code(), await sameCode([ada, brook])];
  assert(codeAB === code2 && danCode !== codeAB, `codes: Dan ${danCode}, Ada and Brook ${codeAB}`);
  await decodes(ada, brook);
  await decodes(brook, ada);
  await hears(ada, brook);
  ok('wrong key: Dan receives packets but decodes no frame and no audio, his tiles and page say "cannot decrypt", '
    + 'his code differs; Ada and Brook are unaffected (still decoding, code unchanged, Dan marked)');
  await dan.page.getByRole('button', { name: 'Leave' }).click();
  await waitFor('Dan\'s tile is gone', async () => (await ada.tile(dan).count()) === 0);

  // Reconnect: every WebSocket to Veil breaks at once (the kernel aborts the TCP
  // connections, as a network blip would); both pages resume as the same participants,
  // nobody sees anyone leave, and media (UDP, untouched) keeps being decoded.
  const before = { ada: ada.id, brook: brook.id, code: await sameCode([ada, brook]) };
  const dropped = dropConnections(veil);
  assert(dropped >= 2, `aborted ${dropped} connections`);
  await Promise.all(
    [ada, brook].map((p) => waitFor(`${p.name} shows the connection was lost`, () => p.page.getByText(/reconnecting/i).isVisible(), 10_000, 50)),
  );
  for (const p of [ada, brook]) {
    await waitFor(`${p.name} is connected again`, () => p.page.getByText(/^Connected/).isVisible(), 20_000);
    const own = await p.page.evaluate(() => document.querySelector('#tiles li[aria-label*="(you)"]')?.dataset.participant);
    assert(own === before[p.name.toLowerCase()], `${p.name} resumed as the same participant`);
  }
  assert((await ada.tile(brook).count()) === 1 && (await brook.tile(ada).count()) === 1, 'nobody saw a leave');
  assert((await sameCode([ada, brook])) === before.code, 'the security code is unchanged');
  await decodes(ada, brook);
  await decodes(brook, ada);
  ok(`reconnect: ${dropped} TCP connections aborted; both pages resumed as the same participants, same code, media decoded both ways`);

  // Timings and API, from the pages' own clocks.
  // Ada joined an empty meeting (her first frame waited for Brook), so the join times
  // are Brook's and Cleo's, who joined people already sending.
  const result = {};
  for (const p of [brook, cleo, ada]) result[p.name] = { ...(await p.test()), timed: p !== ada };
  return { result, people: [ada, brook, cleo, dan] };
}

/** What `viewer`'s tile for `other` shows: its video track, size, and whether it plays. */
async function tileVideo(viewer, other) {
  return viewer.page.evaluate(async (id) => {
    const v = document.querySelector(`#tiles li[data-participant="${id}"] video`);
    const track = v?.srcObject?.getVideoTracks()[0];
    const t0 = v?.currentTime;
    await new Promise((r) => setTimeout(r, 300));
    return {
      track: track?.id,
      playing: !!v && !v.paused && v.currentTime > t0 && v.videoWidth > 0,
      width: v?.videoWidth,
      height: v?.videoHeight,
    };
  }, other.id);
}

/** Aborts every TCP connection to Veil's HTTP port (`ss -K`); returns how many. */
function dropConnections(veil) {
  const port = new URL(veil.base).port;
  const out = execFileSync('ss', ['-K', '-tnH', 'state', 'established', 'dport', '=', `:${port}`], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.trim()).length;
}

async function main() {
  await harness('meeting.mjs', DEADLINE_MS, async ({ veil, browser, started }) => {
    const { result, people } = await run(veil, browser);

    // 4. Only Veil's origin, no cookies.
    const origin = new URL(veil.base);
    const foreign = requests.filter(({ url }) => {
      const u = new URL(url);
      return u.host !== origin.host || !['http:', 'ws:'].includes(u.protocol);
    });
    assert(requests.length > 20, `requests were recorded (${requests.length})`);
    assert(foreign.length === 0, `requests to other origins: ${fmt(foreign)}`);
    assert(requests.some((r) => r.url.startsWith(`ws://${origin.host}/ws`)), 'the WebSocket was recorded');
    assert(requests.some((r) => r.url.endsWith('/assets/sframe.js')), 'the worker\'s import was recorded');
    ok(`every one of ${requests.length} requests (pages, scripts, worker, API, WebSocket) went to ${origin.host}`);
    assert(setCookies.length === 0, `responses set cookies: ${fmt(setCookies)}`);
    for (const p of people) {
      const jar = await p.context.cookies();
      assert(jar.length === 0, `${p.name} has cookies: ${fmt(jar)}`);
      if (!p.page.isClosed()) assert((await p.page.evaluate(() => document.cookie)) === '', `${p.name}: document.cookie`);
    }
    ok('no page set or received a cookie');
    assert(problems.length === 0, `uncaught errors in pages: ${fmt(problems)}`);
    ok('no uncaught error in any page');

    log('\nmeasured (printed, not asserted):');
    for (const [name, t] of Object.entries(result)) {
      const api = t.scriptTransforms > 0 ? 'RTCRtpScriptTransform' : t.encodedStreams > 0 ? 'createEncodedStreams' : 'none';
      const firstFrame = !t.timed
        ? 'not timed (joined an empty meeting)'
        : `${t.firstFrame ?? 'n/a'} ms (ICE checking ${t.iceChecking ?? 'n/a'} ms, ICE connected ${t.iceConnected ?? 'n/a'} ms, DTLS up ${t.connected ?? 'n/a'} ms, first video packet ${t.firstPacket ?? 'n/a'} ms)`;
      log(`  ${name}: join-to-first-decoded-frame ${firstFrame}; encoded transform API ${api} ` +
        `(${t.scriptTransforms} RTCRtpScriptTransform, ${t.encodedStreams} createEncodedStreams)`);
    }
    log(`  whole browser run: ${((Date.now() - started) / 1000).toFixed(1)} s, ${checkCount()} checks`);
  });
}

main();
