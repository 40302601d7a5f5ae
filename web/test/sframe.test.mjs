// The JS SFrame against RFC 9605's test vectors and its own round trips.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  encodeHeader,
  decodeHeader,
  deriveKeySalt,
  sframeLabel,
  SFrameKey,
  Encryptor,
  KeyRing,
  ReplayWindow,
  vp8ClearPrefixLength,
  clearPrefixLength,
  hexToBytes as hex,
  bytesToHex,
  REPLAY_WINDOW,
} from '../sframe.js';

// RFC 9605 Appendix C.1, a selection covering every length of KID and CTR.
const HEADER_VECTORS = [
  [0x0000000000000000n, 0x0000000000000000n, '00'],
  [0x0000000000000000n, 0x0000000000000001n, '01'],
  [0x0000000000000000n, 0x00000000000000ffn, '08ff'],
  [0x0000000000000000n, 0x0000000000000100n, '090100'],
  [0x0000000000000000n, 0x000000000000ffffn, '09ffff'],
  [0x0000000000000000n, 0x0000000000010000n, '0a010000'],
  [0x0000000000000000n, 0x0000000001000000n, '0b01000000'],
  [0x0000000000000000n, 0x0000000100000000n, '0c0100000000'],
  [0x0000000000000000n, 0x0000010000000000n, '0d010000000000'],
  [0x0000000000000000n, 0x0001000000000000n, '0e01000000000000'],
  [0x0000000000000000n, 0x0100000000000000n, '0f0100000000000000'],
  [0x0000000000000000n, 0xffffffffffffffffn, '0fffffffffffffffff'],
  [0x0000000000000001n, 0x0000000000000000n, '10'],
  [0x0000000000000001n, 0x0000000000000001n, '11'],
  [0x0000000000000001n, 0x00000000000000ffn, '18ff'],
  [0x0000000000000001n, 0x0000000000ffffffn, '1affffff'],
  [0x00000000000000ffn, 0x0000000000000000n, '80ff'],
  [0x00000000000000ffn, 0x0000000000000001n, '81ff'],
  [0x00000000000000ffn, 0x00000000000000ffn, '88ffff'],
  [0x00000000000000ffn, 0x0000000000000100n, '89ff0100'],
  [0x00000000000000ffn, 0xffffffffffffffffn, '8fffffffffffffffffff'],
  [0x0000000000000100n, 0x0000000000000000n, '900100'],
  [0x0000000000000100n, 0x00000000000000ffn, '980100ff'],
  [0x0000000000000100n, 0x0000000000000100n, '9901000100'],
  [0x000000000000ffffn, 0x0000000000000001n, '91ffff'],
  [0x000000000000ffffn, 0x0000000000010000n, '9affff010000'],
  [0x0000000000010000n, 0x0000000000000000n, 'a0010000'],
  [0x0000000000010000n, 0x0000000000000100n, 'a90100000100'],
  [0x0000000000ffffffn, 0x0000000001000000n, 'abffffff01000000'],
  [0x0000000001000000n, 0x0000000000000000n, 'b001000000'],
  [0x0000000001000000n, 0x0000000100000000n, 'bc010000000100000000'],
  [0x00000000ffffffffn, 0x0000000000000001n, 'b1ffffffff'],
  [0x0000000100000000n, 0x0000000000000000n, 'c00100000000'],
  [0x0000000100000000n, 0x0000ffffffffffffn, 'cd0100000000ffffffffffff'],
  [0x000000ffffffffffn, 0x00000000000000ffn, 'c8ffffffffffff'],
  [0x0000010000000000n, 0x0000000000000000n, 'd0010000000000'],
  [0x0000010000000000n, 0x0001000000000000n, 'de01000000000001000000000000'],
  [0x0000ffffffffffffn, 0x0000000000000100n, 'd9ffffffffffff0100'],
  [0x0001000000000000n, 0x0000000000000000n, 'e001000000000000'],
  [0x0001000000000000n, 0x0100000000000000n, 'ef010000000000000100000000000000'],
  [0x00ffffffffffffffn, 0x0000000000010000n, 'eaffffffffffffff010000'],
  [0x0100000000000000n, 0x0000000000000000n, 'f00100000000000000'],
  [0x0100000000000000n, 0x0000000000000001n, 'f10100000000000000'],
  [0x0100000000000000n, 0x0100000000000000n, 'ff01000000000000000100000000000000'],
  [0xffffffffffffffffn, 0x00000000000000ffn, 'f8ffffffffffffffffff'],
  [0xffffffffffffffffn, 0xffffffffffffffffn, 'ffffffffffffffffffffffffffffffffff'],
];

test('RFC 9605 C.1 header vectors', () => {
  for (const [kid, ctr, expected] of HEADER_VECTORS) {
    const encoded = encodeHeader(kid, ctr);
    assert.equal(bytesToHex(encoded), expected, `kid ${kid} ctr ${ctr}`);
    assert.deepEqual(decodeHeader(encoded), { kid, ctr, length: encoded.length });
  }
  assert.throws(() => decodeHeader(new Uint8Array(0)), { code: 'truncated_header' });
  assert.throws(() => decodeHeader(hex('99012345')), { code: 'truncated_header' });
});

