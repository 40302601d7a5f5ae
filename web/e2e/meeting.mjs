// Veil's web client in real headless Chromium (Debian's `chromium`, driven by
// playwright-core): people join one meeting from the landing page or an invite link,
// decode each other's end-to-end encrypted audio and video, use the controls, leave,
// reconnect; one with the wrong key in the link's fragment decodes nothing and says so.
//
// Run it only inside a network namespace of its own, where loopback is the only interface,
// so that Chromium's WebRTC can reach nothing but this machine's loopback:
//
//   unshare -n sh -c 'ip link set lo up && VEIL_BIN=target/debug/veil exec node web/e2e/meeting.mjs'
//
// (`cargo test --test browser` does exactly that.) The script starts `veil` itself (all in
// one, its data in a temporary folder) and Chromium, and exits non-zero on the first failed
// check, printing Veil's log and the pages' console.
//
// Environment: VEIL_BIN (required) the veil binary; VEIL_CHROMIUM (default
// /usr/bin/chromium); VEIL_E2E_SCREENSHOT a path for a PNG of a three-person meeting
// (docs/meeting.png is made so). While working on web/: VEIL_E2E_WEB_DIR=web serves the
// pages and scripts from that folder instead of the binary's copies (no rebuild per
// change), VEIL_E2E_DEBUG_SDP=1 logs every description set (shown on failure).
//
// Printed, never asserted: join-to-first-decoded-frame times (with ICE and DTLS steps)
// and which Encoded Transform API Chromium used.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { assert, checkCount, fmt, log, mailedLink, ok, runScript, serveWebDir, sleep, waitFor } from './lib.mjs';

const SCREENSHOT = process.env.VEIL_E2E_SCREENSHOT || '';
// The whole run; each wait below has its own, shorter limit.
const DEADLINE_MS = 170_000;


// --- Room creation ------------------------------------------------------------------------

/**
 * Creates a meeting the way its host would and returns {room, hostKey}. Creating needs a
 * logged-in account with an active trial: sign up, open the verification link (Veil's
 * outbox folder, since no SMTP relay is configured), log in, POST /api/rooms with the
 * session cookie. All of it happens here, outside the browser, so the pages under test
 * never hold a cookie.
 */
async function createRoom(veil) {
  let res = await fetch(`${veil.base}/api/rooms`, { method: 'POST' });
  if (res.status === 401) {
    const cookie = await hostSession(veil);
    res = await fetch(`${veil.base}/api/rooms`, { method: 'POST', headers: { cookie } });
  }
  const body = await res.json();
  assert(res.status === 201 && typeof body.room === 'string', `POST /api/rooms: ${res.status} ${fmt(body)}`);
  return { room: body.room, hostKey: body.host_key };
}

async function hostSession(veil) {
  const email = `host-${randomBytes(4).toString('hex')}@example.com`;
  const password = 'a long enough passphrase for tests';
  const json = (body) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const signup = await fetch(
    `${veil.base}/api/accounts`,
    json({ email, display_name: 'Host', password, age_confirmed: true, accept_policy: true }),
  );
  const account = (await signup.json()).account;
  assert(signup.ok && typeof account === 'string', `sign-up: ${signup.status}`);
  const link = await mailedLink(veil, `-${account}-verify.eml`);
  const token = link.split('#')[1];
  const verified = await fetch(`${veil.base}/api/accounts/verify`, json({ token }));
  assert(verified.ok, `verify: ${verified.status}`);
  const login = await fetch(`${veil.base}/api/session`, json({ email, password }));
  assert(login.ok, `log in: ${login.status}`);
  const cookie = login.headers.get('set-cookie');
  assert(cookie, 'log in sets a session cookie');
  return cookie.split(';')[0];
}

// --- In the page: test instrumentation (a Playwright init script, never part of Veil) ------

/**
 * Runs before the page's own scripts. Records every RTCPeerConnection, which publisher
 * each received track belongs to (its stream id is the publisher's participant id), which
 * Encoded Transform API the page used, when Join was submitted and when the first video
 * frame was decoded. `forceEncodedStreams` hides RTCRtpScriptTransform so the page takes
 * its createEncodedStreams path (what Chromium-based browsers without it do).
 */
