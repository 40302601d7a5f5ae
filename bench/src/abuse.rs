//! The abuse measurement: runs each attack of `tests/abuse.rs` against an in-process
//! Veil for a window while a well-behaved pair of members measures the round trip of a
//! cheap request (one sends `state`, the other hears `participant_state`), and tallies
//! what the attack's requests were answered with.
//!
//! Must never: point anything but loopback, or run without a bound: every phase has a
//! window and every wait a timeout.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use veil_sfu::grant::Grant;
use veil_signaling::Signaling;
use veil_signaling::message::{MAX_BLOB_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES};

use crate::histogram::LatencyHistogram;
use crate::participant::{
    ParticipantConfig, ParticipantError, WsStream, open_socket, request_grant,
};

#[derive(Debug, thiserror::Error)]
pub enum AbuseError {
    #[error("join: {0}")]
    Join(#[from] ParticipantError),
    #[error("WebSocket: {0}")]
    WebSocket(String),
    #[error("the well-behaved client got no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("room: {0}")]
    Room(String),
}

/// One attack (or none, for the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    Baseline,
    IdleFlood,
    SlowReader,
    HugeMessages,
    ExpiredGrants,
    LoginGuessing,
    SignUpFlood,
}

impl Attack {
    pub const ALL: [Attack; 7] = [
        Attack::Baseline,
        Attack::IdleFlood,
        Attack::SlowReader,
        Attack::HugeMessages,
        Attack::ExpiredGrants,
        Attack::LoginGuessing,
        Attack::SignUpFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::Baseline => "baseline",
            Attack::IdleFlood => "idle-flood",
            Attack::SlowReader => "slow-reader",
            Attack::HugeMessages => "huge-messages",
            Attack::ExpiredGrants => "expired-grants",
            Attack::LoginGuessing => "login-guessing",
            Attack::SignUpFlood => "signup-flood",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Attack::Baseline => "no attack",
            Attack::IdleFlood => {
                "WebSockets opened from one address and held without a join (up to 500)"
            }
            Attack::SlowReader => {
                "a member that never reads, 8 members sending it 16 KiB blobs, a new one each second"
            }
            Attack::HugeMessages => {
                "512 KiB + 1 messages at the message quota, and a 1 MiB + 1 frame every 10th"
            }
            Attack::ExpiredGrants => "joins with an expired grant, back to back",
            Attack::LoginGuessing => {
                "4 loops of wrong-password log-ins, each from the next of 250 addresses, new e-mail each"
            }
            Attack::SignUpFlood => "sign-ups from one address, back to back",
        }
    }
}

/// Idle sockets the flood holds.
pub const IDLE_SOCKETS: usize = 500;

/// What an attack's requests were answered with, by answer.
#[derive(Debug, Clone, Default)]
pub struct Tally(Arc<Mutex<BTreeMap<String, u64>>>);

impl Tally {
    fn add(&self, answer: impl Into<String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(answer.into()).or_default() += 1;
    }

    pub fn summary(&self) -> String {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The Veil under attack: in this process, so rooms and an expired grant can be made
/// directly.
#[derive(Clone)]
pub struct Target {
    pub server: String,
    pub signaling: Arc<Signaling>,
}

impl Target {
    fn new_room(&self) -> Result<String, AbuseError> {
        self.signaling
            .rooms
            .create(Instant::now(), None)
            .map(|c| c.room)
            .map_err(|e| AbuseError::Room(format!("{e:?}")))
    }

    fn ws_url(&self) -> String {
        format!("{}/ws", self.server.replacen("http://", "ws://", 1))
    }

    async fn member(&self, room: &str, name: &str) -> Result<(WsStream, String), AbuseError> {
        let mut config = ParticipantConfig::new(&self.server, room, name);
        config.audio = false;
        config.video = None;
        let (_, grant, ws_path) = request_grant(&config).await?;
        let joined = open_socket(&self.server, &ws_path, Some(&grant)).await?;
        Ok((joined.ws, joined.participant))
    }
}

type Sink = SplitSink<WsStream, Message>;

async fn send(sink: &mut Sink, text: String) -> Result<(), AbuseError> {
    sink.send(Message::Text(text.into()))
        .await
        .map_err(|e| AbuseError::WebSocket(e.to_string()))
}

/// Reads `ws` until it ends, adding each error code (and `participant_left`) to `tally`
/// when given.
fn drain(mut stream: futures::stream::SplitStream<WsStream>, tally: Option<Tally>) {
    tokio::spawn(async move {
        while let Some(Ok(frame)) = stream.next().await {
            let (Some(tally), Message::Text(t)) = (&tally, frame) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                continue;
            };
            match v["type"].as_str() {
                Some("error") => tally.add(v["code"].as_str().unwrap_or("error").to_string()),
                Some("participant_left") => tally.add("participant_left"),
                _ => {}
            }
        }
    });
}

/// The well-behaved client: two members of a room of their own.
pub struct Probe {
    a: Sink,
    b: WsStream,
    a_id: String,
    raised: bool,
}

/// Longest wait for one round trip.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between round trips, so the probe stays well under the message quota.
const PROBE_PAUSE: Duration = Duration::from_millis(25);

impl Probe {
    pub async fn join(target: &Target) -> Result<Probe, AbuseError> {
        let room = target.new_room()?;
        let (a, a_id) = target.member(&room, "Probe A").await?;
        let (b, _) = target.member(&room, "Probe B").await?;
        let (a, a_stream) = a.split();
        drain(a_stream, None);
        Ok(Probe {
            a,
            b,
            a_id,
            raised: false,
        })
    }

