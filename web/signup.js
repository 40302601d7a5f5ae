// Sign-up: the form posts to the accounts API; on success the page says to check the
// mail (the link in it opens /verify) and can send the link again.
import { call, onSubmit, postForm, say, tell } from './api.js';

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
  if (!tell(status, res, 'Account created. Check your mail to confirm your address.')) return;
  address = f.email.value.trim();
  form.reset();
  form.hidden = true;
  document.getElementById('sent-to').textContent = address;
  sent.hidden = false;
  document.getElementById('sent-title').focus();
});

postForm(
  document.getElementById('resend-form'),
  document.getElementById('resend-status'),
  '/api/accounts/verify/resend',
  () => ({ email: address }),
  () => `A new link is on its way to ${address}.`,
);
