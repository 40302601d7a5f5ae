//! Fault injection: the disk holding the accounts SQLite file fills up under a running
//! Veil. The database is put on a small tmpfs of its own (mounted by the test, which
//! runs as root), a filler file takes all but a little of it, and people sign up
//! through the real HTTP API until a sign-up no longer fits. The failing request must
//! get a clear 503 `unavailable` (never a panic, a hang or an internal message), the
//! refusal must be counted, everyone acknowledged before must stay whole and
//! readable, SQLite must find its file intact, and once space is freed sign-ups must
//! work again in the same process.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use common::{secs, temp_dir, test_config, within};

const PASSWORD: &str = "a long enough passphrase";
/// Room the sign-ups may use once the filler is in place: a handful of sign-ups.
const ROOM_LEFT: u64 = 256 * 1024;
/// Bound on the sign-ups it takes to fill that room (each writes several pages).
const MAX_SIGN_UPS: u32 = 200;
/// A request that takes longer than this is a hang, not a refusal.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// A tmpfs mounted on a fresh folder, unmounted when dropped, also when the test
/// fails. Mounting needs root (or CAP_SYS_ADMIN); without it the test fails and says
/// so, rather than passing without having filled anything.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = temp_dir("veil-disk-full");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount(8) for the disk-full test: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} for the disk-full test (it needs root or \
             CAP_SYS_ADMIN): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a failed test's Veil may hold the file open until the runtime
            // ends): detach now; the kernel frees it when the last file closes.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fills the file system of `path` completely with one file, then gives `leave` bytes
/// back, so exactly that much room is left for others.
fn fill_leaving(path: &Path, leave: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler file");
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("writing the filler: {e}"),
        }
    }
    let len = file.metadata().expect("filler size").len();
    assert!(
        len > leave,
        "the tmpfs was full before the filler ({len} bytes)"
    );
    file.set_len(len - leave).expect("shrink the filler");
}

/// A client from its own loopback address (127.0.9.n): the sign-up limits count per
/// address, and each person here stands for a different one.
fn person(n: u8) -> Client {
    Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 9, n)))
        .timeout(REQUEST_LIMIT)
        .build()
        .expect("client")
}

fn email(n: u8) -> String {
    format!("person{n}@example.org")
}

async fn sign_up(base: &str, n: u8) -> reqwest::Response {
    within(
        "a sign-up on a full disk",
        REQUEST_LIMIT,
        person(n)
            .post(format!("{base}/api/accounts"))
            .json(&json!({
                "email": email(n),
                "display_name": format!("Person {n}"),
                "password": PASSWORD,
                "age_confirmed": true,
                "accept_policy": true,
            }))
            .send(),
    )
    .await
    .expect("the sign-up gets an answer")
}

