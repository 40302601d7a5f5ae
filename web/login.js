// Log-in (the answer sets the HttpOnly session cookie; the page never sees it), a
// password-reset request, and the ways out of a refused log-in: resending the
// confirmation link, or reopening a recently closed account.
import { call, onSubmit, postForm, say, tell } from './api.js';

const form = document.getElementById('login-form');
const status = document.getElementById('login-status');
const resendForm = document.getElementById('resend-form');
const reopenForm = document.getElementById('reopen-form');

// Already logged in: the account page.
call('GET', '/api/account').then((res) => {
  if (res.ok) location.replace('/account');
});

const credentials = () => ({ email: form.elements.email.value, password: form.elements.password.value });

onSubmit(form, async () => {
  resendForm.hidden = true;
  reopenForm.hidden = true;
  say(status, 'Logging in…');
  const res = await call('POST', '/api/session', credentials());
  if (tell(status, res, 'Logged in.')) {
    location.assign('/account');
    return;
  }
  if (res.error === 'email_not_verified') resendForm.hidden = false;
  if (res.error === 'account_closed') reopenForm.hidden = false;
});

postForm(
  resendForm,
  status,
  '/api/accounts/verify/resend',
  () => ({ email: form.elements.email.value }),
  'A new confirmation link is on its way; open it, then log in.',
);

onSubmit(reopenForm, async () => {
  const res = await call('POST', '/api/account/reopen', {
    ...credentials(),
    accept_policy: reopenForm.elements.accept_policy.checked,
  });
  if (tell(status, res, 'Your account is open again. Log in to continue.')) reopenForm.hidden = true;
});

postForm(
  document.getElementById('forgot-form'),
  document.getElementById('forgot-status'),
  '/api/accounts/password-reset',
  (f) => ({ email: f.email.value }),
  'If an account uses that address, a link to choose a new password is on its way. It works for one hour.',
);
