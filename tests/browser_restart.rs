//! A meeting outlives a crash of Veil, in real headless Chromium: `web/e2e/restart.mjs`
//! run in a loopback-only network namespace (see `common/browser.rs`). Two people in an
//! encrypted meeting; `veil` killed with SIGKILL and started again on the same address
//! with the same data; the pages notice, come back by themselves and decode each other
//! again under one security code; the host's session and account export are unchanged.
//! It prints how long the pages took to decode each other again after the kill.

mod common;

use std::time::Duration;

use common::browser;

#[test]
fn meeting_comes_back_after_veil_is_killed() {
    if browser::skipped() {
        return;
    }
    browser::run_script(
        "restart.mjs",
        &[],
        Duration::from_secs(240),
        &[
            "both pages say they are reconnecting",
            "the pages came back by themselves",
            "the account export is unchanged",
            "restart: every check passed",
        ],
    );
}