/// Follows the verification link of a signed-up account, logs in, returns the cookie.
async fn verify_and_log_in(base: &str, outbox: &Path, n: u8, account: &str) -> String {
    let http = person(n);
    let link =
        veil_accounts::mail::latest_link(outbox, account, veil_accounts::mail::Purpose::Verify)
            .unwrap_or_else(|| panic!("no verification mail for person {n}"));
    let token = link.rsplit_once('#').expect("fragment").1;
    let verified = http
        .post(format!("{base}/api/accounts/verify"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("verify");
    assert_eq!(verified.status(), StatusCode::OK, "verify person {n}");
    let login = http
        .post(format!("{base}/api/session"))
        .json(&json!({ "email": email(n), "password": PASSWORD }))
        .send()
        .await
        .expect("log in");
    assert_eq!(login.status(), StatusCode::OK, "log in person {n}");
    login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string()
}

/// The person's export; only its stored parts (the profile and the consents), which
/// must not change, are kept.
async fn stored_part_of_export(base: &str, n: u8, cookie: &str) -> Value {
    let response = person(n)
        .get(format!("{base}/api/account/export"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), StatusCode::OK, "export of person {n}");
    let export: Value = response.json().await.expect("export JSON");
    assert_eq!(export["profile"]["email"], email(n).as_str());
    json!({ "profile": export["profile"], "consents": export["consents"] })
}

async fn errors_counted(base: &str, reason: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let series = format!("veil_errors_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

async fn integrity(veil: &veil::Running) -> String {
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(veil.accounts.store.pool())
        .await
        .expect("integrity check runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sign_ups_cleanly_and_recovers() {
    // Declared first, so it is dropped (unmounted) last.
    let disk = Tmpfs::mount("4m");
    let mut config = test_config();
    // Only the database lives on the small disk; the outbox stays where it was.
    config.accounts.database_url = format!("sqlite://{}", disk.dir.join("veil.db").display());
    let veil = veil::start(&config).await.expect("start veil");
    let base = veil.base_url();
    let outbox = veil.accounts.outbox().expect("outbox");

    // People with accounts before the disk fills: their exports must survive it.
    let mut acknowledged: Vec<(u8, String)> = Vec::new();
    let mut before = Vec::new();
    for n in 1..=2u8 {
        let response = sign_up(&base, n).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let account: Value = response.json().await.expect("json");
        let account = account["account"].as_str().expect("id").to_string();
        let cookie = verify_and_log_in(&base, &outbox, n, &account).await;
        before.push((
            n,
            cookie.clone(),
            stored_part_of_export(&base, n, &cookie).await,
        ));
        acknowledged.push((n, account));
    }
    let unavailable_before = errors_counted(&base, "unavailable").await;

    let filler = disk.dir.join("filler");
    fill_leaving(&filler, ROOM_LEFT);
    let mut refused = None;
    for n in 10..10 + MAX_SIGN_UPS as u8 {
        let response = sign_up(&base, n).await;
        match response.status() {
            StatusCode::CREATED => {
                let body: Value = response.json().await.expect("json");
                acknowledged.push((n, body["account"].as_str().expect("id").to_string()));
            }
            status => {
                let body: Value = response.json().await.expect("a JSON error body");
                refused = Some((n, status, body));
                break;
            }
        }
    }
    let Some((refused_n, status, body)) = refused else {
        panic!("{MAX_SIGN_UPS} sign-ups fitted in {ROOM_LEFT} bytes: the disk never filled");
    };
    eprintln!(
        "disk full after {} sign-ups: {status} {body}",
        acknowledged.len() - 2
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(!message.is_empty());
    for internal in ["disk", "sqlite", "SQLITE", "INSERT", "error returned"] {
        assert!(
            !message.contains(internal),
            "internal detail in {message:?}"
        );
    }
    // Still full: refused again the same way, not hung and not a broken connection.
    let again = sign_up(&base, refused_n).await;
    assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        errors_counted(&base, "unavailable").await >= unavailable_before + 2.0,
        "the refusals are counted under reason=\"unavailable\""
    );
    // Reading needs no room: the people from before can still see and export their data.
    for (n, cookie, export) in &before {
        assert_eq!(&stored_part_of_export(&base, *n, cookie).await, export);
    }
    assert_eq!(integrity(&veil).await, "ok", "while the disk is full");

    // Room again, same process: sign-ups work, including the address that was refused
    // (its failed attempt stored nothing, so the address is free).
    std::fs::remove_file(&filler).expect("remove the filler");
    for n in [refused_n, refused_n + 1] {
        let response = sign_up(&base, n).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "sign-up {n} after freeing space"
        );
        let body: Value = response.json().await.expect("json");
        acknowledged.push((n, body["account"].as_str().expect("id").to_string()));
    }
    // Everyone acknowledged at any point is whole: verifies, logs in, exports.
    for (n, account) in &acknowledged {
        if *n <= 2 {
            continue;
        }
        let cookie = verify_and_log_in(&base, &outbox, *n, account).await;
        stored_part_of_export(&base, *n, &cookie).await;
    }
    for (n, cookie, export) in &before {
        assert_eq!(&stored_part_of_export(&base, *n, cookie).await, export);
    }
    assert_eq!(integrity(&veil).await, "ok", "after space was freed");
    let pool = veil.accounts.store.pool().clone();
    within("stop", secs(20), veil.stop()).await.expect("stop");
    // Closes the file, so the tmpfs unmounts at once rather than lazily.
    pool.close().await;
}
