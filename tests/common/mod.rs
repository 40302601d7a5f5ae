//! What the end-to-end tests share: a Veil on ephemeral loopback ports and patient
//! waiting for conditions (bounded, so a broken build fails instead of hanging).

#![allow(dead_code)]

pub mod browser;
pub mod ws;

use std::future::Future;
use std::time::{Duration, Instant};

use veil::{Config, Running};
use veil_bench::participant::{Participant, ParticipantConfig, RemoteTrackStats, VideoConfig};

/// Starts an all-in-one Veil on free loopback ports, its accounts in a fresh SQLite
/// file (and its outbox) under a temporary folder.
pub async fn start_veil() -> Running {
    veil::start(&test_config()).await.expect("start veil")
}

pub fn test_config() -> Config {
    let mut config = Config::default();
    config.signaling.http_addr = "127.0.0.1:0".parse().expect("addr");
    config.sfu.media_addr = "127.0.0.1:0".parse().expect("addr");
    config.sfu.connect_timeout = Duration::from_secs(10);
    let dir = temp_dir("veil-test");
    config.accounts.database_url = format!("sqlite://{}", dir.join("veil.db").display());
    config.accounts.mail.outbox_dir = dir.join("outbox");
    config
}

/// A fresh, empty folder under the system's temporary directory.
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A room created directly in the directory (over HTTP it needs an account: see
/// [`host_cookie`]).
pub fn new_room(veil: &Running) -> String {
    veil.signaling
        .rooms
        .create(Instant::now(), None)
        .expect("create room")
        .room
}

/// Signs up at `base` as a new person would (the verification link read from the
/// `outbox`), logs in, and returns the session cookie as `name=value`.
pub async fn host_cookie(base: &str, outbox: &std::path::Path, email: &str) -> String {
    let client = reqwest::Client::new();
    let password = "a long enough passphrase";
    let signed: serde_json::Value = client
        .post(format!("{base}/api/accounts"))
        .json(&serde_json::json!({
            "email": email,
            "display_name": "Host",
            "password": password,
            "age_confirmed": true,
            "accept_policy": true,
        }))
        .send()
        .await
        .expect("sign up")
        .json()
        .await
        .expect("json");
    let account = signed["account"].as_str().expect("account id").to_string();
    let link =
        veil_accounts::mail::latest_link(outbox, &account, veil_accounts::mail::Purpose::Verify)
            .expect("verification mail");
    let token = link.rsplit_once('#').expect("fragment").1;
    let verified = client
        .post(format!("{base}/api/accounts/verify"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .expect("verify");
    assert!(verified.status().is_success(), "{}", verified.status());
    let login = client
        .post(format!("{base}/api/session"))
        .json(&serde_json::json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("log in");
    assert!(login.status().is_success(), "{}", login.status());
    let set = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    set.split(';').next().expect("name=value").to_string()
}

/// A fresh PostgreSQL database on the test server; returns (url, name).
pub async fn fresh_postgres(prefix: &str) -> (String, String) {
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
    );
    postgres_admin(&format!("CREATE DATABASE {name}")).await;
    (format!("postgres://postgres@127.0.0.1:5432/{name}"), name)
}

pub async fn drop_postgres(name: &str) {
    postgres_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

async fn postgres_admin(sql: &str) {
    use sqlx::Connection;
    let url = std::env::var("VEIL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (the test command starts it)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

pub fn participant(veil: &Running, room: &str, name: &str) -> ParticipantConfig {
    ParticipantConfig::new(&veil.base_url(), room, name)
}

/// A small camera (15 fps, 150 kbit/s, a key frame every 2 s) for end-to-end encryption
/// tests, where frames only need to decrypt, not to load the SFU.
pub fn small_camera() -> VideoConfig {
    VideoConfig {
        fps: 15,
        bitrate_bps: 150_000,
        keyframe_interval: Duration::from_secs(2),
        simulcast: false,
    }
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until(what: &str, limit: Duration, check: impl FnMut() -> bool) {
    wait_until_explained(what, limit, check, String::new).await;
}

/// [`wait_until`], with `explain()` (the state that should have changed) in the panic.
pub async fn wait_until_explained(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                explain()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut` at most `limit`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// The received tracks published by `publisher`.
pub fn tracks_from(p: &Participant, publisher: &str) -> Vec<RemoteTrackStats> {
    p.received()
        .into_iter()
        .filter(|t| t.publisher == publisher)
        .collect()
}

/// Packets received from `publisher`'s live tracks.
pub fn packets_from(p: &Participant, publisher: &str) -> u64 {
    tracks_from(p, publisher)
        .iter()
        .filter(|t| !t.ended)
        .map(|t| t.packets)
        .sum()
}

/// True when `p` receives audio and video from `publisher`, at least `min` packets each.
pub fn receives_av_from(p: &Participant, publisher: &str, min: u64) -> bool {
    use veil_bench::payload::Kind;
    let tracks = tracks_from(p, publisher);
    let has = |kind: Kind| {
        tracks
            .iter()
            .any(|t| !t.ended && t.kind == Some(kind) && t.packets >= min)
    };
    has(Kind::Audio) && has(Kind::Video)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
