// SFrame (RFC 9605), cipher suite AES_128_GCM_SHA256_128, in WebCrypto: the browser
// twin of bench/src/sframe.rs. An ES module with no imports, usable in a page, in the
// Encoded Transform worker and in node >= 20.
//
// Owns: the SFrame header (§4.3), key/salt derivation (§4.4.2), encrypt/decrypt
// (§4.4.3-4), Veil's frame layout `clear codec prefix ‖ SFrame header ‖ ciphertext ‖
// tag` (the clear prefix is SFrame's `metadata`, so AAD = header ‖ prefix), a sender's
// counter and a receiver's key ring with replay protection.
// Must never: log or post a key anywhere; accept a frame that fails authentication or
// repeats a counter.

const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();

export const CIPHER_SUITE = 0x0004;
export const KEY_LEN = 16;
export const NONCE_LEN = 12;
export const TAG_LEN = 16;
export const VP8_KEY_FRAME_CLEAR = 10;
export const VP8_DELTA_FRAME_CLEAR = 3;
export const REPLAY_WINDOW = 1024n;
export const KEYS_PER_SENDER = 4;

const U64_MAX = (1n << 64n) - 1n;

export class SFrameError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Leading bytes of a VP8 frame left clear: bit 0 of byte 0 is the inverse key frame flag. */
export function vp8ClearPrefixLength(frame) {
  const b = frame.length > 0 ? frame[0] : 1;
  return (b & 1) === 0 ? VP8_KEY_FRAME_CLEAR : VP8_DELTA_FRAME_CLEAR;
}

/** codec: 'vp8' | 'opus'. */
export function clearPrefixLength(codec, frame) {
  return codec === 'vp8' ? vp8ClearPrefixLength(frame) : 0;
}

function minLen(v) {
  let n = 1;
  while (v >> BigInt(8 * n) > 0n) n++;
  return n;
}

function pushBigEndian(out, v, n) {
  for (let i = n - 1; i >= 0; i--) out.push(Number((v >> BigInt(8 * i)) & 0xffn));
}

/** Encodes an SFrame header; kid and ctr are BigInts (or safe integers). */
export function encodeHeader(kid, ctr) {
  kid = BigInt(kid);
  ctr = BigInt(ctr);
  if (kid < 0n || kid > U64_MAX || ctr < 0n || ctr > U64_MAX) {
    throw new SFrameError('range', 'KID and CTR are 64-bit unsigned');
  }
  let config = 0;
  const tail = [];
  if (kid < 8n) {
    config |= Number(kid) << 4;
  } else {
    const n = minLen(kid);
    config |= 0x80 | ((n - 1) << 4);
    pushBigEndian(tail, kid, n);
  }
  if (ctr < 8n) {
    config |= Number(ctr);
  } else {
    const n = minLen(ctr);
    config |= 0x08 | (n - 1);
    pushBigEndian(tail, ctr, n);
  }
  return Uint8Array.from([config, ...tail]);
}

