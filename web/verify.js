// Follows an e-mail confirmation link (`/verify#<token>`, for sign-up or an e-mail
// change): the token leaves the address bar at once and goes only to the verify API.
import { call, onSubmit, postForm, say, takeFragmentToken, tell } from './api.js';

const status = document.getElementById('verify-status');
const retryForm = document.getElementById('retry-form');
const resend = document.getElementById('resend');
const token = takeFragmentToken();

async function verify() {
  retryForm.hidden = true;
  say(status, 'Confirming…');
  const res = await call('POST', '/api/accounts/verify', { token });
  if (tell(status, res, 'Your e-mail address is confirmed. You can log in now.')) {
    document.getElementById('verified').hidden = false;
    return;
  }
  // Worth another go when the refusal was about timing or the network, not the link.
  if (res.status === 0 || res.status === 429 || res.status >= 500) retryForm.hidden = false;
  else resend.hidden = false;
}

if (token) {
  verify();
} else {
  say(status, 'This page needs the link from the confirmation e-mail, with its part after the #.', 'error');
  resend.hidden = false;
}

onSubmit(retryForm, verify);

postForm(
  document.getElementById('resend-form'),
  document.getElementById('resend-status'),
  '/api/accounts/verify/resend',
  (f) => ({ email: f.email.value }),
  'If that address has an unconfirmed account, a new link is on its way.',
);