function instrument({ forceEncodedStreams, debugSdp }) {
  const t = {
    pcs: [],
    owners: new Map(),
    scriptTransforms: 0,
    encodedStreams: 0,
    joinAt: null,
    connectedAt: null,
    iceCheckingAt: null,
    iceConnectedAt: null,
    firstPacketAt: null,
    firstFrameAt: null,
  };
  window.__veilTest = t;
  if (forceEncodedStreams) delete window.RTCRtpScriptTransform;
  if (window.RTCRtpScriptTransform) {
    const Base = window.RTCRtpScriptTransform;
    window.RTCRtpScriptTransform = class extends Base {
      constructor(...a) {
        super(...a);
        t.scriptTransforms += 1;
      }
    };
  }
  for (const C of [window.RTCRtpSender, window.RTCRtpReceiver]) {
    const f = C.prototype.createEncodedStreams;
    if (f) {
      C.prototype.createEncodedStreams = function (...a) {
        t.encodedStreams += 1;
        return f.apply(this, a);
      };
    }
  }
  const watchFirstFrame = (pc) => {
    const timer = setInterval(async () => {
      if (pc.signalingState === 'closed' || t.firstFrameAt !== null) return clearInterval(timer);
      const stats = await pc.getStats();
      for (const r of stats.values()) {
        if (r.type !== 'inbound-rtp' || r.kind !== 'video') continue;
        if (r.packetsReceived > 0) t.firstPacketAt ??= performance.now();
        if (r.framesDecoded > 0) t.firstFrameAt ??= performance.now();
      }
    }, 20);
  };
  const Pc = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Pc {
    constructor(...a) {
      super(...a);
      t.pcs.push(this);
      if (debugSdp) {
        for (const m of ['setLocalDescription', 'setRemoteDescription']) {
          const f = this[m].bind(this);
          this[m] = async (d) => {
            const r = await f(d);
            console.log(`${m} ${JSON.stringify(m === 'setLocalDescription' ? this.localDescription : d)}`);
            return r;
          };
        }
      }
      this.addEventListener('track', (e) => t.owners.set(e.track.id, e.streams[0]?.id ?? '?'));
      watchFirstFrame(this);
      this.addEventListener('iceconnectionstatechange', () => {
        if (this.iceConnectionState === 'checking') t.iceCheckingAt ??= performance.now();
        if (this.iceConnectionState === 'connected') t.iceConnectedAt ??= performance.now();
      });
      this.addEventListener('connectionstatechange', () => {
        if (this.connectionState === 'connected') t.connectedAt ??= performance.now();
      });
    }
  };
  document.addEventListener('submit', () => (t.joinAt ??= performance.now()), true);
  // Per publisher: video frames decoded and packets received, audio samples and energy.
  t.stats = async () => {
    const out = {};
    for (const pc of t.pcs) {
      if (pc.signalingState === 'closed') continue;
      for (const r of (await pc.getStats()).values()) {
        if (r.type !== 'inbound-rtp') continue;
        const who = t.owners.get(r.trackIdentifier) ?? '?';
        const p = (out[who] ??= {
          video: { framesDecoded: 0, packets: 0, streams: 0 },
          audio: { packets: 0, samples: 0, energy: 0, concealed: 0 },
        });
        if (r.kind === 'video') {
          p.video.framesDecoded += r.framesDecoded || 0;
          p.video.packets += r.packetsReceived || 0;
          p.video.streams += 1;
        } else {
          p.audio.packets += r.packetsReceived || 0;
          p.audio.samples += r.totalSamplesReceived || 0;
          p.audio.energy += r.totalAudioEnergy || 0;
          p.audio.concealed += r.concealedSamples || 0;
        }
      }
    }
    return out;
  };
}

// --- Participants ---------------------------------------------------------------------------

