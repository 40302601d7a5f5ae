// Follows a password-reset link (`/reset#<token>`): the token leaves the address bar at
// once and goes only to the reset API, with the new password.
import { call, onSubmit, say, takeFragmentToken, tell } from './api.js';

const form = document.getElementById('reset-form');
const status = document.getElementById('reset-status');
const token = takeFragmentToken();

if (!token) {
  form.hidden = true;
  say(status, 'This page needs the link from the password-reset e-mail, with its part after the #. Ask for a new one on the log-in page.', 'error');
}

onSubmit(form, async () => {
  const { password, repeat } = form.elements;
  if (password.value !== repeat.value) {
    say(status, 'The two passwords differ; type the same one twice.', 'error');
    return;
  }
  say(status, 'Saving…');
  const res = await call('POST', '/api/accounts/password-reset/confirm', { token, password: password.value });
  if (!tell(status, res, 'Your password is changed and every device was logged out.')) return;
  form.reset();
  form.hidden = true;
  document.getElementById('done').hidden = false;
});
