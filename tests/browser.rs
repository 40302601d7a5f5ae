//! The web client in real headless Chromium: `web/e2e/meeting.mjs` run in a loopback-only
//! network namespace (see `common/browser.rs`). It checks that people decode each other's
//! encrypted video and audio and see one security code, that a wrong key in the link
//! decodes nothing and says so, that every request stays on Veil's origin and no page
//! gets a cookie, and the meeting page's controls. It prints the join-to-first-decoded-
//! frame times and the Encoded Transform API Chromium used (shown with `--nocapture`).

mod common;

use std::time::Duration;

use common::browser;

#[test]
fn meeting_in_headless_chromium() {
    if browser::skipped() {
        return;
    }
    browser::run_script(
        "meeting.mjs",
        &[],
        Duration::from_secs(240),
        &[
            "join-to-first-decoded-frame",
            "encoded transform API",
            "no page set or received a cookie",
        ],
    );
}
