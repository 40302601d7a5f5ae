// Landing page: create a meeting (the server makes the room id, this browser makes the
// secret) or open an invite link. The secret goes only into the URL fragment. Shows
// log-in and sign-up links, or the account link, by whether a session is open.
import { generateSecret } from './keys.js';
import { call } from './api.js';

// Logged in (the HttpOnly session cookie, which this page cannot read): the account
// link; otherwise links to log in and sign up.
call('GET', '/api/account').then((res) => {
  if (res.ok && res.data) {
    document.getElementById('who').textContent = `Logged in as ${res.data.display_name}`;
    document.getElementById('signed-in').hidden = false;
  } else {
    document.getElementById('signed-out').hidden = false;
    document.getElementById('create-hint').hidden = false;
  }
});

const createButton = document.getElementById('create');
const createStatus = document.getElementById('create-status');

createButton.addEventListener('click', async () => {
  createButton.disabled = true;
  createStatus.textContent = 'Creating…';
  try {
    const res = await fetch('/api/rooms', { method: 'POST', credentials: 'same-origin' });
    const body = await res.json().catch(() => ({}));
    if (!res.ok || typeof body.room !== 'string') {
      createStatus.textContent = body.message || `Could not create a meeting (${res.status}).`;
      return;
    }
    // The host key is a server credential (not an E2EE key): kept for this tab only so
    // the creator joins as host.
    if (typeof body.host_key === 'string') sessionStorage.setItem(`veil-host:${body.room}`, body.host_key);
    location.assign(`/r/${encodeURIComponent(body.room)}#${generateSecret()}`);
  } catch {
    createStatus.textContent = 'Could not reach the server.';
  } finally {
    createButton.disabled = false;
  }
});

document.getElementById('join-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const status = document.getElementById('join-status');
  let url;
  try {
    url = new URL(document.getElementById('invite').value, location.href);
  } catch {
    status.textContent = 'That is not a link.';
    return;
  }
  // Only links to this server's meeting pages; never navigate elsewhere.
  if (url.origin !== location.origin || !/^\/r\/[^/]+$/.test(url.pathname) || url.hash.length < 2) {
    status.textContent = 'That is not a meeting link of this server (it needs its #key part).';
    return;
  }
  location.assign(url.pathname + url.hash);
});
