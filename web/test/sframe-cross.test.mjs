// Cross-implementation check through committed fixtures: frames the Rust SFrame
// encrypted decrypt here, and the frames this side makes (fixtures/sframe-js.json, which
// bench/src/sframe.rs decrypts) are what this code produces. VEIL_WRITE_FIXTURES=1
// rewrites the JS fixture.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { Encryptor, KeyRing, hexToBytes as hex, bytesToHex, decodeHeader } from '../sframe.js';

const fixture = (name) => new URL(`./fixtures/${name}`, import.meta.url);

test('frames encrypted by the Rust SFrame decrypt in JS', async () => {
  const f = JSON.parse(readFileSync(fixture('sframe-rust.json'), 'utf8'));
  assert.equal(f.cipher_suite, 4);
  const ring = new KeyRing();
  await ring.add(f.kid, hex(f.base_key));
  assert.ok(f.frames.length >= 10);
  for (const fr of f.frames) {
    const sealed = hex(fr.frame);
    const pt = await ring.decryptFrame(fr.codec, sealed);
    assert.equal(bytesToHex(pt), fr.plaintext);
    if (fr.codec === 'vp8' && (pt[0] & 1) === 0) {
      assert.deepEqual(Array.from(sealed.subarray(3, 6)), [0x9d, 0x01, 0x2a]);
    }
  }
  const wrong = new KeyRing();
  await wrong.add(f.kid, new TextEncoder().encode('not the key'));
  await assert.rejects(wrong.decryptFrame('vp8', hex(f.frames[0].frame)), { code: 'authentication' });
});

// A different sender than the Rust fixture's: another key, a one-byte KID.
function plaintexts(seed) {
  const out = [];
  for (let i = 0; i < 12; i++) {
    const body = [];
    for (let j = 0; j < 25 + i * 5; j++) body.push((seed ^ ((j * 17 + i * 3) & 0xff)) & 0xff);
    if (i % 3 === 0) out.push(['vp8', Uint8Array.from([0x70, 0x1f, 0x01, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, ...body])]);
    else if (i % 3 === 1) out.push(['vp8', Uint8Array.from([0x91, 0x02, 0x00, ...body])]);
    else out.push(['opus', Uint8Array.from(body)]);
  }
  return out;
}

test('the JS fixture is what sframe.js produces', async () => {
  const baseKey = hex('c0ffee00112233445566778899aabbcc');
  const kid = 5;
  const encr = await Encryptor.create(kid, baseKey);
  const frames = [];
  for (const [codec, pt] of plaintexts(0xa5)) {
    const sealed = await encr.encryptFrame(codec, pt);
    frames.push({ codec, plaintext: bytesToHex(pt), frame: bytesToHex(sealed) });
  }
  // Counters 8 and up use the extended CTR encoding.
  const last = hex(frames[11].frame);
  assert.equal(decodeHeader(last.subarray(0)).ctr, 11n);
  const text =
    JSON.stringify(
      {
        about: 'SFrame frames encrypted by web/sframe.js (web/test/sframe-cross.test.mjs)',
        cipher_suite: 4,
        base_key: bytesToHex(baseKey),
        kid,
        frames,
      },
      null,
      2,
    ) + '\n';
  if (process.env.VEIL_WRITE_FIXTURES) writeFileSync(fixture('sframe-js.json'), text);
  assert.equal(readFileSync(fixture('sframe-js.json'), 'utf8'), text);
});
