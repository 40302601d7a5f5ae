// Cross-implementation check of the key management through committed fixtures:
// fixtures/keys-js.json is made here (VEIL_WRITE_FIXTURES=1) and checked by
// bench/src/e2ee.rs; fixtures/keys-rust.json is made by that Rust test and checked here.
// Each holds a hello (HMAC from the room secret), a signed pair message, an ECDH shared
// secret, a key message under the pair key derived from it, and a security code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import {
  E2ee,
  generateSecret,
  deriveRoomKeys,
  derivePairKey,
  transcript,
  securityCodeFor,
  encodeBlob,
  decodeBlob,
  b64uEncode,
  b64uDecode,
} from '../keys.js';
import { bytesToHex, hexToBytes } from '../sframe.js';

const subtle = globalThis.crypto.subtle;
const ECDH = { name: 'ECDH', namedCurve: 'P-256' };
const fixture = (name) => new URL(`./fixtures/${name}`, import.meta.url);
const u64be = (n) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
};

async function makeJsFixture() {
  const secret = generateSecret();
  const room = 'cross-room';
  const alice = await E2ee.create(secret, room, 'js-alice');
  const bob = await E2ee.create(secret, room, 'rust-bob');
  const hello = (await alice.start())[0].blob;
  // Alice's pair message for rust-bob, made by the real code path.
  const replies = await alice.handle('rust-bob', (await bob.start())[0].blob);
  const pair = replies.find((r) => decodeBlob(r.blob).t === 'pair').blob;
  // A key message under a pair key from a known ECDH output (test keys only).
  const x = await subtle.generateKey(ECDH, true, ['deriveBits']);
  const y = await subtle.generateKey(ECDH, true, ['deriveBits']);
  const xPub = new Uint8Array(await subtle.exportKey('raw', x.publicKey));
  const yPub = new Uint8Array(await subtle.exportKey('raw', y.publicKey));
  const shared = new Uint8Array(await subtle.deriveBits({ name: 'ECDH', public: y.publicKey }, x.privateKey, 256));
  const { pairSalt } = await deriveRoomKeys(secret, room);
  const pairKey = await derivePairKey(pairSalt, shared, room, ['js-alice', xPub], ['rust-bob', yPub]);
  const mediaKey = globalThis.crypto.getRandomValues(new Uint8Array(16));
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const kid = 3;
  const ct = new Uint8Array(
    await subtle.encrypt(
      { name: 'AES-GCM', iv, additionalData: transcript('key', [room, 'js-alice', 'rust-bob', u64be(kid)]) },
      pairKey,
      mediaKey,
    ),
  );
  const key = encodeBlob({ t: 'key', v: 1, from: 'js-alice', to: 'rust-bob', kid, iv: b64uEncode(iv), ct: b64uEncode(ct) });
  const identities = [alice.identity, bob.identity, xPub];
  return {
    about: 'Key management blobs made by web/keys.js (web/test/keys-cross.test.mjs); test keys only',
    secret,
    room,
    from: 'js-alice',
    to: 'rust-bob',
    hello,
    pair,
    from_pair_pub: bytesToHex(xPub),
    to_pair_pub: bytesToHex(yPub),
    // The "to" side's private key, so the Rust fixture's ECDH against to_pair_pub can be checked here.
    to_pair_private_jwk: await subtle.exportKey('jwk', y.privateKey),
    shared: bytesToHex(shared),
    key,
    media_key: bytesToHex(mediaKey),
    kid,
    code_identities: identities.map(bytesToHex),
    code: await securityCodeFor(identities),
  };
}

test('the JS key fixture is consistent (VEIL_WRITE_FIXTURES=1 remakes it)', async () => {
  if (process.env.VEIL_WRITE_FIXTURES) {
    writeFileSync(fixture('keys-js.json'), JSON.stringify(await makeJsFixture(), null, 2) + '\n');
  }
  const f = JSON.parse(readFileSync(fixture('keys-js.json'), 'utf8'));
  // The hello verifies for the recipient with the same secret.
  const bob = await E2ee.create(f.secret, f.room, f.to);
  const out = await bob.handle(f.from, f.hello);
  assert.equal(out.length, 2);
  assert.equal(await securityCodeFor(f.code_identities.map(hexToBytes)), f.code);
});

test('blobs made by the Rust key management verify in JS', async () => {
  const f = JSON.parse(readFileSync(fixture('keys-rust.json'), 'utf8'));
  const js = JSON.parse(readFileSync(fixture('keys-js.json'), 'utf8'));
  // hello: the HMAC from the room secret matches.
  const me = await E2ee.create(f.secret, f.room, f.to);
  const replies = await me.handle(f.from, f.hello);
  assert.deepEqual(
    replies.map((r) => decodeBlob(r.blob).t),
    ['hello', 'pair'],
  );
  // pair: the Rust identity's ECDSA signature verifies (the reply is our key message).
  const afterPair = await me.handle(f.from, f.pair);
  assert.equal(afterPair.length, 1);
  assert.equal(decodeBlob(afterPair[0].blob).t, 'key');
  // A wrong secret refuses the same hello.
  const stranger = await E2ee.create(generateSecret(), f.room, f.to);
  await assert.rejects(stranger.handle(f.from, f.hello), { code: 'bad_mac' });
  // ECDH interop: Rust's pair key against the JS test key gives Rust's shared secret.
  assert.equal(f.to_pair_pub, js.to_pair_pub);
  const y = await subtle.importKey('jwk', js.to_pair_private_jwk, ECDH, false, ['deriveBits']);
  const rustPub = await subtle.importKey('raw', hexToBytes(f.from_pair_pub), ECDH, false, []);
  const shared = new Uint8Array(await subtle.deriveBits({ name: 'ECDH', public: rustPub }, y, 256));
  assert.equal(bytesToHex(shared), f.shared);
  // key: the pair key derivation and the key message format agree.
  const { pairSalt } = await deriveRoomKeys(f.secret, f.room);
  const pairKey = await derivePairKey(
    pairSalt,
    shared,
    f.room,
    [f.from, hexToBytes(f.from_pair_pub)],
    [f.to, hexToBytes(f.to_pair_pub)],
  );
  const msg = decodeBlob(f.key);
  assert.equal(msg.kid, f.kid);
  const mediaKey = new Uint8Array(
    await subtle.decrypt(
      { name: 'AES-GCM', iv: b64uDecode(msg.iv), additionalData: transcript('key', [f.room, f.from, f.to, u64be(msg.kid)]) },
      pairKey,
      b64uDecode(msg.ct),
    ),
  );
  assert.equal(bytesToHex(mediaKey), f.media_key);
  assert.equal(await securityCodeFor(f.code_identities.map(hexToBytes)), f.code);
});
