// What the browser scripts in this folder share: checks that stop the run on the first
// failure, polling, Chromium's flags, starting the all-in-one `veil` (VEIL_BIN) with its
// data in a folder of the script's, the links Veil mails (its outbox folder, since no
// SMTP relay is configured), and serving web/ from disk while working on it.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const VEIL_BIN = process.env.VEIL_BIN;
export const CHROMIUM = process.env.VEIL_CHROMIUM || '/usr/bin/chromium';

// The flags from docs (FIELD-NOTES "Browser"): fake camera, microphone and screen, no
// permission prompts, nothing from the network but what the pages ask for. Playwright
// gives every launch a fresh temporary profile (its own --user-data-dir) and every
// participant gets a separate browser context (own storage, cookies, permissions).
export const CHROMIUM_ARGS = [
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

/** How many checks passed so far. */
export const checkCount = () => checks;

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

/** Starts the all-in-one `veil` with its data (SQLite, outbox) in `dir`. */
export async function startVeil(dir) {
  const http = await freeTcpPort();
  const media = await freeUdpPort();
  const out = [];
  const child = spawn(VEIL_BIN, [], {
    cwd: dir,
    env: { ...process.env, VEIL_HTTP_ADDR: `127.0.0.1:${http}`, VEIL_MEDIA_ADDR: `127.0.0.1:${media}`, VEIL_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => out.push(d));
  child.stderr.on('data', (d) => out.push(d));
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const base = `http://127.0.0.1:${http}`;
  await waitFor('veil answers /healthz', async () => {
    const state = await Promise.race([exited, sleep(0).then(() => null)]);
    if (state) throw new Error(`veil exited early (${fmt(state)})`);
    const res = await fetch(`${base}/healthz`);
    return res.ok;
  }, 30_000, 100);
  return { base, dir, child, exited, output: () => Buffer.concat(out).toString() };
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

// --- One run ------------------------------------------------------------------------------

/**
 * Runs `body(veil, browser, started)` against a fresh `veil` (data in a temporary folder)
 * and Chromium, in a loopback-only network namespace, within `deadlineMs`. Exits 0 when
 * every check passed; otherwise prints the failure, the pages' console (`consoleLines`),
 * what `diagnose()` (a promise of strings) says about the pages and Veil's log, and exits 1.
 */
export async function runScript({ script, deadlineMs, consoleLines, diagnose }, body) {
  assert(VEIL_BIN && fs.existsSync(VEIL_BIN), 'VEIL_BIN must name the veil binary');
  if (!onlyLoopback() && process.env.VEIL_E2E_ANY_NETWORK !== '1') {
    throw new CheckFailed(
      `run this inside its own network namespace (found interfaces ${Object.keys(os.networkInterfaces())}): ` +
        `unshare -n sh -c 'ip link set lo up && node web/e2e/${script}'`,
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
    if (failed) diagnosis.push(...(await diagnose().catch((e) => [e.message])));
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
    await body(veil, browser, started);
  } catch (e) {
    failed ??= e;
  }
  clearTimeout(deadline);
  await cleanup();
  report();
}