const requests = []; // {who, url}
const setCookies = []; // {who, url}
const problems = []; // uncaught page errors
const consoleLines = [];
const everyone = []; // for the diagnosis printed on failure

class Person {
  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.id = null;
  }

  static async open(browser, base, name, { forceEncodedStreams = false } = {}) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    await context.grantPermissions(['camera', 'microphone', 'clipboard-read', 'clipboard-write'], { origin: base });
    await context.addInitScript(instrument, { forceEncodedStreams, debugSdp: process.env.VEIL_E2E_DEBUG_SDP === '1' });
    await serveWebDir(context);
    context.on('request', (r) => requests.push({ who: name, url: r.url() }));
    context.on('response', async (r) => {
      const headers = await r.allHeaders().catch(() => ({}));
      if (headers['set-cookie']) setCookies.push({ who: name, url: r.url() });
    });
    const page = await context.newPage();
    page.on('websocket', (ws) => requests.push({ who: name, url: ws.url() }));
    page.on('pageerror', (e) => problems.push(`${name}: ${e.message}`));
    page.on('console', (m) => consoleLines.push(`${name} [${m.type()}] ${m.text()} ${m.location()?.url ?? ''}`));
    page.on('worker', (w) => w.on('console', (m) => consoleLines.push(`${name} worker [${m.type()}] ${m.text()}`)));
    const person = new Person(name, context, page);
    everyone.push(person);
    return person;
  }

  /** What the page shows and its peer connection's state, for failure reports. */
  async diagnose() {
    if (this.page.isClosed()) return `${this.name}: closed`;
    const d = await this.page
      .evaluate(async () => ({
        status: document.getElementById('status')?.textContent,
        fatal: document.getElementById('fatal')?.textContent,
        tiles: [...document.querySelectorAll('#tiles li')].map((li) => `${li.getAttribute('aria-label')} [${li.className}]`),
        levels: await Promise.all(
          window.__veilTest.pcs
            .filter((pc) => pc.signalingState !== 'closed')
            .flatMap((pc) => pc.getReceivers())
            .filter((r) => r.track.kind === 'audio')
            .map(async (r) => [...(await r.getStats()).values()].filter((x) => x.type === 'inbound-rtp').map((x) => x.audioLevel)),
        ),
        pcs: window.__veilTest.pcs.map((pc) => ({
          connection: pc.connectionState,
          signaling: pc.signalingState,
          transceivers: pc.getTransceivers().map((t) => `${t.mid}:${t.direction}/${t.currentDirection}:${t.receiver.track.kind}`),
        })),
        stats: await window.__veilTest.stats(),
        sent: await Promise.all(
          window.__veilTest.pcs
            .filter((pc) => pc.signalingState !== 'closed')
            .map(async (pc) =>
              [...(await pc.getStats()).values()]
                .filter((r) => r.type === 'media-source' || r.type === 'outbound-rtp')
                .map((r) => `${r.type}/${r.kind}: ${r.type === 'media-source' ? (r.kind === 'audio' ? `energy ${r.totalAudioEnergy?.toFixed(3)}` : `frames ${r.frames}`) : `packets ${r.packetsSent}`}`),
            ),
        ),
      }))
      .catch((e) => e.message);
    return `${this.name} (${this.id}): ${JSON.stringify(d)}`;
  }

  /** Fills in the name and presses Join (mouse). */
  async join() {
    const { page } = this;
    await page.getByLabel('Your name').fill(this.name);
    await page.getByRole('button', { name: 'Join' }).click();
    await this.inRoom();
  }

  async inRoom() {
    await this.page.locator('#room').waitFor({ state: 'visible', timeout: 20_000 });
    this.id = await waitFor(`${this.name} sees its own tile`, () =>
      this.page.evaluate(() => document.querySelector('#tiles li[aria-label*="(you)"]')?.dataset.participant),
    );
  }

  stats() {
    return this.page.evaluate(() => window.__veilTest.stats());
  }

  test() {
    return this.page.evaluate(() => {
      const t = window.__veilTest;
      const since = (at) => (t.joinAt !== null && at !== null ? Math.round(at - t.joinAt) : null);
      return {
        scriptTransforms: t.scriptTransforms,
        encodedStreams: t.encodedStreams,
        connected: since(t.connectedAt),
        iceChecking: since(t.iceCheckingAt),
        iceConnected: since(t.iceConnectedAt),
        firstPacket: since(t.firstPacketAt),
        firstFrame: since(t.firstFrameAt),
      };
    });
  }

  code() {
    return this.page.locator('#code').textContent();
  }

  tile(other) {
    return this.page.locator(`#tiles li[data-participant="${other.id}"]`);
  }

  /** Texts of the badges on `other`'s tile. */
  badges(other) {
    return this.tile(other).locator('.badge').allTextContents();
  }

  /** Video frames this person decoded from `other`, and the rest of its stats. */
  async from(other) {
    return (await this.stats())[other.id] ?? { video: { framesDecoded: 0, packets: 0, streams: 0 }, audio: { packets: 0, samples: 0, energy: 0, concealed: 0 } };
  }
}

