// A meeting outlives a crash of Veil: two people in an end-to-end encrypted meeting, Veil
// killed with SIGKILL and started again on the same address with the same data. The pages
// notice, say so, and come back by themselves (a resume is no longer possible, so each
// joins again by its link as a new participant); they decode each other again under one
// security code (the host's page rejoins with its host key, which still fits), and the
// host's account and session are intact.
//
// Run like meeting.mjs, inside a network namespace of its own (`cargo test --test
// browser_restart` does): VEIL_BIN (required) the veil binary; VEIL_CHROMIUM.
//
// Printed, never asserted: how long from the kill until both decode each other again.

import { randomBytes } from 'node:crypto';

import { Person, assert, checkCount, decodes, harness, hostSession, log, ok, sameCode, waitFor } from './lib.mjs';

/** The export minus what changes by merely looking (its time, the session's last use). */
function stable(exported) {
  const { exported_at: _, ...rest } = exported;
  rest.sessions = rest.sessions.map(({ last_seen_at: __, ...s }) => s);
  return JSON.stringify(rest);
}

async function exportOf(veil, cookie) {
  const res = await fetch(`${veil.base}/api/account/export`, { headers: { cookie } });
  assert(res.ok, `export: ${res.status}`);
  return res.json();
}

/** Waits until `p`'s page is in the meeting under a participant id other than before. */
async function rejoined(p) {
  const old = p.id;
  p.id = await waitFor(
    `${p.name} is back in the meeting`,
    () =>
      p.page.evaluate((old) => {
        const id = document.querySelector('#tiles li[aria-label*="(you)"]')?.dataset.participant;
        return id && id !== old ? id : null;
      }, old),
    60_000,
  );
}

await harness('restart.mjs', 240_000, async ({ veil, browser }) => {
  const cookie = await hostSession(veil);
  const created = await fetch(`${veil.base}/api/rooms`, { method: 'POST', headers: { cookie } });
  const { room, host_key: hostKey } = await created.json();
  assert(created.status === 201 && room, `POST /api/rooms: ${created.status}`);
  const secret = randomBytes(16).toString('base64url');
  const link = `${veil.base}/r/${room}#${secret}`;

  const ada = await Person.open(browser, veil.base, 'Ada');
  // The host's page holds the host key, as the landing page leaves it after creating.
  await ada.page.goto(`${veil.base}/`);
  await ada.page.evaluate(([room, key]) => sessionStorage.setItem(`veil-host:${room}`, key), [room, hostKey]);
  await ada.page.goto(link);
  await ada.join();
  const brook = await Person.open(browser, veil.base, 'Brook');
  await brook.page.goto(link);
  await brook.join();
  await decodes(ada, brook);
  await decodes(brook, ada);
  await sameCode([ada, brook]);
  ok('Ada and Brook decode each other under one security code');
  const before = await exportOf(veil, cookie);

  await veil.kill();
  const killed = Date.now();
  ok('veil killed with SIGKILL mid-meeting');
  for (const p of [ada, brook]) {
    await waitFor(`${p.name}'s page says it is reconnecting`, async () =>
      /Reconnecting/.test((await p.page.locator('#status').textContent()) ?? ''),
    );
  }
  ok('both pages say they are reconnecting');

  await veil.start();
  ok('veil started again on the same address with the same data');
  await rejoined(ada);
  await rejoined(brook);
  await decodes(ada, brook);
  await decodes(brook, ada);
  const code = await sameCode([ada, brook]);
  log(`restart: SIGKILL → both decode each other again in ${Date.now() - killed} ms (security code ${code})`);
  ok('the pages came back by themselves and decode each other again under one security code');
  assert(stable(await exportOf(veil, cookie)) === stable(before), 'the host account changed across the restart');
  ok('the host is still logged in and the account export is unchanged');

  log(`restart: every check passed (${checkCount()} checks)`);
});
