// The Rust headless participant as a full end-to-end encryption member of a browser
// meeting, and the search for key material on the server's side (promise P1).
//
// Two Chromium participants (fake camera and microphone) meet; then the test binary of
// tests/browser_e2ee.rs (VEIL_E2E_HELPER) runs again as its ignored test
// `headless_participants`, inside this same network namespace, and joins two headless
// participants: a member holding the room secret and an observer holding a wrong one. It
// takes one command per line on stdin (`status`, `leave`, `finish`) and answers each with
// one `HELPER {json}` line. Checked here:
//   (a) the member decrypts both browsers' video into valid VP8 key frames and their audio
//       into valid Opus, shows their security code, and the browsers decrypt the member;
//   (b) the observer receives the same media and decrypts none of it; the browsers mark it
//       "cannot decrypt" and carry on;
//   (c) after the member leaves, the browsers send under a new SFrame KID, and the keys
//       the member held decrypt none of those frames, though they did the earlier ones;
//   (d) the room secret and every media key the member held, as bytes and as base64,
//       base64url and hex text, appear nowhere in what the pages sent (WebSocket frames,
//       HTTP request bodies), what the headless participants sent, the RTP the SFU
//       forwarded, or a memory dump of the running `veil`; a control that did reach the
//       server is found in each, so the search can fail.
// The last line, `RESULT {json}`, carries the figures tests/browser_e2ee.rs asserts again.
//
//   cargo test --test browser_e2ee        (runs this inside `unshare -n`, as root)

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

import {
  Person, assert, checkCount, cleanups, createRoom, decodes, everyone, fmt, harness, hears, log, ok,
  problems, sameCode, sleep, waitFor,
} from './lib.mjs';

const HELPER = process.env.VEIL_E2E_HELPER;
// The whole run; each wait below has its own, shorter limit.
const DEADLINE_MS = 150_000;

/** The headless participants: the test binary re-run as its ignored helper test. */
class Helper {
  constructor(env) {
    assert(HELPER && fs.existsSync(HELPER), 'VEIL_E2E_HELPER must name the test binary');
    this.waiting = [];
    this.errors = [];
    this.child = spawn(HELPER, ['--exact', 'headless_participants', '--ignored', '--nocapture', '--test-threads=1'], {
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.exited = new Promise((r) => this.child.once('exit', (code) => r(code)));
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      // The test harness may print `test headless_participants ... ` on the same line.
      const at = line.indexOf('HELPER {');
      if (at < 0) return;
      const msg = JSON.parse(line.slice(at + 7));
      const i = this.waiting.findIndex((w) => w.event === msg.event);
      if (i >= 0) this.waiting.splice(i, 1)[0].resolve(msg);
    });
    this.child.stderr.on('data', (d) => this.errors.push(d));
    cleanups.push(() => this.child.kill('SIGKILL'));
    // Shown with the pages when a check fails.
    everyone.push({ name: 'helper', diagnose: async () => `helper stderr: ${Buffer.concat(this.errors).toString().slice(-3000)}` });
  }

  /** The next message of `event`, sending `command` first if given. */
  next(event, command, limit = 30_000) {
    const reply = new Promise((resolve, reject) => {
      this.waiting.push({ event, resolve });
      this.exited.then((code) => reject(new Error(`the helper exited (${code}) before "${event}"`)));
      setTimeout(() => reject(new Error(`no "${event}" from the helper within ${limit} ms`)), limit);
    });
    if (command) this.child.stdin.write(`${command}\n`);
    return reply;
  }

  status() {
    return this.next('status', 'status');
  }
}

const ZERO = { frames: 0, decrypted: 0, failed: 0, kids: {}, key_frames: 0, valid_key_frames: 0, valid_opus: 0, invalid_opus: 0 };
/** What a headless participant got from `publisher`, audio and video. */
function got(status, publisher) {
  const f = status?.frames ?? {};
  return { video: f[`${publisher}/Video`] ?? ZERO, audio: f[`${publisher}/Audio`] ?? ZERO };
}

// --- What reached the server, and the search -------------------------------------------------

