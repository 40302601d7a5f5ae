//! The account pages in real headless Chromium: `web/e2e/accounts.mjs` run in a
//! loopback-only network namespace (see `common/browser.rs`). A new person signs up
//! through the form, confirms the address with the mailed `/verify#…` link, logs in with
//! the keyboard alone, corrects the display name, downloads the export, withdraws the
//! survey opt-in, changes the e-mail address through the link mailed to the new one,
//! starts a meeting from the landing page, resets a forgotten password
//! through the mailed `/reset#…` link, closes the account and is refused at log-in. The
//! script also checks the one cookie (HttpOnly, SameSite=Lax), that every request stays on
//! Veil's origin, that tokens leave the address bar, that every control has an accessible
//! name, and that API refusals (a 429's Retry-After too) are said in a live region.

mod common;

use std::time::Duration;

use common::browser;

#[test]
fn account_pages_in_headless_chromium() {
    if browser::skipped() {
        return;
    }
    browser::run_script(
        "accounts.mjs",
        &[],
        Duration::from_secs(90),
        &[
            "logged in with the keyboard alone",
            "the export downloads as veil-account-export.json",
            "log-in is refused with \"This account is closed.\"",
            "the only cookie ever set",
            "account pages: every check passed",
        ],
    );
}
