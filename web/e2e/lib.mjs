// What the browser scripts share (meeting.mjs, member.mjs, accounts.mjs): starting `veil`
// and creating a meeting as a signed-up host, the links Veil mails (its outbox folder),
// serving web/ from disk while working on it (VEIL_E2E_WEB_DIR), the Chromium flags, the
// in-page instrumentation, a person with one page, and the harness that runs a script
// under a deadline, prints diagnosis on failure and always stops Chromium and `veil`. Run the scripts only inside a network
// namespace of their own (see meeting.mjs).

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const VEIL_BIN = process.env.VEIL_BIN;
const CHROMIUM = process.env.VEIL_CHROMIUM || '/usr/bin/chromium';


// The flags from docs (FIELD-NOTES "Browser"): fake camera, microphone and screen, no
// permission prompts, nothing from the network but what the pages ask for. Playwright
// gives every launch a fresh temporary profile (its own --user-data-dir) and every
// participant below gets a separate browser context (own storage, cookies, permissions).
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  // Without it, in a loopback-only namespace, Chromium gathers no ICE candidates at all.
  '--allow-loopback-in-peer-connection',
];

export const log = (...a) => console.log(...a);
let checks = 0;
/** How many checks passed so far. */
export const checkCount = () => checks;
export function ok(what) {
  checks += 1;
  log(`ok ${checks} - ${what}`);
}
export class CheckFailed extends Error {}
export function assert(cond, what) {
  if (!cond) throw new CheckFailed(what);
}
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; fails with `what` after `limit` ms. */
export async function waitFor(what, fn, limit = 20_000, every = 200) {
  const end = Date.now() + limit;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new CheckFailed(`timed out after ${limit} ms: ${what} (last: ${fmt(last)})`);
    await sleep(every);
  }
}
export const fmt = (v) => (v instanceof Error ? v.message : JSON.stringify(v));

// --- Environment -----------------------------------------------------------------------

export function onlyLoopback() {
  const names = Object.keys(os.networkInterfaces());
  return names.every((n) => n === 'lo');
}

export async function freeTcpPort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

export async function freeUdpPort() {
  const sock = dgram.createSocket('udp4');
  await new Promise((r) => sock.bind(0, '127.0.0.1', r));
  const { port } = sock.address();
  await new Promise((r) => sock.close(r));
  return port;
}

/**
 * Starts the all-in-one `veil` with its data (SQLite, outbox) in `dir`. `kill()` ends it
 * the hard way (SIGKILL); `start()` starts it again on the same ports with the same data.
 */
export async function startVeil(dir) {
  const veil = { dir, http: await freeTcpPort(), media: await freeUdpPort(), out: [] };
  veil.base = `http://127.0.0.1:${veil.http}`;
  veil.output = () => Buffer.concat(veil.out).toString();
  veil.kill = async () => {
    veil.child.kill('SIGKILL');
    await veil.exited;
  };
  veil.start = () => launch(veil);
  await launch(veil);
  return veil;
}

