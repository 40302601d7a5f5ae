//! What the end-to-end tests share: a Veil on ephemeral loopback ports and patient
//! waiting for conditions (bounded, so a broken build fails instead of hanging).

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use veil::{Config, Running};
use veil_bench::participant::{Participant, ParticipantConfig, RemoteTrackStats};

/// Starts an all-in-one Veil on free loopback ports.
pub async fn start_veil() -> Running {
    let mut config = Config::default();
    config.signaling.http_addr = "127.0.0.1:0".parse().expect("addr");
    config.sfu.media_addr = "127.0.0.1:0".parse().expect("addr");
    config.sfu.connect_timeout = Duration::from_secs(10);
    veil::start(&config).await.expect("start veil")
}

/// A room created directly in the directory (room creation over HTTP needs an account).
pub fn new_room(veil: &Running) -> String {
    veil.signaling
        .rooms
        .create(Instant::now())
        .expect("create room")
        .room
}

pub fn participant(veil: &Running, room: &str, name: &str) -> ParticipantConfig {
    ParticipantConfig::new(&veil.base_url(), room, name)
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
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
