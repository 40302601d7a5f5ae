// The JS key management: members exchange keys through a relay that behaves like
// signaling, agree on the security code, refuse a wrong secret, and rotate on leave.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { E2ee, generateSecret, securityCodeFor, b64uEncode, encodeBlob, parseSecret } from '../keys.js';
import { Encryptor, KeyRing } from '../sframe.js';

class Room {
  constructor() {
    this.members = new Map(); // id → {e2ee, rings: Map(from → KeyRing), encryptor}
    this.queue = [];
  }

  async join(secret, id) {
    const m = { rings: new Map(), encryptor: null, refused: 0 };
    m.e2ee = await E2ee.create(secret, 'room1', id, {
      onPeerKey: (from, kid, key) => {
        if (!m.rings.has(from)) m.rings.set(from, new KeyRing());
        m.pending = (m.pending || Promise.resolve()).then(() => m.rings.get(from).add(kid, key));
      },
      onOwnKey: (kid, key) => {
        m.pending = (m.pending || Promise.resolve()).then(async () => {
          m.encryptor = await Encryptor.create(kid, key);
        });
      },
    });
    this.members.set(id, m);
    for (const o of await m.e2ee.start()) this.queue.push([id, o]);
    await this.run();
  }

  async leave(id) {
    this.members.delete(id);
    for (const [mid, m] of this.members) for (const o of await m.e2ee.peerLeft(id)) this.queue.push([mid, o]);
    await this.run();
  }

  async run() {
    while (this.queue.length) {
      const [from, o] = this.queue.shift();
      for (const [id, m] of this.members) {
        if (id === from || (o.to !== null && o.to !== id)) continue;
        try {
          for (const r of await m.e2ee.handle(from, o.blob)) this.queue.push([id, r]);
        } catch {
          m.refused++;
        }
      }
    }
    for (const m of this.members.values()) await m.pending;
  }
}

const opus = Uint8Array.of(0xfc, 1, 2, 3, 4);

test('members exchange keys, decrypt each other and agree on the code', async () => {
  const secret = generateSecret();
  assert.equal(parseSecret(secret).length, 16);
  const room = new Room();
  for (const id of ['alice', 'bob', 'carol']) await room.join(secret, id);
  const codes = await Promise.all([...room.members.values()].map((m) => m.e2ee.securityCode()));
  assert.match(codes[0], /^\d{4} \d{4} \d{4}$/);
  assert.deepEqual(codes, [codes[0], codes[0], codes[0]]);
  for (const [a, ma] of room.members) {
    const sealed = await ma.encryptor.encryptFrame('opus', opus);
    for (const [b, mb] of room.members) {
      if (a === b) continue;
      assert.ok(mb.e2ee.hasKeyFrom(a), `${b} has ${a}'s key`);
      assert.deepEqual(await mb.rings.get(a).decryptFrame('opus', sealed), opus);
    }
  }
});

test('a wrong secret gets no key and a different code; others unaffected', async () => {
  const secret = generateSecret();
  const room = new Room();
  await room.join(secret, 'alice');
  await room.join(secret, 'bob');
  await room.join(generateSecret(), 'mallory');
  const alice = room.members.get('alice');
  const mallory = room.members.get('mallory');
  assert.equal(alice.e2ee.rejected('mallory'), 'bad_mac');
  assert.deepEqual(alice.e2ee.members(), ['bob']);
  assert.equal(mallory.rings.size, 0);
  assert.equal(mallory.e2ee.hasKeyFrom('alice'), false);
  const code = await alice.e2ee.securityCode();
  assert.equal(await room.members.get('bob').e2ee.securityCode(), code);
  assert.notEqual(await mallory.e2ee.securityCode(), code);
  const sealed = await alice.encryptor.encryptFrame('opus', opus);
  assert.deepEqual(await room.members.get('bob').rings.get('alice').decryptFrame('opus', sealed), opus);
});

test('leaving rotates so the departed cannot read on', async () => {
  const secret = generateSecret();
  const room = new Room();
  for (const id of ['alice', 'bob', 'carol']) await room.join(secret, id);
  const carol = room.members.get('carol');
  await room.leave('carol');
  const alice = room.members.get('alice');
  assert.equal(alice.e2ee.kid, 1);
  const after = await alice.encryptor.encryptFrame('opus', opus);
  assert.deepEqual(await room.members.get('bob').rings.get('alice').decryptFrame('opus', after), opus);
  await assert.rejects(carol.rings.get('alice').decryptFrame('opus', after), { code: 'unknown_kid' });
});

test('the relay cannot forge, redirect or inject', async () => {
  const secret = generateSecret();
  const alice = await E2ee.create(secret, 'room1', 'alice');
  const bob = await E2ee.create(secret, 'room1', 'bob');
  const [hello] = await bob.start();
  await assert.rejects(alice.handle('eve', hello.blob), { code: 'misaddressed' });
  const other = await E2ee.create(secret, 'room2', 'bob');
  await assert.rejects(alice.handle('bob', (await other.start())[0].blob), { code: 'bad_mac' });
  await assert.rejects(alice.handle('bob', '%%%'), { code: 'malformed' });
  await assert.rejects(alice.handle('bob', encodeBlob({ t: 'hello' })), { code: 'malformed' });
  const forged = encodeBlob({ t: 'hello', v: 1, from: 'bob', id: b64uEncode(new Uint8Array(65)), ack: false, mac: 'AAAA' });
  await assert.rejects(alice.handle('bob', forged), { code: 'bad_mac' });
  const out = await alice.handle('bob', hello.blob);
  assert.equal(out.length, 2);
  await assert.rejects(E2ee.create('short', 'r', 'p'), { code: 'bad_secret' });
});

test('security code ignores order', async () => {
  const a = new Uint8Array(65).fill(1);
  const b = new Uint8Array(65).fill(2);
  assert.equal(await securityCodeFor([a, b]), await securityCodeFor([b, a]));
  assert.notEqual(await securityCodeFor([a, b]), await securityCodeFor([a]));
});