async function launch(veil) {
  const child = spawn(VEIL_BIN, [], {
    cwd: veil.dir,
    env: { ...process.env, VEIL_HTTP_ADDR: `127.0.0.1:${veil.http}`, VEIL_MEDIA_ADDR: `127.0.0.1:${veil.media}`, VEIL_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => veil.out.push(d));
  child.stderr.on('data', (d) => veil.out.push(d));
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  veil.child = child;
  veil.exited = exited;
  await waitFor('veil answers /healthz', async () => {
    const state = await Promise.race([exited, sleep(0).then(() => null)]);
    if (state) throw new Error(`veil exited early (${fmt(state)})`);
    const res = await fetch(`${veil.base}/healthz`);
    return res.ok;
  }, 30_000, 100);
}

// --- Mail -------------------------------------------------------------------------------------

/**
 * The link in the newest mail in `veil`'s outbox whose file name ends with `suffix` and
 * whose text includes `text` (e.g. the address it was sent to), once it is there.
 */
export async function mailedLink(veil, suffix, text = '') {
  const outbox = path.join(veil.dir, 'data', 'outbox');
  return waitFor(`a mail *${suffix} in the outbox`, () => {
    if (!fs.existsSync(outbox)) return null;
    const mails = fs
      .readdirSync(outbox)
      .filter((f) => f.endsWith(suffix))
      .sort()
      .map((f) => fs.readFileSync(path.join(outbox, f), 'utf8'))
      .filter((m) => m.includes(text));
    return mails.pop()?.split(/\s+/).find((w) => /^https?:\/\//.test(w));
  }, 10_000);
}

// --- Working on web/ --------------------------------------------------------------------------

/** Which file of web/ a page's path is. */
const PAGE_FILES = { '/': 'index.html', '/signup': 'signup.html', '/login': 'login.html', '/verify': 'verify.html', '/reset': 'reset.html', '/account': 'account.html' };

/**
 * While changing web/ (VEIL_E2E_WEB_DIR=web): serves the pages and scripts from that
 * folder instead of the copies built into the binary (same response headers), to skip
 * a rebuild per change.
 */
export async function serveWebDir(context) {
  const dir = process.env.VEIL_E2E_WEB_DIR;
  if (!dir) return;
  const ours = (u) => u.pathname in PAGE_FILES || /^\/(assets|r)\/[^/]+$/.test(u.pathname);
  await context.route(ours, async (route) => {
    const u = new URL(route.request().url());
    const file = PAGE_FILES[u.pathname] ?? (u.pathname.startsWith('/r/') ? 'meeting.html' : u.pathname.slice(8));
    let response = await route.fetch();
    // A file the binary does not have yet: the headers of one it has.
    if (response.status() === 404) {
      const like = file.endsWith('.html') ? '/' : '/assets/keys.js';
      response = await route.fetch({ url: new URL(like, u).href });
    }
    route.fulfill({ response, body: fs.readFileSync(path.join(dir, file)) });
  });
}

// --- Room creation ------------------------------------------------------------------------

/**
 * Creates a meeting the way its host would and returns {room, hostKey}. Creating needs a
 * logged-in account with an active trial: sign up, open the verification link (Veil's
 * outbox folder, since no SMTP relay is configured), log in, POST /api/rooms with the
 * session cookie. All of it happens here, outside the browser, so the pages under test
 * never hold a cookie.
 */
export async function createRoom(veil) {
  let res = await fetch(`${veil.base}/api/rooms`, { method: 'POST' });
  if (res.status === 401) {
    const cookie = await hostSession(veil);
    res = await fetch(`${veil.base}/api/rooms`, { method: 'POST', headers: { cookie } });
  }
  const body = await res.json();
  assert(res.status === 201 && typeof body.room === 'string', `POST /api/rooms: ${res.status} ${fmt(body)}`);
  return { room: body.room, hostKey: body.host_key };
}

export async function hostSession(veil) {
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
export function instrument({ forceEncodedStreams, debugSdp }) {
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

export const requests = []; // {who, url}
export const setCookies = []; // {who, url}
export const problems = []; // uncaught page errors
export const consoleLines = [];
export const everyone = []; // for the diagnosis printed on failure

export class Person {
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
export async function decodes(viewer, sender, limit = 20_000) {
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
export async function hears(listener, sender) {
  await waitFor(`${listener.name} hears ${sender.name} (decoded audio with energy)`, async () => {
    const s = await listener.from(sender);
    return s.audio.packets > 20 && s.audio.samples > 0 && s.audio.energy > 0;
  });
}

export async function sameCode(people) {
  return waitFor(`${people.map((p) => p.name).join(', ')} show the same security code`, async () => {
    const codes = await Promise.all(people.map((p) => p.code()));
    const good = codes.every((c) => /^\d{4} \d{4} \d{4}$/.test(c)) && new Set(codes).size === 1;
    return good ? codes[0] : null;
  });
}


// --- Harness ---------------------------------------------------------------------------------

/** Functions to run when the script ends, pass or fail (e.g. stopping a helper process). */
export const cleanups = [];

/**
 * Starts `veil` and Chromium, runs `body({veil, browser, started, dir})` and exits: 0 when
 * it returned, 1 on the first failed check or after `deadlineMs`, printing the failure,
 * the pages' console, what each page showed and Veil's log.
 */
export async function harness(name, deadlineMs, body) {
  assert(VEIL_BIN && fs.existsSync(VEIL_BIN), 'VEIL_BIN must name the veil binary');
  if (!onlyLoopback() && process.env.VEIL_E2E_ANY_NETWORK !== '1') {
    throw new CheckFailed(
      `run this inside its own network namespace (found interfaces ${Object.keys(os.networkInterfaces())}): ` +
        `unshare -n sh -c 'ip link set lo up && node web/e2e/${name}'`,
    );
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'veil-e2e-'));
  const started = Date.now();
  let veil = null;
  let browser = null;
  let failed = null;
  const deadline = setTimeout(() => {
    failed ??= new CheckFailed(`the browser tests took longer than ${deadlineMs} ms`);
    cleanup().finally(() => report());
  }, deadlineMs);
  const diagnosis = [];
  async function cleanup() {
    if (failed) for (const p of everyone) diagnosis.push(await p.diagnose().catch((e) => `${p.name}: ${e.message}`));
    for (const f of cleanups.splice(0)) await Promise.resolve().then(f).catch(() => {});
    if (browser) await browser.close().catch(() => {});
    browser = null;
    if (veil && veil.child.exitCode === null) {
      veil.child.kill('SIGTERM');
      await Promise.race([veil.exited, sleep(5000)]);
      if (veil.child.exitCode === null) veil.child.kill('SIGKILL');
    }
  }
  function report() {
    if (failed) {
      console.error(`\nnot ok - ${failed.message}`);
      if (!(failed instanceof CheckFailed)) console.error(failed.stack);
      console.error('\n--- page console (last 80 lines) ---\n' + consoleLines.slice(-80).join('\n'));
      console.error('\n--- pages ---\n' + diagnosis.join('\n'));
      console.error('\n--- veil log (last 60 lines) ---\n' + (veil?.output() ?? '').split('\n').slice(-60).join('\n'));
      process.exit(1);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  }
  try {
    veil = await startVeil(dir);
    ok(`veil started (${veil.base})`);
    // Pages fulfilled by a route (VEIL_E2E_WEB_DIR) have no address, so Chromium counts
    // them as public and its Local Network Access checks would block their loopback
    // WebSocket; pages served by Veil itself never need this.
    const devArgs = process.env.VEIL_E2E_WEB_DIR ? ['--disable-features=LocalNetworkAccessChecks'] : [];
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...devArgs] });
    ok(`Chromium ${browser.version()} started`);
    await body({ veil, browser, started, dir });
  } catch (e) {
    failed ??= e;
  }
  clearTimeout(deadline);
  await cleanup();
  report();
}
