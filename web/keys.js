// Veil's end-to-end key management (docs/e2ee.md) in WebCrypto: the browser twin of
// bench/src/e2ee.rs. An ES module with no imports, usable in a page and in node >= 20.
//
// Owns: the room secret (from the link's fragment) and the MAC key derived from it; this
// participant's ECDSA P-256 identity announced in a MAC'd `hello`; one pairwise channel
// per member (fresh ECDH P-256 key pairs signed by the identities → HKDF-SHA256 →
// AES-256-GCM); this sender's media key, sent to each member over its channel and
// replaced (next KID) when anyone leaves; the security code.
// Must never: send the room secret, a private key, a pair key or a media key anywhere but
// a media key inside a pairwise-encrypted `key` blob; store any of them (no
// localStorage); log them; trust a member whose hello MAC does not verify.

const subtle = globalThis.crypto.subtle;
const utf8 = new TextEncoder();

export const VERSION = 1;
export const SECRET_LEN = 16;
export const MEDIA_KEY_LEN = 16;
export const MAX_BLOB_BYTES = 16 * 1024;
const LABEL = 'veil-e2ee/1 ';

export class E2eeError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

export function b64uEncode(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function b64uDecode(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text)) throw new E2eeError('malformed');
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  let bin;
  try {
    bin = atob(b64);
  } catch {
    throw new E2eeError('malformed');
  }
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
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

function u32be(n) {
  return Uint8Array.of((n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
}

function u64be(n) {
  const v = BigInt(n);
  const out = new Uint8Array(8);
  for (let i = 0; i < 8; i++) out[i] = Number((v >> BigInt(56 - 8 * i)) & 0xffn);
  return out;
}

const bytes = (x) => (typeof x === 'string' ? utf8.encode(x) : x);

/** "veil-e2ee/1 " + label, then each part as a 4-byte big-endian length and its bytes. */
export function transcript(label, parts) {
  const l = utf8.encode(LABEL + label);
  const chunks = [u32be(l.length), l];
  for (const p of parts.map(bytes)) chunks.push(u32be(p.length), p);
  return concat(...chunks);
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function equalBytes(a, b) {
  return a.length === b.length && compareBytes(a, b) === 0;
}

async function hkdf32(salt, ikm, info) {
  const key = await subtle.importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt, info }, key, 256));
}

/** A fresh room secret for a meeting link's fragment (base64url, no padding). */
export function generateSecret() {
  return b64uEncode(globalThis.crypto.getRandomValues(new Uint8Array(SECRET_LEN)));
}