/** `viewer` decodes `sender`'s video: framesDecoded > 0 and still rising. */
async function decodes(viewer, sender, limit = 20_000) {
  const first = await waitFor(`${viewer.name} decodes ${sender.name}'s video`, async () => {
    const s = await viewer.from(sender);
    return s.video.framesDecoded > 0 && s.video.framesDecoded;
  }, limit);
  return waitFor(`${viewer.name} keeps decoding ${sender.name}'s video (first ${first})`, async () => {
    const s = await viewer.from(sender);
    return s.video.framesDecoded > first + 10 && s.video.framesDecoded;
  }, 10_000);
}

/** `listener` receives and decodes `sender`'s audio: samples and energy rising. */
async function hears(listener, sender) {
  await waitFor(`${listener.name} hears ${sender.name} (decoded audio with energy)`, async () => {
    const s = await listener.from(sender);
    return s.audio.packets > 20 && s.audio.samples > 0 && s.audio.energy > 0;
  });
}

async function sameCode(people) {
  return waitFor(`${people.map((p) => p.name).join(', ')} show the same security code`, async () => {
    const codes = await Promise.all(people.map((p) => p.code()));
    const good = codes.every((c) => /^\d{4} \d{4} \d{4}$/.test(c)) && new Set(codes).size === 1;
    return good ? codes[0] : null;
  });
}

async function tileNames(person) {
  return person.page.locator('#tiles li .name').allTextContents();
}

// --- The run -------------------------------------------------------------------------------