/** Parses a header at the start of buf: {kid, ctr, length} with BigInt kid and ctr. */
export function decodeHeader(buf) {
  if (buf.length < 1) throw new SFrameError('truncated_header', 'empty SFrame header');
  const config = buf[0];
  let pos = 1;
  const field = (extended, bits) => {
    if (!extended) return BigInt(bits);
    const n = bits + 1;
    if (buf.length < pos + n) throw new SFrameError('truncated_header', 'truncated SFrame header');
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(buf[pos + i]);
    pos += n;
    return v;
  };
  const kid = field((config & 0x80) !== 0, (config >> 4) & 7);
  const ctr = field((config & 0x08) !== 0, config & 7);
  return { kid, ctr, length: pos };
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function u64be(v) {
  const b = [];
  pushBigEndian(b, BigInt(v), 8);
  return Uint8Array.from(b);
}

/** "SFrame 1.0 Secret " + kind + KID (8 bytes BE) + cipher suite (2 bytes BE). */
export function sframeLabel(kind, kid) {
  return concat(enc.encode('SFrame 1.0 Secret ' + kind), u64be(kid), Uint8Array.of(0, CIPHER_SUITE));
}

/** RFC 9605 §4.4.2: {key, salt} as raw bytes. */
export async function deriveKeySalt(kid, baseKey) {
  if (!baseKey || baseKey.length === 0) throw new SFrameError('empty_key', 'empty base key');
  const ikm = await subtle.importKey('raw', baseKey, 'HKDF', false, ['deriveBits']);
  const expand = async (kind, len) =>
    new Uint8Array(
      await subtle.deriveBits(
        { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: sframeLabel(kind, kid) },
        ikm,
        len * 8,
      ),
    );
  return { key: await expand('key ', KEY_LEN), salt: await expand('salt ', NONCE_LEN) };
}

/** The AES key and salt for one KID. */
export class SFrameKey {
  constructor(kid, cryptoKey, salt) {
    this.kid = BigInt(kid);
    this.cryptoKey = cryptoKey;
    this.salt = salt;
  }

  static async derive(kid, baseKey) {
    const { key, salt } = await deriveKeySalt(BigInt(kid), baseKey);
    const cryptoKey = await subtle.importKey('raw', key, 'AES-GCM', false, ['encrypt', 'decrypt']);
    return new SFrameKey(kid, cryptoKey, salt);
  }

  /** sframe_salt XOR CTR (big-endian, in the low bytes). */
  nonce(ctr) {
    const n = Uint8Array.from(this.salt);
    const c = u64be(ctr);
    for (let i = 0; i < 8; i++) n[NONCE_LEN - 8 + i] ^= c[i];
    return n;
  }

  /** RFC 9605 encrypt(CTR, KID, metadata, plaintext) → header ‖ ciphertext ‖ tag. */
  async encrypt(ctr, metadata, plaintext) {
    const header = encodeHeader(this.kid, ctr);
    const ct = await subtle.encrypt(
      { name: 'AES-GCM', iv: this.nonce(BigInt(ctr)), additionalData: concat(header, metadata), tagLength: 128 },
      this.cryptoKey,
      plaintext,
    );
    return concat(header, new Uint8Array(ct));
  }

  /** RFC 9605 decrypt(metadata, sframe_ciphertext) → {header, plaintext}. */
  async decrypt(metadata, sframeCiphertext) {
    const header = decodeHeader(sframeCiphertext);
    if (header.kid !== this.kid) throw new SFrameError('unknown_kid', 'KID does not match the key');
    return { header, plaintext: await this.open(header, metadata, sframeCiphertext) };
  }

  async open(header, metadata, sframeCiphertext) {
    if (sframeCiphertext.length < header.length + TAG_LEN) {
      throw new SFrameError('too_short', 'frame too short');
    }
    const head = sframeCiphertext.subarray(0, header.length);
    try {
      const pt = await subtle.decrypt(
        { name: 'AES-GCM', iv: this.nonce(header.ctr), additionalData: concat(head, metadata), tagLength: 128 },
        this.cryptoKey,
        sframeCiphertext.subarray(header.length),
      );
      return new Uint8Array(pt);
    } catch {
      throw new SFrameError('authentication', 'the frame failed authentication');
    }
  }
}

/**
 * A sender's key and counter. One per participant, shared by all its tracks, since they
 * use one base key and must never repeat a nonce.
 */
export class Encryptor {
  constructor(key) {
    this.key = key;
    this.nextCtr = 0n;
  }

  static async create(kid, baseKey) {
    return new Encryptor(await SFrameKey.derive(kid, baseKey));
  }

  get kid() {
    return this.key.kid;
  }

  /** frame → clear prefix ‖ header ‖ ciphertext ‖ tag. */
  async encryptFrame(codec, frame) {
    const prefix = clearPrefixLength(codec, frame);
    if (frame.length === 0 || frame.length < prefix) {
      throw new SFrameError('too_short', 'frame shorter than its clear prefix');
    }
    if (this.nextCtr > U64_MAX) throw new SFrameError('counter_exhausted', 'rotate the key');
    // Taken before the await so concurrent calls never share a counter.
    const ctr = this.nextCtr++;
    const clear = frame.subarray(0, prefix);
    const sealed = await this.key.encrypt(ctr, clear, frame.subarray(prefix));
    return concat(clear, sealed);
  }
}

/** Counters accepted under one key: the highest and a bitmap of the window below it. */
export class ReplayWindow {
  constructor() {
    this.highest = -1n;
    this.seen = new Set();
  }

  check(ctr) {
    if (ctr > this.highest) return true;
    if (this.highest - ctr >= REPLAY_WINDOW) return false;
    return !this.seen.has(ctr);
  }

  /** Call only after the frame authenticated. */
  mark(ctr) {
    if (ctr > this.highest) this.highest = ctr;
    this.seen.add(ctr);
    // Forget counters that fell out of the window, in batches so marking stays cheap.
    if (this.seen.size > 2 * Number(REPLAY_WINDOW)) {
      for (const c of this.seen) if (this.highest - c >= REPLAY_WINDOW) this.seen.delete(c);
    }
  }
}

/** One sender's keys as a receiver holds them, by KID. */
export class KeyRing {
  constructor() {
    this.keys = new Map(); // kid (BigInt) → {key, window}
  }

  async add(kid, baseKey) {
    kid = BigInt(kid);
    const key = await SFrameKey.derive(kid, baseKey);
    this.keys.delete(kid);
    this.keys.set(kid, { key, window: new ReplayWindow() });
    while (this.keys.size > KEYS_PER_SENDER) this.keys.delete(this.keys.keys().next().value);
  }

  remove(kid) {
    this.keys.delete(BigInt(kid));
  }

  has(kid) {
    return this.keys.has(BigInt(kid));
  }

  get size() {
    return this.keys.size;
  }

  /** clear prefix ‖ header ‖ ciphertext ‖ tag → the encoded frame. */
  async decryptFrame(codec, frame) {
    const prefix = clearPrefixLength(codec, frame);
    if (frame.length < prefix + 1 + TAG_LEN) throw new SFrameError('too_short', 'frame too short');
    const clear = frame.subarray(0, prefix);
    const sframe = frame.subarray(prefix);
    const header = decodeHeader(sframe);
    const entry = this.keys.get(header.kid);
    if (!entry) throw new SFrameError('unknown_kid', `no key for KID ${header.kid}`);
    if (!entry.window.check(header.ctr)) throw new SFrameError('replay', `counter ${header.ctr} replayed`);
    const body = await entry.key.open(header, clear, sframe);
    entry.window.mark(header.ctr);
    return concat(clear, body);
  }
}

export function hexToBytes(hex) {
  const s = hex.replace(/\s+/g, '');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
