//! Running one of `web/e2e/*.mjs` (playwright-core) in real headless Chromium, inside a
//! network namespace of its own where loopback is the only interface, so that Chromium's
//! WebRTC reaches nothing but this machine. The script starts the `veil` binary built for
//! the tests (`VEIL_BIN`) and Chromium itself.
//!
//! Needs: `chromium` (`/usr/bin/chromium`, or `VEIL_CHROMIUM`), node ≥ 20, `npm ci` done
//! in `web/e2e`, and root for `unshare -n` (scripts/test.sh sees to the first three).
//! `VEIL_SKIP_BROWSER_TESTS=1` skips them, saying so.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a browser script printed on standard output.
pub struct ScriptRun {
    pub stdout: String,
}

/// Whether browser tests are switched off for this run (said on stderr).
pub fn skipped() -> bool {
    let skip = std::env::var_os("VEIL_SKIP_BROWSER_TESTS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("browser tests skipped: VEIL_SKIP_BROWSER_TESTS=1");
    }
    skip
}

/// Runs `web/e2e/<script>` with `env` added, killing it and everything it started after
/// `limit`; fails unless it exits 0 and printed every line of `must_print` (a script that
/// exits 0 without reaching its end would not print them).
pub fn run_script(
    script: &str,
    env: &[(&str, &str)],
    limit: Duration,
    must_print: &[&str],
) -> ScriptRun {
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

    let mut command = Command::new("unshare");
    command
        .args([
            "-n",
            "sh",
            "-c",
            &format!("ip link set lo up && exec node web/e2e/{script}"),
        ])
        .current_dir(root)
        .env("VEIL_BIN", env!("CARGO_BIN_EXE_veil"))
        .env("VEIL_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("run `unshare -n … node web/e2e/{script}` (needs root and util-linux): {e}")
    });
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the browser script") {
            break Some(status);
        }
        if started.elapsed() > limit {
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
    let status = status.unwrap_or_else(|| panic!("{script} ran past {limit:?}"));
    assert!(status.success(), "{script} failed ({status})");
    for line in must_print {
        assert!(out.contains(line), "{script} printed no {line:?}");
    }
    ScriptRun { stdout: out }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
