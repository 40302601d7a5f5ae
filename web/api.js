// Shared by the landing and account pages: calls to Veil's own JSON API (same origin,
// the HttpOnly session cookie is the only credential), turning its refusals into
// sentences, and saying them in a page's live region. Nothing is kept in localStorage,
// sessionStorage or any cookie the page could read.

/** "in 1 minute", "in 40 seconds": when to try again after a 429's Retry-After. */
export function retryText(header) {
  const secs = Number.parseInt(header ?? '', 10);
  if (!Number.isFinite(secs) || secs <= 0) return 'later';
  if (secs < 90) return `in ${secs} second${secs === 1 ? '' : 's'}`;
  const mins = Math.ceil(secs / 60);
  if (mins < 90) return `in ${mins} minutes`;
  return `in ${Math.ceil(mins / 60)} hours`;
}

/** The sentence for a refused request: the API's message, or one made from the status. */
export function errorMessage(status, body, retryAfter) {
  const given = body && typeof body.message === 'string' && body.message.trim() ? body.message.trim() : '';
  let text = given ? given.charAt(0).toUpperCase() + given.slice(1) : `The request failed (HTTP ${status}).`;
  if (!/[.!?]$/.test(text)) text += '.';
  if (status === 429) {
    const again = `try again ${retryText(retryAfter)}.`;
    text = /try again later\.$/i.test(text) ? text.replace(/try again later\.$/i, again) : `${text} T${again.slice(1)}`;
  }
  return text;
}

/** The file name in a Content-Disposition header, or `fallback`. */
export function fileName(disposition, fallback) {
  const m = /filename="?([^";]+)"?/i.exec(disposition ?? '');
  const name = m ? m[1].trim() : '';
  // Only a plain name: never a path.
  return /^[\w.-]+$/.test(name) ? name : fallback;
}

/**
 * Calls `method path` on this origin with an optional JSON body. Answers
 * {ok, status, data, text, headers} on success and {ok: false, status, error, message}
 * on refusal or network failure; never throws.
 */
export async function call(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  let text;
  try {
    res = await fetch(path, init);
    text = await res.text();
  } catch {
    return { ok: false, status: 0, error: 'network', message: 'Veil could not be reached. Check your connection and try again.' };
  }
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (res.ok) return { ok: true, status: res.status, data, text, headers: res.headers };
  return {
    ok: false,
    status: res.status,
    error: (data && typeof data.error === 'string' && data.error) || `http_${res.status}`,
    message: errorMessage(res.status, data, res.headers.get('retry-after')),
  };
}

/** Says `text` in the live region `region`; `tone` 'error' or 'ok' styles it. */
export function say(region, text, tone = '') {
  region.textContent = text;
  region.classList.toggle('error', tone === 'error');
  region.classList.toggle('ok', tone === 'ok');
}

/**
 * Says how `res` (from `call`) went in `region`: `done` (a text, or a function of the
 * answer's data) when it worked, the refusal otherwise. Answers whether it worked.
 */
export function tell(region, res, done) {
  if (res.ok) say(region, typeof done === 'function' ? done(res.data) : done, 'ok');
  else say(region, res.message, 'error');
  return res.ok;
}

/**
 * Runs `action(form)` when `form` is submitted, with its buttons disabled meanwhile.
 * The browser's own checks (required, type=email, minlength) run first.
 */
export function onSubmit(form, action) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const buttons = [...form.querySelectorAll('button')];
    for (const b of buttons) b.disabled = true;
    try {
      await action(form);
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  });
}

/**
 * The secret a mailed link carries in its fragment (`/verify#…`, `/reset#…`), read once
 * and removed from the address bar and history entry at once, so it is neither shown,
 * bookmarked nor sent anywhere but in the one API request that uses it.
 */
export function takeFragmentToken() {
  const token = location.hash.slice(1);
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  return token;
}

/** A timestamp as the reader's local date and time. */
export function when(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { dateStyle: 'long', timeStyle: 'short' });
}

/** A form that POSTs `body(form.elements)` to `path` and tells how it went in `region`. */
export function postForm(form, region, path, body, done) {
  onSubmit(form, async () => {
    tell(region, await call('POST', path, body(form.elements)), done);
  });
}
