//! The web client in real headless Chromium: `web/e2e/meeting.mjs` (playwright-core)
//! run inside a network namespace of its own, where loopback is the only interface, so
//! that Chromium's WebRTC reaches nothing but this machine. The script starts the `veil`
//! binary built for this test and Chromium itself; it checks that people decode each
//! other's encrypted video and audio and see one security code, that a wrong key in the
//! link decodes nothing and says so, that every request stays on Veil's origin and no
//! page gets a cookie, and the meeting page's controls. It prints the join-to-first-
//! decoded-frame times and the Encoded Transform API Chromium used (shown with
//! `--nocapture`).
//!
//! Needs: `chromium` (`/usr/bin/chromium`, or `VEIL_CHROMIUM`), node ≥ 20, `npm ci` done
//! in `web/e2e`, and root for `unshare -n` (scripts/test.sh sees to the first three).
//! `VEIL_SKIP_BROWSER_TESTS=1` skips it, saying so.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The script stops itself well before this; past it, everything it started is killed.
const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn meeting_in_headless_chromium() {
    if std::env::var_os("VEIL_SKIP_BROWSER_TESTS").is_some_and(|v| v == "1") {
        eprintln!("browser tests skipped: VEIL_SKIP_BROWSER_TESTS=1");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("VEIL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: `apt-get install -y chromium` (scripts/test.sh does it)"
    );
    assert!(
        root.join("web/e2e/node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: `npm ci` in web/e2e (scripts/test.sh does it)"
    );

    let mut child = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && exec node web/e2e/meeting.mjs",
        ])
        .current_dir(root)
        .env("VEIL_BIN", env!("CARGO_BIN_EXE_veil"))
        .env("VEIL_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run `unshare -n … node web/e2e/meeting.mjs` (needs root and util-linux)");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the browser tests") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            // The whole group: node, veil and Chromium.
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = stdout.join().expect("stdout reader");
    let err = stderr.join().expect("stderr reader");
    println!("{out}");
    if !err.is_empty() {
        eprintln!("{err}");
    }
    let status = status.unwrap_or_else(|| panic!("the browser tests ran past {LIMIT:?}"));
    assert!(status.success(), "the browser tests failed ({status})");
    // A script that exits 0 without reaching its end would not print these.
    for line in [
        "join-to-first-decoded-frame",
        "encoded transform API",
        "no page set or received a cookie",
    ] {
        assert!(out.contains(line), "the browser tests printed no {line:?}");
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