async function run(veil, browser) {
  const { room } = await createRoom(veil);
  const secret = randomBytes(16).toString('base64url');
  const wrongSecret = randomBytes(16).toString('base64url');
  const link = `${veil.base}/r/${room}#${secret}`;
  ok('a meeting created by a signed-up, verified, logged-in host');

  // Ada opens the landing page and pastes the invite link.
  const ada = await Person.open(browser, veil.base, 'Ada');
  await ada.page.goto(`${veil.base}/`);
  // Without an account the landing page cannot create a meeting, and says why.
  await ada.page.getByRole('button', { name: 'Create a meeting' }).click();
  await waitFor('the landing page says creating needs a log-in', async () =>
    /log in/i.test(await ada.page.locator('#create-status').textContent()),
  );
  assert(new URL(ada.page.url()).pathname === '/', 'no meeting page without an account');
  await ada.page.getByLabel('Invite link').fill(link);
  await ada.page.getByRole('button', { name: 'Open' }).click();
  await ada.page.waitForURL((u) => u.pathname === `/r/${room}` && u.hash === `#${secret}`);
  ok('the landing page explains that creating needs a log-in, and opens an invite link, fragment kept');

  // Preview and device choice.
  await waitFor('the preview plays the camera', () =>
    ada.page.evaluate(() => document.getElementById('preview').videoWidth > 0),
  );
  const devices = await ada.page.evaluate(() =>
    ['camera', 'microphone'].map((id) => [...document.getElementById(id).options].map((o) => o.textContent)),
  );
  assert(devices[0].length >= 1 && devices[1].length >= 2, `devices listed: ${fmt(devices)}`);
  assert(devices.flat().every((label) => label.length > 0), 'every device has a label');
  const mics = await ada.page.evaluate(() => [...document.getElementById('microphone').options].map((o) => o.value));
  await ada.page.getByLabel('Microphone').selectOption(mics[1]);
  await waitFor('the preview uses the chosen microphone', () =>
    ada.page.evaluate(
      (want) => document.getElementById('preview').srcObject?.getAudioTracks()[0]?.getSettings().deviceId === want,
      mics[1],
    ),
  );
  ok(`preview plays; devices listed with labels (${devices[0].length} camera, ${devices[1].length} microphones); choosing one re-opens it`);

  await ada.join();
  ok('Ada joined');

  // Brook joins with the keyboard only: Tab through labelled fields, Enter on Join.
  const brook = await Person.open(browser, veil.base, 'Brook');
  await brook.page.goto(link);
  await waitFor('Brook sees the preview', () => brook.page.evaluate(() => document.getElementById('preview').videoWidth > 0));
  const focusOrder = [];
  await brook.page.keyboard.press('Tab');
  focusOrder.push(await brook.page.evaluate(() => document.activeElement.id));
  await brook.page.keyboard.type('Brook');
  for (let i = 0; i < 3; i++) {
    await brook.page.keyboard.press('Tab');
    focusOrder.push(await brook.page.evaluate(() => document.activeElement.id));
  }
  assert(fmt(focusOrder) === fmt(['display-name', 'camera', 'microphone', 'join']), `tab order ${fmt(focusOrder)}`);
  await brook.page.keyboard.press('Enter');
  await brook.inRoom();
  ok('Brook joined with the keyboard alone (name, camera, microphone, Join)');

  // 1. Two participants decode each other's video and audio; same security code.
  await decodes(brook, ada);
  await decodes(ada, brook);
  ok('Ada and Brook each decode the other\'s video (framesDecoded rising)');
  await hears(brook, ada);
  await hears(ada, brook);
  ok('Ada and Brook each receive and decode the other\'s audio');
  const code2 = await sameCode([ada, brook]);
  ok(`Ada and Brook show the same security code (${code2})`);
  const names = await tileNames(ada);
  assert(names.includes('Ada (you)') && names.includes('Brook'), `Ada's grid names: ${fmt(names)}`);
  ok('the grid shows names');

  // Controls. Focus is on "Mute microphone" after joining; Brook uses the keyboard.
  assert((await brook.page.evaluate(() => document.activeElement.id)) === 'mute', 'focus moves to the controls');
  await brook.page.keyboard.press('Space');
  assert((await brook.page.locator('#mute').getAttribute('aria-pressed')) === 'true', 'mute is pressed');
  await waitFor('Ada sees Brook muted', async () => (await ada.badges(brook)).includes('Muted'));
  await brook.page.keyboard.press('Space');
  await waitFor('Ada sees Brook unmuted', async () => !(await ada.badges(brook)).includes('Muted'));
  ok('mute with the keyboard: the other side sees the muted state come and go');

  await ada.page.getByRole('button', { name: 'Turn camera off' }).click();
  await waitFor('Brook sees Ada\'s camera off', async () => (await brook.badges(ada)).includes('Camera off'));
  await ada.page.getByRole('button', { name: 'Turn camera on' }).click();
  await waitFor('Brook sees Ada\'s camera on', async () => !(await brook.badges(ada)).includes('Camera off'));
  ok('camera off/on is shown to the other side');

  await waitFor('an active speaker is highlighted on Ada\'s screen', () =>
    ada.page.evaluate((id) => document.querySelector(`#tiles li[data-participant="${id}"]`)?.classList.contains('speaking'), brook.id),
  );
  ok('active speaker: Brook\'s tile is highlighted on Ada\'s screen (from decrypted audio levels)');

  await ada.page.getByRole('button', { name: 'Copy invite link' }).click();
  const copied = await ada.page.evaluate(() => navigator.clipboard.readText());
  assert(copied === link, `copied link ${copied}`);
  ok('copy invite link copies the full link, fragment included');

  // Screen share: the screen (fake: 1280x720, 16:9) replaces the camera (640x480, 4:3)
  // on Ada's one video; Brook decodes it, and the camera again after it stops.
  const aspect = (v) => v.width / v.height;
  const camera = await waitFor('Brook shows Ada\'s camera', async () => {
    const v = await tileVideo(brook, ada);
    return v.playing && Math.abs(aspect(v) - 4 / 3) < 0.05 && v;
  });
  await ada.page.getByRole('button', { name: 'Share screen' }).click();
  await waitFor('Brook sees Ada sharing', async () => (await brook.badges(ada)).includes('Sharing screen'));
  const screen = await waitFor('Brook\'s tile for Ada plays her screen', async () => {
    const v = await tileVideo(brook, ada);
    return v.playing && Math.abs(aspect(v) - 16 / 9) < 0.05 && v;
  });
  await ada.page.getByRole('button', { name: 'Stop sharing screen' }).click();
  await waitFor('Brook no longer sees Ada sharing', async () => !(await brook.badges(ada)).includes('Sharing screen'));
  await waitFor('Brook\'s tile for Ada plays her camera again', async () => {
    const v = await tileVideo(brook, ada);
    return v.playing && Math.abs(aspect(v) - 4 / 3) < 0.05 && v;
  });
  ok(`screen share reaches Brook decrypted (${camera.width}x${camera.height} camera, ${screen.width}x${screen.height} screen, camera again after)`);

  // 2. A third person with the right key: everyone decodes everyone; same code on three
  // screens. Cleo's page takes the createEncodedStreams path.
  const cleo = await Person.open(browser, veil.base, 'Cleo', { forceEncodedStreams: true });
  await cleo.page.goto(link);
  await cleo.join();
  await decodes(cleo, ada);
  await decodes(cleo, brook);
  await decodes(ada, cleo);
  await decodes(brook, cleo);
  await hears(ada, cleo);
  await hears(cleo, ada);
  const code3 = await sameCode([ada, brook, cleo]);
  assert(code3 !== code2, 'the code changes when someone joins');
  ok(`three people decode each other, Cleo through createEncodedStreams; one code on three screens (${code3})`);
  if (SCREENSHOT) {
    await waitFor('three playing tiles on Ada\'s screen', async () => {
      const playing = await ada.page.evaluate(() => [...document.querySelectorAll('#tiles video')].filter((v) => v.videoWidth > 0 && !v.paused).length);
      return playing === 3;
    });
    await ada.page.screenshot({ path: SCREENSHOT });
    ok(`screenshot of the three-person meeting: ${SCREENSHOT}`);
  }

  // Cleo leaves: her tile goes, the others rotate keys and keep decoding each other.
  await cleo.page.getByRole('button', { name: 'Leave' }).click();
  await cleo.page.locator('#ended').waitFor({ state: 'visible' });
  await waitFor('Cleo\'s tile is gone on Ada\'s and Brook\'s screens', async () =>
    (await ada.tile(cleo).count()) === 0 && (await brook.tile(cleo).count()) === 0,
  );
  const code2again = await sameCode([ada, brook]);
  assert(code2again === code2, 'after Cleo left, the code is the two-person one again');
  await sleep(2500); // past the 1 s switch to the rotated keys
  await decodes(ada, brook);
  await decodes(brook, ada);
  ok('Cleo left: her tile is gone, Ada and Brook still decode each other after the key rotation');

  // 3. Wrong key: Dan has the room id but another fragment.
  const dan = await Person.open(browser, veil.base, 'Dan');
  await dan.page.goto(`${veil.base}/r/${room}#${wrongSecret}`);
  await dan.join();
  await waitFor('Dan sees Ada and Brook', async () => (await dan.tile(ada).count()) === 1 && (await dan.tile(brook).count()) === 1);
  for (const [viewer, other] of [[dan, ada], [dan, brook], [ada, dan], [brook, dan]]) {
    await waitFor(`${viewer.name} shows ${other.name} as cannot decrypt`, async () => {
      const badge = viewer.tile(other).locator('.badge.undecryptable');
      return (await badge.count()) > 0 && (await badge.first().isVisible()) && /cannot decrypt/i.test(await badge.first().textContent());
    });
  }
  await waitFor('Dan\'s page says it cannot decrypt the meeting', () => dan.page.getByText(/cannot decrypt this meeting/i).isVisible());
  for (const p of [ada, brook]) {
    assert(!(await p.page.getByText(/cannot decrypt this meeting/i).isVisible()), `${p.name} does not show the warning`);
  }
  await waitFor('Dan receives the others\' media packets', async () => {
    const s = await dan.stats();
    return (s[ada.id]?.video.packets ?? 0) > 50 && (s[brook.id]?.video.packets ?? 0) > 50;
  });
  await sleep(2000);
  const danStats = await dan.stats();
  const danFrames = Object.values(danStats).reduce((n, s) => n + s.video.framesDecoded, 0);
  const danEnergy = Object.values(danStats).reduce((n, s) => n + s.audio.energy, 0);
  assert(danFrames === 0, `Dan decoded ${danFrames} frames`);
  assert(danEnergy === 0, `Dan decoded audio with energy ${danEnergy}`);
  const fromDan = [await ada.from(dan), await brook.from(dan)];
  assert(fromDan.every((s) => s.video.framesDecoded === 0), `the others decoded Dan: ${fmt(fromDan)}`);
  const [danCode, codeAB] = [await dan.code(), await sameCode([ada, brook])];
  assert(codeAB === code2 && danCode !== codeAB, `codes: Dan ${danCode}, Ada and Brook ${codeAB}`);
  await decodes(ada, brook);
  await decodes(brook, ada);
  await hears(ada, brook);
  ok('wrong key: Dan receives packets but decodes no frame and no audio, his tiles and page say "cannot decrypt", '
    + 'his code differs; Ada and Brook are unaffected (still decoding, code unchanged, Dan marked)');
  await dan.page.getByRole('button', { name: 'Leave' }).click();
  await waitFor('Dan\'s tile is gone', async () => (await ada.tile(dan).count()) === 0);

  // Reconnect: every WebSocket to Veil breaks at once (the kernel aborts the TCP
  // connections, as a network blip would); both pages resume as the same participants,
  // nobody sees anyone leave, and media (UDP, untouched) keeps being decoded.
  const before = { ada: ada.id, brook: brook.id, code: await sameCode([ada, brook]) };
  const dropped = dropConnections(veil);
  assert(dropped >= 2, `aborted ${dropped} connections`);
  await Promise.all(
    [ada, brook].map((p) => waitFor(`${p.name} shows the connection was lost`, () => p.page.getByText(/reconnecting/i).isVisible(), 10_000, 50)),
  );
  for (const p of [ada, brook]) {
    await waitFor(`${p.name} is connected again`, () => p.page.getByText(/^Connected/).isVisible(), 20_000);
    const own = await p.page.evaluate(() => document.querySelector('#tiles li[aria-label*="(you)"]')?.dataset.participant);
    assert(own === before[p.name.toLowerCase()], `${p.name} resumed as the same participant`);
  }
  assert((await ada.tile(brook).count()) === 1 && (await brook.tile(ada).count()) === 1, 'nobody saw a leave');
  assert((await sameCode([ada, brook])) === before.code, 'the security code is unchanged');
  await decodes(ada, brook);
  await decodes(brook, ada);
  ok(`reconnect: ${dropped} TCP connections aborted; both pages resumed as the same participants, same code, media decoded both ways`);

  // Timings and API, from the pages' own clocks.
  // Ada joined an empty meeting (her first frame waited for Brook), so the join times
  // are Brook's and Cleo's, who joined people already sending.
  const result = {};
  for (const p of [brook, cleo, ada]) result[p.name] = { ...(await p.test()), timed: p !== ada };
  return { result, people: [ada, brook, cleo, dan] };
}

