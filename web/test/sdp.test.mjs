// The SDP repairs the meeting page makes to talk to the SFU, on the descriptions seen
// between Chromium 156 and Veil's SFU (web/e2e/ runs them in the real browser).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { alignExtmapIds, extmaps, keepDtlsRole, currentDtlsRole, sentExtension } from '../sdp.js';

const sdp = (...lines) => lines.join('\r\n') + '\r\n';

// What the SFU offered first (its own ids, from 1 up) and the page answered.
const sfuOffer = sdp(
  'v=0',
  'a=group:BUNDLE 0',
  'm=audio 9 UDP/TLS/RTP/SAVPF 111',
  'a=mid:0',
  'a=extmap:4 urn:ietf:params:rtp-hdrext:ssrc-audio-level',
  'a=extmap:5 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01',
  'a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid',
  'a=setup:actpass',
  'a=sendonly',
);

// Chromium's next offer: its default ids on the m-lines it adds.
const chromiumOffer = sdp(
  'v=0',
  'a=group:BUNDLE 0 1 2',
  'm=audio 9 UDP/TLS/RTP/SAVPF 111',
  'a=mid:0',
  'a=extmap:4 urn:ietf:params:rtp-hdrext:ssrc-audio-level',
  'a=extmap:5 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01',
  'a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid',
  'a=recvonly',
  'm=audio 9 UDP/TLS/RTP/SAVPF 111',
  'a=mid:1',
  'a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level',
  'a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01',
  'a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid',
  'a=sendonly',
  'm=video 9 UDP/TLS/RTP/SAVPF 96 97',
  'a=mid:2',
  'a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time',
  'a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01',
  'a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid',
  'a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id',
  'a=extmap:11/sendonly urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id',
  'a=sendonly',
);

function idsByUri(text) {
  const byUri = new Map();
  for (const { id, uri } of extmaps(text)) {
    if (!byUri.has(uri)) byUri.set(uri, new Set());
    byUri.get(uri).add(id);
  }
  return byUri;
}

test('every extension gets one id across the offer, no id serves two extensions', () => {
  const fixed = alignExtmapIds(chromiumOffer, [sfuOffer]);
  const byUri = idsByUri(fixed);
  for (const [uri, ids] of byUri) assert.equal(ids.size, 1, uri);
  const ids = [...byUri.values()].map((s) => [...s][0]);
  assert.equal(new Set(ids).size, ids.length);
  assert.ok(ids.every((id) => id >= 1 && id <= 14 && id !== 15));
});

test('negotiated ids are kept, new extensions take ids from the top', () => {
  const byUri = idsByUri(alignExtmapIds(chromiumOffer, [sfuOffer]));
  const id = (uri) => [...byUri.get(uri)][0];
  assert.equal(id('urn:ietf:params:rtp-hdrext:ssrc-audio-level'), 4);
  assert.equal(id('http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01'), 5);
  assert.equal(id('urn:ietf:params:rtp-hdrext:sdes:mid'), 1);
  assert.equal(id('http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time'), 14);
  assert.equal(id('urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id'), 13);
  assert.equal(id('urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id'), 12);
});

test('only extmap ids change: directions, other lines and line ends stay', () => {
  const fixed = alignExtmapIds(chromiumOffer, [sfuOffer]);
  assert.ok(fixed.includes('a=extmap:12/sendonly urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n'));
  const others = (t) => t.split('\r\n').filter((l) => !l.startsWith('a=extmap:'));
  assert.deepEqual(others(fixed), others(chromiumOffer));
  assert.equal(alignExtmapIds(sfuOffer, [sfuOffer]), sfuOffer);
});

test('a first offer (nothing negotiated) is made consistent too', () => {
  const byUri = idsByUri(alignExtmapIds(chromiumOffer, [undefined, null]));
  for (const ids of byUri.values()) assert.equal(ids.size, 1);
});

test('ids beyond the one-byte range when 14 are taken', () => {
  const many = sdp('v=0', ...Array.from({ length: 16 }, (_, i) => `a=extmap:${i + 1} urn:x-test:${i}`));
  const ids = extmaps(alignExtmapIds(many, [])).map((e) => e.id);
  assert.equal(new Set(ids).size, 16);
  assert.ok(!ids.includes(15));
  assert.ok(ids.includes(16) && ids.includes(17));
});

test('the DTLS roles in force are kept in an answer', () => {
  const answer = sdp('v=0', 'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=setup:active', 'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=setup:active');
  // The page answered the SFU's first offer as DTLS client: the SFU must stay the server.
  assert.equal(keepDtlsRole(answer, 'active'), answer.replaceAll('a=setup:active', 'a=setup:passive'));
  assert.equal(keepDtlsRole(answer, 'passive'), answer);
  assert.equal(keepDtlsRole(answer, null), answer);
});

test('the current DTLS role comes from the descriptions in force', () => {
  const withSetup = (type, role) => ({ type, sdp: sdp('v=0', `a=setup:${role}`) });
  assert.equal(currentDtlsRole(withSetup('answer', 'active'), withSetup('offer', 'actpass')), 'active');
  assert.equal(currentDtlsRole(withSetup('offer', 'actpass'), withSetup('answer', 'active')), 'passive');
  assert.equal(currentDtlsRole(withSetup('offer', 'actpass'), withSetup('answer', 'passive')), 'active');
  assert.equal(currentDtlsRole(null, null), null);
});

test('only the extensions the SFU uses are offered on what the page sends', () => {
  for (const uri of [
    'urn:ietf:params:rtp-hdrext:sdes:mid',
    'urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id',
    'urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id',
    'urn:ietf:params:rtp-hdrext:ssrc-audio-level',
    'http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01',
  ]) {
    assert.ok(sentExtension(uri), uri);
  }
  for (const uri of [
    'urn:3gpp:video-orientation',
    'urn:ietf:params:rtp-hdrext:toffset',
    'http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time',
    'http://www.webrtc.org/experiments/rtp-hdrext/playout-delay',
    'urn:ietf:params:rtp-hdrext:sdes:mid-x',
  ]) {
    assert.ok(!sentExtension(uri), uri);
  }
});
