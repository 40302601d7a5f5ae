// The account pages' API helper (web/api.js): refusals said as sentences with when to
// retry, export file names, and a fetch that never throws.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { call, errorMessage, fileName, retryText } from '../api.js';

test('Retry-After becomes words', () => {
  assert.equal(retryText('1'), 'in 1 second');
  assert.equal(retryText('45'), 'in 45 seconds');
  assert.equal(retryText('600'), 'in 10 minutes');
  assert.equal(retryText('7200'), 'in 2 hours');
  assert.equal(retryText(null), 'later');
  assert.equal(retryText('soon'), 'later');
});

test('API refusals are sentences; 429 says when to try again', () => {
  assert.equal(
    errorMessage(401, { error: 'invalid_credentials', message: 'the e-mail address or the password is wrong' }),
    'The e-mail address or the password is wrong.',
  );
  assert.equal(
    errorMessage(429, { error: 'rate_limited', message: 'too many attempts; try again later' }, '120'),
    'Too many attempts; try again in 2 minutes.',
  );
  assert.equal(errorMessage(502, null), 'The request failed (HTTP 502).');
  assert.equal(errorMessage(400, { message: '  ' }), 'The request failed (HTTP 400).');
  assert.equal(errorMessage(403, { message: 'this account is closed' }), 'This account is closed.');
});

test('export file names are plain names only', () => {
  assert.equal(fileName('attachment; filename="veil-account-export.json"', 'x.json'), 'veil-account-export.json');
  assert.equal(fileName('attachment; filename="../../etc/passwd"', 'x.json'), 'x.json');
  assert.equal(fileName(null, 'x.json'), 'x.json');
});

test('call answers a refusal with its code and message, and never throws', async (t) => {
  const seen = [];
  t.mock.method(globalThis, 'fetch', async (path, init) => {
    seen.push({ path, init });
    if (path === '/api/down') throw new TypeError('network');
    if (path === '/api/ok') return new Response('{"a":1}', { status: 200 });
    return new Response('{"error":"rate_limited","message":"too many attempts"}', {
      status: 429,
      headers: { 'retry-after': '30' },
    });
  });
  const ok = await call('GET', '/api/ok');
  assert.equal(ok.ok, true);
  assert.deepEqual(ok.data, { a: 1 });
  const limited = await call('POST', '/api/limited', { email: 'a@example.org' });
  assert.deepEqual(
    { ok: limited.ok, status: limited.status, error: limited.error, message: limited.message },
    { ok: false, status: 429, error: 'rate_limited', message: 'Too many attempts. Try again in 30 seconds.' },
  );
  assert.equal(seen[1].init.body, '{"email":"a@example.org"}');
  assert.equal(seen[1].init.headers['content-type'], 'application/json');
  assert.equal(seen[1].init.credentials, 'same-origin');
  const down = await call('GET', '/api/down');
  assert.equal(down.ok, false);
  assert.equal(down.error, 'network');
});
