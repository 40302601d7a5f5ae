// The Encoded Transform worker: SFrame-encrypts every outgoing audio/video frame and
// decrypts every incoming one (see sframe.js). Works with RTCRtpScriptTransform
// (`rtctransform` events) and with the older createEncodedStreams form (streams posted
// in a message); the page detects which one the browser has.
//
// Owns: this page's sender key and counter (shared by all its tracks) and one key ring per
// remote participant. Must never: post a key or a decrypted frame out of the worker (only
// per-participant ok/failed status), or pass a frame it could not decrypt to the decoder.
import { Encryptor, KeyRing } from './sframe.js';

let encryptor = null;
const rings = new Map(); // participant → KeyRing
const status = new Map(); // participant → last reported ok (boolean)
// Consecutive failures before a participant is reported as undecryptable: a few frames
// can fail around a rotation or before the first key arrives.
const FAILURES_BEFORE_REPORT = 10;
const failures = new Map();

function ring(participant) {
  let r = rings.get(participant);
  if (!r) {
    r = new KeyRing();
    rings.set(participant, r);
  }
  return r;
}

function report(participant, ok) {
  if (ok) failures.set(participant, 0);
  else failures.set(participant, (failures.get(participant) || 0) + 1);
  const shown = ok ? true : failures.get(participant) < FAILURES_BEFORE_REPORT;
  if (status.get(participant) !== shown) {
    status.set(participant, shown);
    self.postMessage({ type: 'decrypt-status', participant, ok: shown });
  }
}

function codecOf(kind) {
  // Video is negotiated as VP8 only (see meeting.js); audio is Opus.
  return kind === 'audio' ? 'opus' : 'vp8';
}

function transformStream({ operation, kind, participant }) {
  const codec = codecOf(kind);
  return new TransformStream({
    async transform(frame, controller) {
      const data = new Uint8Array(frame.data);
      // An empty frame carries nothing to hide or reveal.
      if (data.length === 0) {
        controller.enqueue(frame);
        return;
      }
      if (operation === 'encrypt') {
        // Without a key nothing is sent: media never leaves unencrypted.
        if (!encryptor) return;
        try {
          frame.data = (await encryptor.encryptFrame(codec, data)).buffer;
          controller.enqueue(frame);
        } catch {
          // A malformed frame is dropped rather than sent in the clear.
        }
        return;
      }
      try {
        frame.data = (await ring(participant).decryptFrame(codec, data)).buffer;
        controller.enqueue(frame);
        report(participant, true);
      } catch {
        report(participant, false);
      }
    },
  });
}

function pipe(readable, writable, options) {
  readable
    .pipeThrough(transformStream(options))
    .pipeTo(writable)
    .catch(() => {});
}

// RTCRtpScriptTransform: the page created `new RTCRtpScriptTransform(worker, options)`.
self.addEventListener('rtctransform', (event) => {
  const t = event.transformer;
  pipe(t.readable, t.writable, t.options);
});

// Key messages are applied one at a time, in the order the page sent them.
let chain = Promise.resolve();
self.addEventListener('message', (event) => {
  chain = chain.then(() => onMessage(event.data)).catch(() => {});
});

async function onMessage(m) {
  switch (m.type) {
    case 'streams': // createEncodedStreams form
      pipe(m.readable, m.writable, m.options);
      break;
    case 'own-key':
      encryptor = await Encryptor.create(m.kid, m.key);
      break;
    case 'peer-key':
      await ring(m.participant).add(m.kid, m.key);
      break;
    case 'peer-left':
      rings.delete(m.participant);
      status.delete(m.participant);
      failures.delete(m.participant);
      break;
  }
}