/** What `viewer`'s tile for `other` shows: its video track, size, and whether it plays. */
async function tileVideo(viewer, other) {
  return viewer.page.evaluate(async (id) => {
    const v = document.querySelector(`#tiles li[data-participant="${id}"] video`);
    const track = v?.srcObject?.getVideoTracks()[0];
    const t0 = v?.currentTime;
    await new Promise((r) => setTimeout(r, 300));
    return {
      track: track?.id,
      playing: !!v && !v.paused && v.currentTime > t0 && v.videoWidth > 0,
      width: v?.videoWidth,
      height: v?.videoHeight,
    };
  }, other.id);
}

/** Aborts every TCP connection to Veil's HTTP port (`ss -K`); returns how many. */
function dropConnections(veil) {
  const port = new URL(veil.base).port;
  const out = execFileSync('ss', ['-K', '-tnH', 'state', 'established', 'dport', '=', `:${port}`], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.trim()).length;
}

/** What every person's page shows, one after the other, for a failure report. */
async function diagnose() {
  const out = [];
  for (const p of everyone) out.push(await p.diagnose().catch((e) => `${p.name}: ${e.message}`));
  return out;
}

async function main() {
  await runScript(
    { script: 'meeting.mjs', deadlineMs: DEADLINE_MS, consoleLines, diagnose },
    async (veil, browser, started) => {
      const { result, people } = await run(veil, browser);

      // 4. Only Veil's origin, no cookies.
      const origin = new URL(veil.base);
      const foreign = requests.filter(({ url }) => {
        const u = new URL(url);
        return u.host !== origin.host || !['http:', 'ws:'].includes(u.protocol);
      });
      assert(requests.length > 20, `requests were recorded (${requests.length})`);
      assert(foreign.length === 0, `requests to other origins: ${fmt(foreign)}`);
      assert(requests.some((r) => r.url.startsWith(`ws://${origin.host}/ws`)), 'the WebSocket was recorded');
      assert(requests.some((r) => r.url.endsWith('/assets/sframe.js')), 'the worker\'s import was recorded');
      ok(`every one of ${requests.length} requests (pages, scripts, worker, API, WebSocket) went to ${origin.host}`);
      assert(setCookies.length === 0, `responses set cookies: ${fmt(setCookies)}`);
      for (const p of people) {
        const jar = await p.context.cookies();
        assert(jar.length === 0, `${p.name} has cookies: ${fmt(jar)}`);
        if (!p.page.isClosed()) assert((await p.page.evaluate(() => document.cookie)) === '', `${p.name}: document.cookie`);
      }
      ok('no page set or received a cookie');
      assert(problems.length === 0, `uncaught errors in pages: ${fmt(problems)}`);
      ok('no uncaught error in any page');

      log('\nmeasured (printed, not asserted):');
      for (const [name, t] of Object.entries(result)) {
        const api = t.scriptTransforms > 0 ? 'RTCRtpScriptTransform' : t.encodedStreams > 0 ? 'createEncodedStreams' : 'none';
        const firstFrame = !t.timed
          ? 'not timed (joined an empty meeting)'
          : `${t.firstFrame ?? 'n/a'} ms (ICE checking ${t.iceChecking ?? 'n/a'} ms, ICE connected ${t.iceConnected ?? 'n/a'} ms, DTLS up ${t.connected ?? 'n/a'} ms, first video packet ${t.firstPacket ?? 'n/a'} ms)`;
        log(`  ${name}: join-to-first-decoded-frame ${firstFrame}; encoded transform API ${api} ` +
          `(${t.scriptTransforms} RTCRtpScriptTransform, ${t.encodedStreams} createEncodedStreams)`);
      }
      log(`  whole browser run: ${((Date.now() - started) / 1000).toFixed(1)} s, ${checkCount()} checks`);
    },
  );
}

main();