/** Every readable region of a live process's memory (root reads /proc/<pid>/mem). */
function memoryDump(pid) {
  const regions = [];
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r');
  try {
    for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) r/.exec(line);
      if (!m) continue;
      const start = Number.parseInt(m[1], 16);
      const end = Number.parseInt(m[2], 16);
      const buf = Buffer.alloc(end - start);
      try {
        let done = 0;
        while (done < buf.length) {
          const n = fs.readSync(fd, buf, done, Math.min(buf.length - done, 16 << 20), start + done);
          if (n === 0) break;
          done += n;
        }
        regions.push(buf.subarray(0, done));
      } catch {
        // [vvar] and guard pages cannot be read; nothing of ours lives there.
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return regions;
}

/** The forms a secret could take in bytes or text. */
function forms(raw) {
  const b = Buffer.from(raw);
  const text = [b.toString('base64url'), b.toString('base64'), b.toString('base64').replace(/=+$/, ''), b.toString('hex'), b.toString('hex').toUpperCase()];
  return [b, ...new Set(text)].map((t) => Buffer.from(t));
}

/** Searches `buffers` for every needle and for the control; returns the figures. */
function search(place, buffers, needles, control) {
  const bytes = buffers.reduce((n, b) => n + b.length, 0);
  const hits = needles.filter((n) => buffers.some((b) => b.indexOf(n.bytes) >= 0)).map((n) => n.what);
  const controlFound = control.every((c) => buffers.some((b) => b.indexOf(c) >= 0));
  log(`  ${place}: ${(bytes / 1024).toFixed(0)} KiB searched, ${hits.length} key hits, control ${controlFound ? 'found' : 'MISSING'}`);
  return { place, bytes, key_hits: hits.length, hits, control_found: controlFound };
}

// --- The run -------------------------------------------------------------------------------

async function run(veil, browser, dir) {
  const { room } = await createRoom(veil);
  const secret = randomBytes(16).toString('base64url');
  const wrongSecret = randomBytes(16).toString('base64url');
  const link = `${veil.base}/r/${room}#${secret}`;
  const sentByPages = []; // Buffers: WebSocket frames and HTTP request bodies

  const people = [];
  for (const name of [`Ada ${randomBytes(3).toString('hex')}`, `Brook ${randomBytes(3).toString('hex')}`]) {
    const p = await Person.open(browser, veil.base, name);
    p.page.on('websocket', (ws) => ws.on('framesent', (f) => sentByPages.push(Buffer.from(f.payload))));
    p.context.on('request', (r) => {
      const body = r.postDataBuffer();
      if (body) sentByPages.push(body);
    });
    await p.page.goto(link);
    // The page takes Join only once the camera and microphone are open.
    await waitFor(`${name} sees the preview`, () => p.page.evaluate(() => document.getElementById('preview').videoWidth > 0));
    await p.join();
    people.push(p);
  }
  const [ada, brook] = people;
  await decodes(ada, brook);
  await decodes(brook, ada);
  ok('two browsers meet and decode each other');

  const helper = new Helper({
    VEIL_E2E_SERVER: veil.base,
    VEIL_E2E_ROOM: room,
    VEIL_E2E_SECRET: secret,
    VEIL_E2E_WRONG_SECRET: wrongSecret,
    VEIL_E2E_OUT: dir,
  });
  const { member, observer } = await helper.next('joined', null, 60_000);
  ok(`the headless member (${member}) and the observer with a wrong secret (${observer}) joined`);

  // (a) The member decrypts both browsers into valid VP8 key frames and Opus.
  const status = await waitFor('the member decrypts both browsers\' VP8 key frames and Opus', async () => {
    const s = await helper.status();
    const good = people.every((p) => {
      const { video, audio } = got(s.member, p.id);
      return video.valid_key_frames > 0 && video.decrypted > 30 && audio.valid_opus > 50;
    });
    return good && s;
  }, 30_000, 500);
  for (const p of people) {
    const { video, audio } = got(status.member, p.id);
    assert(audio.invalid_opus === 0, `invalid Opus from ${p.name}: ${fmt(audio)}`);
    assert(video.key_frames === video.valid_key_frames, `invalid key frames from ${p.name}: ${fmt(video)}`);
  }
  ok('the member decrypts both browsers: VP8 key frames start 9d 01 2a after the clear header, every Opus packet passes RFC 6716 R1–R7');
  const code = await sameCode(people);
  const memberCode = await waitFor('the member shows the browsers\' security code', async () => {
    const shown = (await helper.status()).member?.code;
    return shown === code && shown;
  });
  ok(`the member shows the browsers' security code (${code})`);

  // The browsers decrypt the member and not the observer.
  const memberPerson = { id: member };
  const observerPerson = { id: observer };
  for (const p of people) {
    await waitFor(`${p.name} marks the observer as cannot decrypt`, async () =>
      /cannot decrypt/i.test((await p.badges(observerPerson)).join(' ')),
    );
    await waitFor(`${p.name} receives the member's media`, async () => (await p.from(memberPerson)).video.packets > 50);
    const badges = await p.badges(memberPerson);
    assert((await p.tile(memberPerson).count()) === 1 && !/decrypt/i.test(badges.join(' ')), `${p.name}'s badges for the member: ${fmt(badges)}`);
  }
  ok('the browsers decrypt the member\'s frames (no "cannot decrypt" badge) and mark the observer');

  // (b) The observer receives everything and decrypts nothing; the browsers carry on.
  const seen = await helper.status();
  for (const p of people) {
    const { video, audio } = got(seen.observer, p.id);
    assert(video.frames > 30 && audio.frames > 50, `the observer received ${p.name}'s frames: ${fmt({ video, audio })}`);
    assert(video.decrypted + audio.decrypted === 0, `the observer decrypted ${p.name}: ${fmt({ video, audio })}`);
  }
  assert(seen.observer.members.length === 0, `the observer verified ${fmt(seen.observer.members)}`);
  await decodes(ada, brook);
  await decodes(brook, ada);
  await hears(ada, brook);
  await hears(brook, ada);
  ok('the observer receives both browsers\' frames and decrypts none; the browsers still decode each other');

  // (c) The member leaves: the browsers rotate, and its keys read nothing sent after.
  await helper.next('left', 'leave');
  for (const p of people) await waitFor(`${p.name} sees the member leave`, async () => (await p.tile(memberPerson).count()) === 0);
  const rotated = await waitFor('the observer sees both browsers send under KID 1', async () => {
    const s = await helper.status();
    const good = people.every((p) => {
      const { video, audio } = got(s.observer, p.id);
      return (video.kids['1'] ?? 0) > 30 && (audio.kids['1'] ?? 0) > 50;
    });
    return good && s;
  }, 20_000, 500);
  await decodes(ada, brook);
  await decodes(brook, ada);
  const finished = await helper.next('finished', 'finish');
  const old = finished.old_keys;
  assert(old.before_decrypted > 0, `the member's keys decrypted the frames before rotation: ${fmt(old)}`);
  assert(old.after_tried > 0 && old.after_decrypted === 0, `the member's keys on frames after rotation: ${fmt(old)}`);
  ok(`after the member left, both browsers send under KID 1; its ${finished.keys.length} keys decrypt ` +
    `${old.before_decrypted} captured frames from before and none of ${old.after_tried} from after`);

  // (d) No key material on the server's side. Dumped while veil still runs the meeting.
  const veilMemory = memoryDump(veil.child.pid);
  const needles = [];
  for (const [what, raw] of [
    ['room secret', Buffer.from(secret, 'base64url')],
    ['wrong secret', Buffer.from(wrongSecret, 'base64url')],
    ...finished.keys.map((k) => [`media key ${k.owner === member ? 'member' : k.owner}/${k.kid}`, Buffer.from(k.hex, 'hex')]),
  ]) {
    for (const bytes of forms(raw)) needles.push({ what, bytes });
  }
  assert(finished.keys.length >= 3, `the member held its own key and both browsers': ${finished.keys.length}`);
  assert(finished.forwarded_control_hex, 'the observer received a payload the member sent');
  const names = people.map((p) => Buffer.from(p.name));
  log('\nsearched for the room secret and media keys (printed sizes):');
  const searched = [
    search('pages: WebSocket frames and HTTP request bodies', sentByPages, needles, [...names, Buffer.from(member)]),
    search('headless participants: join request bodies and WebSocket messages', [fs.readFileSync(path.join(dir, 'sent.txt'))], needles, people.map((p) => Buffer.from(p.id))),
    search('SFU: RTP payloads forwarded to the observer', [fs.readFileSync(path.join(dir, 'forwarded.bin'))], needles, [Buffer.from(finished.forwarded_control_hex, 'hex')]),
    search(`veil process memory (pid ${veil.child.pid})`, veilMemory, needles, [...names, Buffer.from(room)]),
  ];
  for (const s of searched) {
    assert(s.key_hits === 0, `key material found in ${s.place}: ${fmt(s.hits)}`);
    assert(s.control_found, `the control was not found in ${s.place}: the search proves nothing`);
  }
  ok(`no secret or media key (${needles.length} byte and text forms) in any of ${searched.length} places; every control found`);
  assert(problems.length === 0, `uncaught errors in pages: ${fmt(problems)}`);

  const summary = (s) => (p) => {
    const { video, audio } = got(s, p.id);
    return {
      frames: video.frames + audio.frames,
      decrypted: video.decrypted + audio.decrypted,
      failed: video.failed + audio.failed,
      key_frames: video.key_frames,
      valid_key_frames: video.valid_key_frames,
      dimensions: video.dimensions,
      valid_opus: audio.valid_opus,
      invalid_opus: audio.invalid_opus,
    };
  };
  return {
    browsers: people.map((p) => ({ member: summary(status.member)(p), observer: summary(seen.observer)(p), rotated_kids: got(rotated.observer, p.id).video.kids })),
    member_code: memberCode,
    browser_code: code,
    old_keys: old,
    needles: needles.length,
    searched: searched.map(({ place, bytes, key_hits, control_found }) => ({ place, bytes, key_hits, control_found })),
  };
}

harness('member.mjs', DEADLINE_MS, async ({ veil, browser, started, dir }) => {
  const result = await run(veil, browser, dir);
  log(`\n  whole run: ${((Date.now() - started) / 1000).toFixed(1)} s, ${checkCount()} checks`);
  log(`RESULT ${JSON.stringify(result)}`);
});