/** Parses the fragment; throws E2eeError('bad_secret') if it cannot be a room secret. */
export function parseSecret(fragment) {
  let raw;
  try {
    raw = b64uDecode(String(fragment).replace(/^#/, ''));
  } catch {
    throw new E2eeError('bad_secret');
  }
  if (raw.length < SECRET_LEN || raw.length > 64) throw new E2eeError('bad_secret');
  return raw;
}

/** {macKey: CryptoKey(HMAC), pairSalt: bytes} for a secret and room. */
export async function deriveRoomKeys(secret, room) {
  const raw = parseSecret(secret);
  const salt = utf8.encode(LABEL + 'room');
  const mac = await hkdf32(salt, raw, transcript('mac', [room]));
  const pairSalt = await hkdf32(salt, raw, transcript('pair-salt', [room]));
  const macKey = await subtle.importKey('raw', mac, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
  return { macKey, pairSalt };
}

/** The AES-256-GCM pair key both sides derive from their ECDH output. */
export async function derivePairKey(pairSalt, shared, room, [a, aPub], [b, bPub]) {
  const swap = compareBytes(utf8.encode(a), utf8.encode(b)) > 0;
  const [lo, loPub, hi, hiPub] = swap ? [b, bPub, a, aPub] : [a, aPub, b, bPub];
  const key = await hkdf32(pairSalt, shared, transcript('pair-key', [room, lo, hi, loPub, hiPub]));
  return subtle.importKey('raw', key, 'AES-GCM', false, ['encrypt', 'decrypt']);
}

/** SHA-256 over the sorted identity keys; first 8 bytes mod 10^12 as "dddd dddd dddd". */
export async function securityCodeFor(identities) {
  const sorted = [...identities].sort(compareBytes).filter((k, i, a) => i === 0 || !equalBytes(k, a[i - 1]));
  const digest = new Uint8Array(await subtle.digest('SHA-256', transcript('code', sorted)));
  let n = 0n;
  for (let i = 0; i < 8; i++) n = (n << 8n) | BigInt(digest[i]);
  const s = (n % 1000000000000n).toString().padStart(12, '0');
  return `${s.slice(0, 4)} ${s.slice(4, 8)} ${s.slice(8, 12)}`;
}

export function encodeBlob(msg) {
  return b64uEncode(utf8.encode(JSON.stringify(msg)));
}

export function decodeBlob(blob) {
  if (typeof blob !== 'string' || blob.length > MAX_BLOB_BYTES) throw new E2eeError('malformed');
  let msg;
  try {
    msg = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(b64uDecode(blob)));
  } catch {
    throw new E2eeError('malformed');
  }
  if (!msg || typeof msg !== 'object') throw new E2eeError('malformed');
  const fields = {
    hello: ['t', 'v', 'from', 'id', 'ack', 'mac'],
    pair: ['t', 'v', 'from', 'to', 'pub', 'sig'],
    key: ['t', 'v', 'from', 'to', 'kid', 'iv', 'ct'],
  }[msg.t];
  if (!fields) throw new E2eeError('malformed');
  const keys = Object.keys(msg);
  if (keys.length !== fields.length || !fields.every((f) => keys.includes(f))) throw new E2eeError('malformed');
  if (msg.v !== VERSION) throw new E2eeError('version');
  for (const f of fields) {
    if (f === 'v' || f === 'ack' || f === 'kid') continue;
    if (typeof msg[f] !== 'string') throw new E2eeError('malformed');
  }
  if (msg.t === 'hello' && typeof msg.ack !== 'boolean') throw new E2eeError('malformed');
  if (msg.t === 'key' && !(Number.isSafeInteger(msg.kid) && msg.kid >= 0)) throw new E2eeError('malformed');
  return msg;
}

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256' };
const ECDSA_SIGN = { name: 'ECDSA', hash: 'SHA-256' };
const ECDH = { name: 'ECDH', namedCurve: 'P-256' };

/**
 * One participant's E2EE state in one room.
 *
 * Callbacks (all optional): onPeerKey(participant, kid, keyBytes) when a member's media
 * key arrives; onOwnKey(kid, keyBytes) when this sender's key changes (the page hands
 * both to the Encoded Transform worker, in-process only); onChange() after any change of
 * members (to refresh the security code and the cannot-decrypt state).
 */
export class E2ee {
  #room;
  #me;
  #macKey;
  #pairSalt;
  #identity;
  #identityPub;
  #peers = new Map();
  #rejected = new Map();
  #mediaKey;
  #kid = 0;
  #chain = Promise.resolve();
  #callbacks;

  constructor(room, me, roomKeys, identity, identityPub, callbacks) {
    this.#room = room;
    this.#me = me;
    this.#macKey = roomKeys.macKey;
    this.#pairSalt = roomKeys.pairSalt;
    this.#identity = identity;
    this.#identityPub = identityPub;
    this.#callbacks = callbacks || {};
    this.#mediaKey = globalThis.crypto.getRandomValues(new Uint8Array(MEDIA_KEY_LEN));
  }

  /** secret: the link's fragment; room: the room id; me: this participant's id. */
  static async create(secret, room, me, callbacks) {
    const roomKeys = await deriveRoomKeys(secret, room);
    const identity = await subtle.generateKey(ECDSA, false, ['sign', 'verify']);
    const identityPub = new Uint8Array(await subtle.exportKey('raw', identity.publicKey));
    const e = new E2ee(room, me, roomKeys, identity.privateKey, identityPub, callbacks);
    e.#callbacks.onOwnKey?.(e.#kid, e.#mediaKey);
    return e;
  }

  get participant() {
    return this.#me;
  }
  get identity() {
    return this.#identityPub;
  }
  get kid() {
    return this.#kid;
  }
  /** The current media key (for this page's own worker only). */
  get mediaKey() {
    return this.#mediaKey;
  }
  members() {
    return [...this.#peers.keys()].sort();
  }
  hasKeyFrom(participant) {
    return this.#peers.get(participant)?.kids.size > 0;
  }
  /** Why participant's hello was refused ('bad_mac', …), or undefined. */
  rejected(participant) {
    return this.#rejected.get(participant);
  }

  async securityCode() {
    return securityCodeFor([this.#identityPub, ...[...this.#peers.values()].map((p) => p.identity)]);
  }

  /** The first message after `joined`: announce this participant to everyone. */
  async start() {
    return [{ to: null, blob: await this.#hello(false) }];
  }

  async #hello(ack) {
    const id = this.#identityPub;
    const mac = new Uint8Array(
      await subtle.sign('HMAC', this.#macKey, transcript('hello', [this.#room, this.#me, id])),
    );
    return encodeBlob({ t: 'hello', v: VERSION, from: this.#me, id: b64uEncode(id), ack, mac: b64uEncode(mac) });
  }

  /** Handles a relayed blob; resolves to the blobs to send. Messages run one at a time. */
  handle(from, blob) {
    const run = this.#chain.then(() => this.#handle(from, blob));
    this.#chain = run.catch(() => {});
    return run;
  }

  async #handle(from, blob) {
    const msg = decodeBlob(blob);
    if (msg.from !== from) throw new E2eeError('misaddressed');
    if (msg.t === 'hello') {
      try {
        const out = await this.#onHello(from, msg);
        this.#rejected.delete(from);
        this.#callbacks.onChange?.();
        return out;
      } catch (e) {
        this.#rejected.set(from, e.code || 'malformed');
        this.#callbacks.onChange?.();
        throw e;
      }
    }
    if (msg.to !== this.#me) throw new E2eeError('misaddressed');
    if (msg.t === 'pair') return this.#onPair(from, msg);
    await this.#onKey(from, msg.kid, b64uDecode(msg.iv), b64uDecode(msg.ct));
    return [];
  }

  async #onHello(from, msg) {
    if (from === this.#me) throw new E2eeError('misaddressed');
    const id = b64uDecode(msg.id);
    const mac = b64uDecode(msg.mac);
    const ok = await subtle.verify('HMAC', this.#macKey, mac, transcript('hello', [this.#room, from, id]));
    if (!ok) throw new E2eeError('bad_mac');
    const existing = this.#peers.get(from);
    const known = existing && equalBytes(existing.identity, id);
    if (!known) this.#peers.set(from, await this.#newPeer(from, id));
    const peer = this.#peers.get(from);
    const out = [];
    if (!msg.ack) out.push({ to: from, blob: await this.#hello(true) });
    // Send (or resend, in case it was lost) our half of the pair.
    if (!known || !msg.ack || !peer.key) out.push({ to: from, blob: peer.ourPairBlob });
    return out;
  }

  async #newPeer(to, identity) {
    const pair = await subtle.generateKey(ECDH, false, ['deriveBits']);
    const pub = new Uint8Array(await subtle.exportKey('raw', pair.publicKey));
    const sig = new Uint8Array(
      await subtle.sign(ECDSA_SIGN, this.#identity, transcript('pair', [this.#room, this.#me, to, pub])),
    );
    const identityKey = await subtle.importKey('raw', identity, ECDSA, false, ['verify']);
    return {
      identity,
      identityKey,
      ourPair: pair.privateKey,
      ourPub: pub,
      ourPairBlob: encodeBlob({ t: 'pair', v: VERSION, from: this.#me, to, pub: b64uEncode(pub), sig: b64uEncode(sig) }),
      theirPairPub: null,
      key: null,
      kids: new Set(),
      pendingKey: null,
    };
  }

  async #onPair(from, msg) {
    const peer = this.#peers.get(from);
    if (!peer) throw new E2eeError('unknown_peer');
    const theirPub = b64uDecode(msg.pub);
    const sig = b64uDecode(msg.sig);
    const ok = await subtle.verify(ECDSA_SIGN, peer.identityKey, sig, transcript('pair', [this.#room, from, this.#me, theirPub]));
    if (!ok) throw new E2eeError('bad_signature');
    // One pair per identity: a resend changes nothing.
    if (peer.theirPairPub) return [];
    let shared;
    try {
      const pubKey = await subtle.importKey('raw', theirPub, ECDH, false, []);
      shared = new Uint8Array(await subtle.deriveBits({ name: 'ECDH', public: pubKey }, peer.ourPair, 256));
    } catch {
      throw new E2eeError('malformed');
    }
    peer.key = await derivePairKey(this.#pairSalt, shared, this.#room, [this.#me, peer.ourPub], [from, theirPub]);
    peer.theirPairPub = theirPub;
    peer.ourPair = null;
    if (peer.pendingKey) {
      const [kid, iv, ct] = peer.pendingKey;
      peer.pendingKey = null;
      await this.#onKey(from, kid, iv, ct).catch(() => {});
    }
    // The channel is up: give this member our current media key.
    return [await this.#keyMessage(from)];
  }

  async #onKey(from, kid, iv, ct) {
    const peer = this.#peers.get(from);
    if (!peer) throw new E2eeError('unknown_peer');
    if (!peer.key) {
      peer.pendingKey = [kid, iv, ct];
      return;
    }
    let mediaKey;
    try {
      mediaKey = new Uint8Array(
        await subtle.decrypt(
          { name: 'AES-GCM', iv, additionalData: transcript('key', [this.#room, from, this.#me, u64be(kid)]) },
          peer.key,
          ct,
        ),
      );
    } catch {
      throw new E2eeError('bad_key_message');
    }
    if (mediaKey.length !== MEDIA_KEY_LEN) throw new E2eeError('bad_key_message');
    peer.kids.add(kid);
    this.#callbacks.onPeerKey?.(from, kid, mediaKey);
    this.#callbacks.onChange?.();
  }

  async #keyMessage(to) {
    const peer = this.#peers.get(to);
    if (!peer?.key) throw new E2eeError('unknown_peer');
    const iv = globalThis.crypto.getRandomValues(new Uint8Array(12));
    const ct = new Uint8Array(
      await subtle.encrypt(
        { name: 'AES-GCM', iv, additionalData: transcript('key', [this.#room, this.#me, to, u64be(this.#kid)]) },
        peer.key,
        this.#mediaKey,
      ),
    );
    return {
      to,
      blob: encodeBlob({ t: 'key', v: VERSION, from: this.#me, to, kid: this.#kid, iv: b64uEncode(iv), ct: b64uEncode(ct) }),
    };
  }

  /** participant left: forget it and rotate so it cannot read what follows. */
  peerLeft(participant) {
    const run = this.#chain.then(async () => {
      this.#rejected.delete(participant);
      if (!this.#peers.delete(participant)) return [];
      this.#callbacks.onChange?.();
      return this.#rotate();
    });
    this.#chain = run.catch(() => {});
    return run;
  }

  /** A new media key under the next KID, sent to every member with a channel. */
  rotate() {
    const run = this.#chain.then(() => this.#rotate());
    this.#chain = run.catch(() => {});
    return run;
  }

  async #rotate() {
    this.#mediaKey = globalThis.crypto.getRandomValues(new Uint8Array(MEDIA_KEY_LEN));
    this.#kid += 1;
    const out = [];
    for (const id of this.members()) if (this.#peers.get(id).key) out.push(await this.#keyMessage(id));
    this.#callbacks.onOwnKey?.(this.#kid, this.#mediaKey);
    return out;
  }
}
