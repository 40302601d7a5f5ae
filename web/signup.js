// Sign-up: the form posts to the accounts API; on success the page says to check the
// mail (the link in it opens /verify) and can send the link again.
import { call, onSubmit, say } from './api.js';

const form = document.getElementById('signup-form');
const status = document.getElementById('signup-status');
const sent = document.getElementById('sent');
let address = '';

onSubmit(form, async () => {
  say(status, 'Creating your account…');
  const f = form.elements;
  const res = await call('POST', '/api/accounts', {
    email: f.email.value,
    display_name: f.display_name.value,
    password: f.password.value,
    age_confirmed: f.age_confirmed.checked,
    accept_policy: f.accept_policy.checked,
    survey_opt_in: f.survey_opt_in.checked,
  });
  if (!res.ok) {
    say(status, res.message, 'error');
    return;
  }
  address = f.email.value.trim();
  form.reset();
  form.hidden = true;
  say(status, 'Account created. Check your mail to confirm your address.', 'ok');
  document.getElementById('sent-to').textContent = address;
  sent.hidden = false;
  document.getElementById('sent-title').focus();
});

const resendStatus = document.getElementById('resend-status');
onSubmit(document.getElementById('resend-form'), async () => {
  const res = await call('POST', '/api/accounts/verify/resend', { email: address });
  if (res.ok) say(resendStatus, `A new link is on its way to ${address}.`, 'ok');
  else say(resendStatus, res.message, 'error');
});
