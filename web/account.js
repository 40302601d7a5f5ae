// The account page (P5, P6): what Veil holds about the person, corrections, the export
// download, consent, log-out and closing the account. Logged-out visitors go to /login.
import { call, fileName, onSubmit, say, tell, when } from './api.js';

const $ = (id) => document.getElementById(id);
const pageStatus = $('account-status');

/**
 * Says how `res` went in `region` (see `tell`), or leaves for the log-in page when the
 * session is gone. Answers whether it worked.
 */
function outcome(region, res, done) {
  if (res.status === 401) {
    location.replace('/login');
    return false;
  }
  return tell(region, res, done);
}

function show(profile) {
  $('show-email').textContent = profile.email;
  $('show-name').textContent = profile.display_name;
  $('show-created').textContent = when(profile.created_at);
  $('show-verified').textContent = profile.email_verified_at ? when(profile.email_verified_at) : 'not yet';
  const ends = when(profile.trial_ends_at);
  $('show-trial').textContent = profile.can_host
    ? `ends ${ends}; you can start meetings until then`
    : profile.email_verified_at
      ? `ended ${ends}; you can still join meetings others start`
      : `ends ${ends}; confirm your e-mail address to start meetings`;
  $('show-survey').textContent = profile.survey_opt_in ? 'yes, you agreed to receive them' : 'no';
  const pending = $('show-pending');
  pending.hidden = !profile.pending_email;
  pending.textContent = profile.pending_email
    ? `Waiting for confirmation: ${profile.pending_email} (open the link we sent there).`
    : '';
  $('display-name').value = profile.display_name;
  $('survey-opt-in').checked = profile.survey_opt_in;
}

async function load() {
  const res = await call('GET', '/api/account');
  if (!outcome(pageStatus, res, (p) => `Logged in as ${p.display_name}.`)) return;
  pageStatus.classList.remove('ok');
  show(res.data);
  $('content').hidden = false;
}

/** A form that PATCHes the account with `body(form)` and says `done` when it worked. */
function changeForm(id, body, done) {
  const form = $(id);
  const status = $(id.replace('-form', '-status'));
  onSubmit(form, async () => {
    say(status, 'Saving…');
    const res = await call('PATCH', '/api/account', body(form.elements));
    if (!outcome(status, res, done)) return;
    show(res.data);
    for (const input of form.querySelectorAll('input[type=password], input[type=email]')) input.value = '';
  });
}

changeForm('name-form', (f) => ({ display_name: f.display_name.value }), (p) => `Saved: others now see you as ${p.display_name}.`);
changeForm(
  'email-form',
  (f) => ({ email: f.email.value, current_password: f.current_password.value }),
  (p) => (p.pending_email ? `We sent a link to ${p.pending_email}; the change takes effect when you open it.` : 'That is already your address.'),
);
changeForm(
  'password-form',
  (f) => ({ current_password: f.current_password.value, new_password: f.new_password.value }),
  () => 'Password changed; your other devices are logged out.',
);
changeForm(
  'survey-form',
  (f) => ({ survey_opt_in: f.survey_opt_in.checked }),
  (p) => (p.survey_opt_in ? 'Saved: you will get an occasional survey.' : 'Saved: consent withdrawn, no survey e-mails.'),
);

$('export').addEventListener('click', async () => {
  const status = $('export-status');
  say(status, 'Preparing the download…');
  const res = await call('GET', '/api/account/export');
  if (!outcome(status, res, 'Downloading…')) return;
  const url = URL.createObjectURL(new Blob([res.text], { type: 'application/json' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = fileName(res.headers.get('content-disposition'), 'veil-account-export.json');
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  say(status, `Downloaded ${a.download}.`, 'ok');
});

async function logOut(method, path, done) {
  if (outcome($('sessions-status'), await call(method, path), done)) location.assign('/');
}
$('logout').addEventListener('click', () => logOut('DELETE', '/api/session', () => 'Logged out.'));
$('logout-everywhere').addEventListener('click', () =>
  logOut('DELETE', '/api/sessions', (d) => `Logged out of ${d?.sessions_ended ?? 'all'} session(s).`),
);

onSubmit($('close-form'), async () => {
  const status = $('close-status');
  say(status, 'Closing your account…');
  const res = await call('POST', '/api/account/close');
  if (!outcome(status, res, 'Closed.')) return;
  const { closed_at: closedAt, deletion_due_at: due, reopen_until: reopen } = res.data;
  const reopenable = new Date(reopen) > new Date(closedAt);
  $('content').hidden = true;
  $('closed-when').textContent =
    `Closed ${when(closedAt)}. Every record naming you will be deleted by ${when(due)}.` +
    (reopenable ? ` Until ${when(reopen)} you can reopen it from the log-in page.` : ' It cannot be reopened.');
  say(pageStatus, 'Your account is closed and you are logged out.', 'ok');
  $('closed').hidden = false;
  $('closed-title').focus();
});

load();