// RFC 9605 Appendix C.3, cipher suite 0x0004 (AES_128_GCM_SHA256_128).
const V = {
  kid: 0x0000000000000123n,
  ctr: 0x0000000000004567n,
  base_key: '000102030405060708090a0b0c0d0e0f',
  sframe_key_label: `534672616d6520312e30205365637265
                     74206b65792000000000000001230004`,
  sframe_salt_label: `534672616d6520312e30205365637265
                      742073616c7420000000000000012300
                      04`,
  sframe_key: 'd34f547f4ca4f9a7447006fe7fcbf768',
  sframe_salt: '75234edefe07819026751816',
  metadata: '4945544620534672616d65205747',
  nonce: '75234edefe07819026755d71',
  pt: `64726166742d696574662d736672616d
       652d656e63`,
  ct: `9901234567b7412c2513a1b66dbb4884
       1bbaf17f598751176ad847681a69c6d0
       b091c07018ce4adb34eb`,
};

test('RFC 9605 C.3 SFrame vector, AES_128_GCM_SHA256_128', async () => {
  assert.deepEqual(sframeLabel('key ', V.kid), hex(V.sframe_key_label));
  assert.deepEqual(sframeLabel('salt ', V.kid), hex(V.sframe_salt_label));
  const { key, salt } = await deriveKeySalt(V.kid, hex(V.base_key));
  assert.equal(bytesToHex(key), V.sframe_key);
  assert.equal(bytesToHex(salt), V.sframe_salt);
  const k = await SFrameKey.derive(V.kid, hex(V.base_key));
  assert.equal(bytesToHex(k.nonce(V.ctr)), V.nonce);
  const ct = await k.encrypt(V.ctr, hex(V.metadata), hex(V.pt));
  assert.equal(bytesToHex(ct), V.ct.replace(/\s+/g, ''));
  const { header, plaintext } = await k.decrypt(hex(V.metadata), hex(V.ct));
  assert.equal(header.kid, V.kid);
  assert.equal(header.ctr, V.ctr);
  assert.deepEqual(plaintext, hex(V.pt));
  await assert.rejects(k.decrypt(new TextEncoder().encode('other'), hex(V.ct)), { code: 'authentication' });
  const bad = hex(V.ct);
  bad[bad.length - 1] ^= 1;
  await assert.rejects(k.decrypt(hex(V.metadata), bad), { code: 'authentication' });
});

function vp8KeyFrame() {
  const f = [0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
  for (let i = 0; i < 200; i++) f.push((i * 7) & 0xff);
  return Uint8Array.from(f);
}

test('VP8 clear prefix follows the key frame bit', () => {
  assert.equal(vp8ClearPrefixLength(Uint8Array.of(0x10, 2, 0)), 10);
  assert.equal(vp8ClearPrefixLength(Uint8Array.of(0x11, 2, 0)), 3);
  assert.equal(clearPrefixLength('opus', Uint8Array.of(0x10)), 0);
});

test('frames round-trip with the prefix clear and authenticated', async () => {
  const base = new TextEncoder().encode('0123456789abcdef');
  const encr = await Encryptor.create(3, base);
  const ring = new KeyRing();
  await ring.add(3, base);
  const key = vp8KeyFrame();
  const sealed = await encr.encryptFrame('vp8', key);
  assert.deepEqual(sealed.subarray(0, 10), key.subarray(0, 10));
  assert.equal(sealed[10], 0x30);
  assert.deepEqual(await ring.decryptFrame('vp8', sealed), key);
  const delta = Uint8Array.of(0x31, 5, 0, 1, 2, 3);
  const sd = await encr.encryptFrame('vp8', delta);
  assert.deepEqual(sd.subarray(0, 3), delta.subarray(0, 3));
  assert.deepEqual(await ring.decryptFrame('vp8', sd), delta);
  const opus = Uint8Array.of(0xfc, 0xff, 0xfe, 9);
  const so = await encr.encryptFrame('opus', opus);
  assert.deepEqual(decodeHeader(so), { kid: 3n, ctr: 2n, length: 1 });
  assert.deepEqual(await ring.decryptFrame('opus', so), opus);
  // Replay refused; a tampered clear prefix fails authentication.
  await assert.rejects(ring.decryptFrame('opus', so), { code: 'replay' });
  const tampered = await encr.encryptFrame('vp8', key);
  tampered[5] ^= 0x40;
  await assert.rejects(ring.decryptFrame('vp8', tampered), { code: 'authentication' });
  // Unknown KID, and a wrong key under the right KID.
  await assert.rejects(new KeyRing().decryptFrame('opus', so), { code: 'unknown_kid' });
  const other = new KeyRing();
  await other.add(3, new TextEncoder().encode('another key'));
  await assert.rejects(other.decryptFrame('opus', await encr.encryptFrame('opus', opus)), {
    code: 'authentication',
  });
  await assert.rejects(encr.encryptFrame('vp8', Uint8Array.of(0x10, 0, 0)), { code: 'too_short' });
});

test('replay window slides and key ring keeps the newest keys', async () => {
  const w = new ReplayWindow();
  w.mark(5n);
  assert.equal(w.check(5n), false);
  assert.equal(w.check(4n), true);
  w.mark(5n + REPLAY_WINDOW);
  assert.equal(w.check(5n), false);
  assert.equal(w.check(REPLAY_WINDOW + 4n), true);
  const ring = new KeyRing();
  for (let kid = 0; kid < 6; kid++) await ring.add(kid, Uint8Array.of(kid + 1));
  assert.equal(ring.has(0), false);
  assert.equal(ring.has(1), false);
  assert.equal(ring.has(5), true);
});