    async fn round_trip(&mut self) -> Result<Duration, AbuseError> {
        self.raised = !self.raised;
        let msg = json!({"type": "state", "state": {"audio_muted": false,
            "video_muted": false, "screen_sharing": false, "hand_raised": self.raised}});
        let start = Instant::now();
        send(&mut self.a, msg.to_string()).await?;
        let (b, a_id, raised) = (&mut self.b, self.a_id.as_str(), self.raised);
        let heard = async {
            while let Some(frame) = b.next().await {
                let Ok(Message::Text(t)) = frame else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["type"] == "participant_state"
                    && v["participant"] == a_id
                    && v["state"]["hand_raised"] == raised
                {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, heard).await {
            Ok(true) => Ok(start.elapsed()),
            _ => Err(AbuseError::NoAnswer(ANSWER_TIMEOUT)),
        }
    }

    /// Round trips for `window`, paced under the quota.
    pub async fn measure(&mut self, window: Duration) -> Result<LatencyHistogram, AbuseError> {
        let mut hist = LatencyHistogram::default();
        let end = Instant::now() + window;
        while Instant::now() < end {
            let rtt = self.round_trip().await?;
            hist.record(rtt.as_micros() as u64);
            tokio::time::sleep(PROBE_PAUSE).await;
        }
        Ok(hist)
    }
}

/// One phase's figures.
pub struct Phase {
    pub attack: Attack,
    pub probe: LatencyHistogram,
    pub answers: String,
}

/// Longest warm-up plus window: under the SFU's default connect timeout, which closes
/// the probe's media-less members.
pub const MAX_PHASE: Duration = Duration::from_secs(25);

/// Runs each attack in turn for `window` (after `warmup`), the probe measuring meanwhile.
pub async fn run(
    target: &Target,
    attacks: &[Attack],
    warmup: Duration,
    window: Duration,
) -> Result<Vec<Phase>, AbuseError> {
    let mut phases = Vec::new();
    for &attack in attacks {
        // A fresh pair each phase: members without media are closed by the SFU after
        // its connect timeout (30 s by default), longer than one phase.
        let mut probe = Probe::join(target).await?;
        let tally = Tally::default();
        let attacker = {
            let (target, tally) = (target.clone(), tally.clone());
            tokio::spawn(async move {
                if let Err(e) = run_attack(attack, &target, &tally).await {
                    tally.add(format!("attack stopped: {e}"));
                }
            })
        };
        tokio::time::sleep(warmup).await;
        let measured = probe.measure(window).await;
        attacker.abort();
        let _ = attacker.await;
        phases.push(Phase {
            attack,
            probe: measured?,
            answers: tally.summary(),
        });
        // Let the server let go of what the attack left.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(phases)
}

fn client_from(last_octet: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)))
        .build()
        .unwrap_or_default()
}

async fn run_attack(attack: Attack, target: &Target, tally: &Tally) -> Result<(), AbuseError> {
    match attack {
        Attack::Baseline => std::future::pending().await,
        Attack::IdleFlood => {
            // From an address of its own, as a flooding machine would be: its refusals
            // (the per-address cap) must not touch the well-behaved client.
            let from = std::net::SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0));
            let to: std::net::SocketAddr = target
                .server
                .trim_start_matches("http://")
                .parse()
                .map_err(|_| AbuseError::WebSocket(format!("not host:port: {}", target.server)))?;
            let mut held = Vec::with_capacity(IDLE_SOCKETS);
            while held.len() < IDLE_SOCKETS {
                let socket = tokio::net::TcpSocket::new_v4()
                    .and_then(|s| s.bind(from).map(|()| s))
                    .map_err(|e| AbuseError::WebSocket(e.to_string()))?;
                let opened = match socket.connect(to).await {
                    Ok(stream) => tokio_tungstenite::client_async(target.ws_url(), stream)
                        .await
                        .map(|(ws, _)| ws)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match opened {
                    Ok(ws) => {
                        tally.add("opened");
                        held.push(ws);
                    }
                    Err(e) => {
                        tally.add(if e.contains("429") {
                            "refused: 429 too_many_connections"
                        } else {
                            "failed"
                        });
                        // Retry as a patient attacker would, not in a tight loop.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            std::future::pending().await
        }
        Attack::SlowReader => {
            let room = target.new_room()?;
            let mut senders = Vec::new();
            for n in 0..8 {
                let (ws, _) = target.member(&room, &format!("Sender {n}")).await?;
                let (sink, stream) = ws.split();
                drain(stream, (n == 0).then(|| tally.clone()));
                senders.push(sink);
            }
            let blob = "A".repeat(MAX_BLOB_BYTES);
            let mut stalled = Vec::new();
            loop {
                let (ws, id) = target.member(&room, "Stalled").await?;
                stalled.push(ws);
                tally.add("stalled member joined");
                let msg = json!({"type": "e2ee", "to": id, "blob": blob}).to_string();
                for sink in &mut senders {
                    for _ in 0..50 {
                        send(sink, msg.clone()).await?;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Attack::HugeMessages => {
            let room = target.new_room()?;
            let (ws, _) = target.member(&room, "Big").await?;
            let (mut sink, stream) = ws.split();
            drain(stream, Some(tally.clone()));
            let message = "x".repeat(MAX_MESSAGE_BYTES + 1);
            let frame = "x".repeat(MAX_FRAME_BYTES + 1);
            for n in 0u64.. {
                send(&mut sink, message.clone()).await?;
                if n % 10 == 0
                    && let Ok((mut ws, _)) =
                        tokio_tungstenite::connect_async(target.ws_url().as_str()).await
                {
                    let _ = ws.send(Message::Text(frame.clone().into())).await;
                    let closed = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(m)) = ws.next().await {
                            if let Message::Close(_) = m {
                                break;
                            }
                        }
                    })
                    .await;
                    tally.add(match closed {
                        Ok(()) => "oversized frame: closed",
                        Err(_) => "oversized frame: still open",
                    });
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok(())
        }
        Attack::ExpiredGrants => {
            let room = target.new_room()?;
            loop {
                let (mut ws, _) = tokio_tungstenite::connect_async(target.ws_url().as_str())
                    .await
                    .map_err(|e| AbuseError::WebSocket(e.to_string()))?;
                let grant = target.signaling.signer.sign(&Grant {
                    room: room.clone(),
                    participant: "replayed".into(),
                    can_publish: true,
                    can_subscribe: true,
                    expires: veil_sfu::unix_now().saturating_sub(1),
                });
                let join = json!({"type": "join", "grant": grant}).to_string();
                let _ = ws.send(Message::Text(join.into())).await;
                let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
                    while let Some(Ok(Message::Text(t))) = ws.next().await {
                        if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                            && v["type"] == "error"
                        {
                            return v["code"].as_str().unwrap_or("error").to_string();
                        }
                    }
                    "closed".to_string()
                })
                .await
                .unwrap_or_else(|_| "no answer".into());
                tally.add(answer);
            }
        }
        Attack::LoginGuessing => {
            let clients: Arc<Vec<reqwest::Client>> = Arc::new((2..252).map(client_from).collect());
            let mut loops = Vec::new();
            for l in 0..4usize {
                let (clients, tally, server) =
                    (clients.clone(), tally.clone(), target.server.clone());
                loops.push(tokio::spawn(async move {
                    for i in 0usize.. {
                        let n = i * 4 + l;
                        let r = clients[n % clients.len()]
                            .post(format!("{server}/api/session"))
                            .json(&json!({"email": format!("guess{n}@example.org"),
                                "password": "guess guess guess"}))
                            .send()
                            .await;
                        tally.add(status(r));
                    }
                }));
            }
            // Aborting this task drops the handles without stopping the loops: wait on
            // them through a guard that aborts them.
            let _guard = AbortOnDrop(loops);
            std::future::pending().await
        }
        Attack::SignUpFlood => {
            let client = client_from(3);
            for n in 0u64.. {
                let r = client
                    .post(format!("{}/api/accounts", target.server))
                    .json(&json!({"email": format!("flood{n}@example.org"),
                        "display_name": "Flood", "password": "a long enough passphrase",
                        "age_confirmed": true, "accept_policy": true}))
                    .send()
                    .await;
                tally.add(status(r));
            }
            Ok(())
        }
    }
}

fn status(r: reqwest::Result<reqwest::Response>) -> String {
    match r {
        Ok(r) => format!("HTTP {}", r.status().as_u16()),
        Err(_) => "no answer".into(),
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// The phases as a Markdown table, milliseconds.
pub fn render(phases: &[Phase]) -> String {
    let ms = |h: &LatencyHistogram, q: f64| {
        h.quantile(q)
            .map(|us| format!("{:.2}", us as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::from(
        "| attack | what | round trips | p50 ms | p99 ms | max ms | the attack's answers |\n|---|---|---|---|---|---|---|\n",
    );
    for p in phases {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2} | {} |\n",
            p.attack.name(),
            p.attack.describe(),
            p.probe.count(),
            ms(&p.probe, 0.5),
            ms(&p.probe, 0.99),
            p.probe.max() as f64 / 1000.0,
            p.answers,
        ));
    }
    out
}
