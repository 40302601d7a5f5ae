//! The load generator: scenarios (`meeting` R×P, `webinar` 1×N, `audio`), many headless
//! participants in this one process on one tokio runtime, the wait for every participant
//! to receive, the steady-state window, and the report of what the Veil under test
//! forwarded and what it cost. Also owns starting an in-process Veil on a runtime of its
//! own (threads named `veil-sfu…`), so its CPU is measured apart from the generator's, and
//! the soak's churn: replacing participants one at a time through the window while
//! `soak.rs` samples the Veil process.
//!
//! Must never: send anything anywhere but the loopback Veil it is pointed at, run a loop
//! that is not bounded in count and time, or judge a run by wall-clock thresholds (the
//! report states what was measured; humans and docs judge it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::participant::{Participant, ParticipantConfig, ParticipantError, VideoConfig};
use crate::report::{
    GeneratorCost, ParticipantSnapshot, Percentiles, Report, RunTotals, ScenarioSummary,
    ServerCost, TrackSnapshot, window,
};
use crate::soak::{ChurnSummary, CsvLog, Phase, Sample, Sampler, SoakPlan, SoakReport, judge};
use crate::usage::{self, CpuScope, Memory, UsageError};

/// Name prefix of the in-process Veil's runtime threads.
pub const SFU_THREAD_PREFIX: &str = "veil-sfu";
/// Name prefix of the generator's runtime threads.
pub const GENERATOR_THREAD_PREFIX: &str = "bench-gen";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("scenario: {0}")]
    Scenario(String),
    #[error("cannot create a room: {0}")]
    Room(String),
    #[error("participant {index} could not join: {source}")]
    Join {
        index: usize,
        source: ParticipantError,
    },
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("starting Veil: {0}")]
    Start(String),
    #[error("relay: {0}")]
    Relay(String),
    #[error(transparent)]
    Usage(#[from] UsageError),
}

/// Which preset a scenario came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioKind {
    /// R rooms × P participants; everyone publishes audio + video and subscribes.
    Meeting,
    /// One room, one publisher (audio + video), N subscribers.
    Webinar,
    /// R rooms × P audio-only participants.
    Audio,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub kind: ScenarioKind,
    pub rooms: usize,
    pub participants_per_room: usize,
    /// The first this many participants of each room publish; the rest only subscribe.
    pub publishers_per_room: usize,
    pub audio: bool,
    pub video: Option<VideoConfig>,
    /// Length of the steady-state window.
    pub duration: Duration,
    /// Joins are spread evenly over this long.
    pub ramp_up: Duration,
    /// Longest wait, after the last join, for every participant to receive.
    pub settle_timeout: Duration,
    /// Pause between "everyone receives" and the window.
    pub warmup: Duration,
}

impl Scenario {
    fn base(kind: ScenarioKind, rooms: usize, per_room: usize, publishers: usize) -> Scenario {
        Scenario {
            kind,
            rooms,
            participants_per_room: per_room,
            publishers_per_room: publishers,
            audio: true,
            video: Some(VideoConfig::default()),
            duration: Duration::from_secs(10),
            ramp_up: Duration::from_millis(50 * (rooms * per_room) as u64),
            settle_timeout: Duration::from_secs(30),
            warmup: Duration::from_secs(1),
        }
    }

    /// `rooms` × `per_room`, everyone publishes audio + video.
    pub fn meeting(rooms: usize, per_room: usize) -> Scenario {
        Self::base(ScenarioKind::Meeting, rooms, per_room, per_room)
    }

    /// One publisher and `subscribers` subscribers in one room.
    pub fn webinar(subscribers: usize) -> Scenario {
        Self::base(ScenarioKind::Webinar, 1, subscribers + 1, 1)
    }

    /// `rooms` × `per_room` audio-only participants, everyone publishing.
    pub fn audio(rooms: usize, per_room: usize) -> Scenario {
        let mut s = Self::base(ScenarioKind::Audio, rooms, per_room, per_room);
        s.video = None;
        s
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            ScenarioKind::Meeting => "meeting",
            ScenarioKind::Webinar => "webinar",
            ScenarioKind::Audio => "audio",
        }
    }

    pub fn participants(&self) -> usize {
        self.rooms * self.participants_per_room
    }

    /// Refuses scenarios that cannot produce a measurement.
    pub fn check(&self) -> Result<(), LoadError> {
        let bad = |m: &str| Err(LoadError::Scenario(m.to_string()));
        if self.rooms == 0 || self.participants_per_room < 2 {
            return bad("needs at least one room of at least two participants");
        }
        if self.publishers_per_room == 0 || self.publishers_per_room > self.participants_per_room {
            return bad("publishers per room must be between 1 and the participants per room");
        }
        if !self.audio && self.video.is_none() {
            return bad("publishers must send audio, video or both");
        }
        if self.participants() > 2000 {
            return bad("at most 2000 participants per run");
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(3600) {
            return bad("duration must be between 1 ms and one hour");
        }
        if self.video.is_some_and(|v| v.fps == 0 || v.fps > 120) {
            return bad("fps must be between 1 and 120");
        }
        Ok(())
    }

    /// Tracks each publisher sends.
    pub fn tracks_per_publisher(&self) -> usize {
        usize::from(self.audio) + usize::from(self.video.is_some())
    }

    /// Whether participant `index` (within its room) publishes.
    pub fn publishes(&self, index_in_room: usize) -> bool {
        index_in_room < self.publishers_per_room
    }

    /// Tracks participant `index_in_room` should receive: every other publisher's.
    pub fn expected_tracks(&self, index_in_room: usize) -> usize {
        let others = self.publishers_per_room - usize::from(self.publishes(index_in_room));
        others * self.tracks_per_publisher()
    }

    pub fn summary(&self) -> ScenarioSummary {
        ScenarioSummary {
            name: self.name().to_string(),
            rooms: self.rooms,
            participants_per_room: self.participants_per_room,
            publishers_per_room: self.publishers_per_room,
            audio: self.audio,
            video_bitrate_bps: self.video.map(|v| v.bitrate_bps),
            video_fps: self.video.map(|v| v.fps),
            simulcast: self.video.is_some_and(|v| v.simulcast),
            duration_s: self.duration.as_secs_f64(),
            ramp_up_s: self.ramp_up.as_secs_f64(),
        }
    }
}

/// Waits out a measurement window, advancing `progress` four times a second.
pub(crate) async fn measure_window(duration: Duration, progress: &dyn Progress, phase: &str) {
    let steps = duration.as_millis().div_ceil(250).max(1) as u64;
    progress.phase(phase, steps);
    let started = Instant::now();
    for step in 1..=steps {
        let until = started + duration.mul_f64(step as f64 / steps as f64);
        tokio::time::sleep_until(until.into()).await;
        progress.advance(step);
    }
}

/// Shown while a run goes on; the binary draws it with indicatif, tests ignore it.
pub trait Progress: Send + Sync {
    /// A new phase with `len` steps.
    fn phase(&self, name: &str, len: u64);
    fn advance(&self, position: u64);
    fn finish(&self);
}

/// No progress display.
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Creates rooms on the Veil under test.
#[derive(Clone)]
pub enum RoomSource {
    /// `POST /api/rooms` with an optional session cookie (`name=value`).
    Http { session_cookie: Option<String> },
    /// Directly in an in-process directory.
    Direct(Arc<dyn Fn() -> Result<String, String> + Send + Sync>),
}

/// The Veil a run loads and how its cost is read.
#[derive(Clone)]
pub struct VeilTarget {
    /// e.g. `in-process veil` or `external veil (pid 42)`.
    pub label: String,
    /// Base URL of the HTTP API, on loopback.
    pub server: String,
    pub rooms: RoomSource,
    pub server_cpu: CpuScope,
    pub cpu_includes_generator: bool,
    /// Process whose memory is read.
    pub memory_pid: u32,
    pub memory_includes_generator: bool,
    /// CPU of the generator (for an in-process Veil, everything else in this process).
    pub generator_cpu: GeneratorScope,
    pub generator_threads: usize,
}

/// How the generator's own CPU is read.
#[derive(Debug, Clone)]
pub enum GeneratorScope {
    /// This whole process.
    Process,
    /// This whole process minus the server's share (an in-process server).
    ProcessMinus(CpuScope),
}

impl GeneratorScope {
    pub fn cpu_seconds(&self) -> Result<f64, UsageError> {
        let own = usage::process_cpu_seconds(std::process::id())?;
        match self {
            GeneratorScope::Process => Ok(own),
            GeneratorScope::ProcessMinus(server) => Ok((own - server.cpu_seconds()?).max(0.0)),
        }
    }
}

/// Builds the runtime the generator's participants run on.
pub fn generator_runtime(threads: usize) -> Result<tokio::runtime::Runtime, LoadError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(GENERATOR_THREAD_PREFIX)
        .enable_all()
        .build()
        .map_err(LoadError::Runtime)
}

/// An all-in-one Veil started in this process on its own runtime.
pub struct InProcessVeil {
    runtime: tokio::runtime::Runtime,
    running: Option<veil::Running>,
}

impl InProcessVeil {
    /// Starts Veil on loopback, ephemeral ports, with `threads` runtime workers, and no
    /// cap on sockets per address (every generated participant comes from 127.0.0.1).
    /// Call from outside any runtime.
    pub fn start(threads: usize) -> Result<InProcessVeil, LoadError> {
        Self::start_with(threads, |config| {
            config.signaling.max_sockets_per_address = 0;
        })
    }

    /// As [`InProcessVeil::start`], with the default limits changed by `adjust` only
    /// (the abuse runs keep every limit as shipped).
    pub fn start_with(
        threads: usize,
        adjust: impl FnOnce(&mut veil::Config),
    ) -> Result<InProcessVeil, LoadError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(SFU_THREAD_PREFIX)
            .enable_all()
            .build()
            .map_err(LoadError::Runtime)?;
        let mut config = veil::Config::default();
        config.signaling.http_addr = ([127, 0, 0, 1], 0).into();
        config.sfu.media_addr = ([127, 0, 0, 1], 0).into();
        // Rooms are created in-process; the accounts store just needs a scratch file.
        // One per Veil: several started by one process (tests) must not share a file.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "veil-bench-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        config.accounts.database_url = format!("sqlite://{}", scratch.join("veil.db").display());
        config.accounts.mail.outbox_dir = scratch.join("outbox");
        adjust(&mut config);
        let running = runtime
            .block_on(veil::start(&config))
            .map_err(|e| LoadError::Start(e.to_string()))?;
        Ok(InProcessVeil {
            runtime,
            running: Some(running),
        })
    }

    /// The target description for a generator running in this same process.
    pub fn target(&self, generator_threads: usize) -> Result<VeilTarget, LoadError> {
        let running = self
            .running
            .as_ref()
            .ok_or_else(|| LoadError::Start("stopped".into()))?;
        let signaling = running.signaling.clone();
        let server_cpu = CpuScope::Threads(SFU_THREAD_PREFIX.to_string());
        Ok(VeilTarget {
            label: "in-process veil".into(),
            server: running.base_url(),
            rooms: RoomSource::Direct(Arc::new(move || {
                signaling
                    .rooms
                    .create(Instant::now(), None)
                    .map(|created| created.room)
                    .map_err(|e| format!("{e:?}"))
            })),
            server_cpu: server_cpu.clone(),
            cpu_includes_generator: false,
            memory_pid: std::process::id(),
            memory_includes_generator: true,
            generator_cpu: GeneratorScope::ProcessMinus(server_cpu),
            generator_threads,
        })
    }

    /// The running signaling (for what only an in-process Veil allows, such as
    /// signing a grant).
    pub fn signaling(&self) -> Option<Arc<veil_signaling::Signaling>> {
        self.running.as_ref().map(|r| r.signaling.clone())
    }

    /// Closes every session and stops serving.
    pub fn stop(mut self) {
        if let Some(running) = self.running.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), running.stop()).await
            });
        }
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

/// A target for a `veil` running as its own process.
pub fn external_target(
    server: &str,
    sfu_pid: u32,
    session_cookie: Option<String>,
    generator_threads: usize,
) -> VeilTarget {
    VeilTarget {
        label: format!("external veil (pid {sfu_pid})"),
        server: server.trim_end_matches('/').to_string(),
        rooms: RoomSource::Http { session_cookie },
        server_cpu: CpuScope::Process(sfu_pid),
        cpu_includes_generator: false,
        memory_pid: sfu_pid,
        memory_includes_generator: false,
        generator_cpu: GeneratorScope::Process,
        generator_threads,
    }
}

async fn create_room(target: &VeilTarget) -> Result<String, LoadError> {
    match &target.rooms {
        RoomSource::Direct(create) => create().map_err(LoadError::Room),
        RoomSource::Http { session_cookie } => {
            #[derive(serde::Deserialize)]
            struct Created {
                room: String,
            }
            let mut request = reqwest::Client::new().post(format!("{}/api/rooms", target.server));
            if let Some(cookie) = session_cookie {
                request = request.header("cookie", cookie);
            }
            let response = request
                .send()
                .await
                .map_err(|e| LoadError::Room(e.to_string()))?;
            if !response.status().is_success() {
                return Err(LoadError::Room(format!(
                    "POST /api/rooms answered {} (does it need --session-cookie?)",
                    response.status()
                )));
            }
            let created: Created = response
                .json()
                .await
                .map_err(|e| LoadError::Room(e.to_string()))?;
            Ok(created.room)
        }
    }
}

struct Member {
    participant: Participant,
    room: usize,
    index_in_room: usize,
    join_started: Instant,
}

/// Everyone's received tracks first, then everyone's sent counts, so no packet can be
/// counted as received without its sending being counted too.
fn snapshot(members: &[Member]) -> Vec<ParticipantSnapshot> {
    let mut snaps: Vec<ParticipantSnapshot> = members
        .iter()
        .map(|m| ParticipantSnapshot {
            tracks: m
                .participant
                .received()
                .iter()
                .filter(|t| !t.ended)
                .map(|t| (t.track.clone(), TrackSnapshot::from(t)))
                .collect(),
            sent_packets: 0,
        })
        .collect();
    for (s, m) in snaps.iter_mut().zip(members) {
        s.sent_packets = m.participant.sent().values().map(|s| s.packets).sum();
    }
    snaps
}

/// Tracks with at least one packet, per member.
fn receiving_tracks(s: &ParticipantSnapshot) -> usize {
    s.tracks.values().filter(|t| t.packets > 0).count()
}

/// Server and generator CPU readings at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    pub at: Instant,
    pub server: f64,
    pub generator: f64,
}

/// Everything a report needs besides the snapshots.
pub struct Measured<'a> {
    pub target_label: String,
    pub scenario: &'a Scenario,
    pub start: &'a [ParticipantSnapshot],
    pub end: &'a [ParticipantSnapshot],
    /// Each member's room size minus one (its possible receivers), aligned with `end`.
    pub fan_out: &'a [u64],
    pub receivers: usize,
    pub expected_tracks: &'a [usize],
    pub joins_ms: Vec<f64>,
    pub cpu_start: CpuReading,
    pub cpu_end: CpuReading,
    pub server_cost: ServerCost,
    /// Server RSS before anyone joined, KiB.
    pub rss_before_kib: Option<u64>,
    pub generator_threads: usize,
    pub problems: Vec<String>,
}

/// Derives the report from what was measured.
pub fn build_report(m: Measured<'_>) -> Report {
    let mut problems = m.problems;
    let figures = window(m.start, m.end);
    let window_s = m
        .cpu_end
        .at
        .duration_since(m.cpu_start.at)
        .as_secs_f64()
        .max(1e-9);
    let receivers_receiving = m
        .end
        .iter()
        .zip(m.expected_tracks)
        .filter(|(s, expected)| **expected > 0 && receiving_tracks(s) >= **expected)
        .count();
    if receivers_receiving < m.receivers {
        problems.push(format!(
            "{} of {} receivers did not receive every track",
            m.receivers - receivers_receiving,
            m.receivers
        ));
    }
    let subscribed_tracks: usize = m.end.iter().map(|s| s.tracks.len()).sum();
    let server_cpu = (m.cpu_end.server - m.cpu_start.server).max(0.0);
    let generator_cpu = (m.cpu_end.generator - m.cpu_start.generator).max(0.0);
    let packets = figures.received_packets;
    let mut server = m.server_cost;
    server.cpu_s = server_cpu;
    server.cpu_s_per_1k_packets = if packets > 0 {
        server_cpu * 1000.0 / packets as f64
    } else {
        0.0
    };
    server.packets_per_cpu_s = if server_cpu > 0.0 {
        packets as f64 / server_cpu
    } else {
        0.0
    };
    if let (Some(rss), Some(before)) = (server.rss_kib, m.rss_before_kib) {
        server.rss_kib_per_subscribed_track = (subscribed_tracks > 0)
            .then(|| rss.saturating_sub(before) as f64 / subscribed_tracks as f64);
    }
    let threads = m.generator_threads.max(1);
    let load = generator_cpu / window_s / threads as f64;
    let saturated = load >= 0.9;
    if saturated {
        problems.push(format!(
            "generator saturated ({load:.2} of {threads} thread(s)): figures are not valid"
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine_load = (server_cpu + generator_cpu) / window_s / cores as f64;
    if machine_load >= 0.9 {
        problems.push(format!(
            "machine CPU saturated ({:.0}% of {cores} cores): latency includes waiting for a CPU",
            machine_load * 100.0
        ));
    }
    if packets == 0 {
        problems.push("nothing was received in the window".into());
    }
    if server_cpu <= 0.0 {
        problems.push("server CPU could not be measured (zero)".into());
    }
    let run = RunTotals {
        sent_packets: m.end.iter().map(|s| s.sent_packets).sum(),
        expected_packets: m
            .end
            .iter()
            .zip(m.fan_out)
            .map(|(s, f)| s.sent_packets * f)
            .sum(),
        received_packets: m
            .end
            .iter()
            .flat_map(|s| s.tracks.values())
            .map(|t| t.packets)
            .sum(),
    };
    let complete = receivers_receiving == m.receivers && packets > 0 && server_cpu > 0.0;
    Report {
        target: m.target_label,
        scenario: m.scenario.summary(),
        complete,
        valid: complete && !saturated,
        problems,
        participants: m.end.len(),
        receivers: m.receivers,
        receivers_receiving,
        subscribed_tracks,
        window_s,
        sent_packets: figures.sent_packets,
        received_packets: packets,
        received_bytes: figures.received_bytes,
        packets_per_s: packets as f64 / window_s,
        bytes_per_s: figures.received_bytes as f64 / window_s,
        loss: figures.loss,
        latency_us: Percentiles::of_histogram(&figures.latency),
        join_ms: Percentiles::of_values(&m.joins_ms),
        server,
        generator: GeneratorCost {
            cpu_s: generator_cpu,
            load,
            threads,
            saturated,
        },
        machine_load,
        run,
        baseline: None,
        relay_ratio: None,
    }
}

fn read_cpu(target: &VeilTarget) -> Result<CpuReading, LoadError> {
    Ok(CpuReading {
        at: Instant::now(),
        server: target.server_cpu.cpu_seconds()?,
        generator: target.generator_cpu.cpu_seconds()?,
    })
}

/// Runs `scenario` against `target`; call on the generator runtime.
pub async fn run_veil(
    scenario: &Scenario,
    target: &VeilTarget,
    progress: &dyn Progress,
) -> Result<Report, LoadError> {
    run(scenario, target, None, progress)
        .await
        .map(|(report, _)| report)
}

/// Runs `scenario` against `target` as a soak: churn and sampling over the window as
/// `plan` says, then the verdict whether anything grew.
pub async fn run_veil_soak(
    scenario: &Scenario,
    target: &VeilTarget,
    plan: &SoakPlan,
    progress: &dyn Progress,
) -> Result<(Report, SoakReport), LoadError> {
    let (report, soak) = run(scenario, target, Some(plan), progress).await?;
    let soak = soak.ok_or_else(|| LoadError::Scenario("the soak did not run".into()))?;
    Ok((report, soak))
}

/// How participant `index_in_room` of room `room_index` joins.
fn member_config(
    scenario: &Scenario,
    target: &VeilTarget,
    room: &str,
    room_index: usize,
    index_in_room: usize,
) -> ParticipantConfig {
    let publishes = scenario.publishes(index_in_room);
    let mut config = ParticipantConfig::new(
        &target.server,
        room,
        &format!("bench-{room_index}-{index_in_room}"),
    );
    config.record_payloads = false;
    config.audio = publishes && scenario.audio;
    config.video = if publishes { scenario.video } else { None };
    config
}

/// Waits until every receiver has a packet on every track it should get; the problem
/// to report when `timeout` passes first.
async fn settle(
    scenario: &Scenario,
    members: &[Member],
    timeout: Duration,
    progress: &dyn Progress,
) -> Option<String> {
    let expected: Vec<usize> = members
        .iter()
        .map(|m| scenario.expected_tracks(m.index_in_room))
        .collect();
    let receivers = expected.iter().filter(|e| **e > 0).count();
    progress.phase("waiting until everyone receives", receivers as u64);
    let deadline = Instant::now() + timeout;
    loop {
        let snap = snapshot(members);
        let ready = snap
            .iter()
            .zip(&expected)
            .filter(|(s, e)| **e > 0 && receiving_tracks(s) >= **e)
            .count();
        progress.advance(ready as u64);
        if ready >= receivers {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(format!(
                "only {ready} of {receivers} receivers had every track after {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A meeting under way, as churn changes it: who is in it and, aligned with them, what
/// each one's share of the window starts from.
struct Meeting<'a> {
    scenario: &'a Scenario,
    target: &'a VeilTarget,
    rooms: &'a [String],
    members: &'a mut Vec<Member>,
    start: &'a mut Vec<ParticipantSnapshot>,
}

/// Replaces one participant at a time, round robin over the rooms, keeping the
/// meeting's size: the longest-present member of the next room goes (alternately with
/// a `leave` and by vanishing) and a fresh one joins in its place.
struct Churner {
    next_room: usize,
    /// Places whose replacement has not joined yet: (room, index in room).
    vacancies: std::collections::VecDeque<(usize, usize)>,
    summary: ChurnSummary,
}

impl Churner {
    const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
    const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

    fn new(every: Duration) -> Churner {
        Churner {
            next_room: 0,
            vacancies: Default::default(),
            summary: ChurnSummary {
                every_s: every.as_secs_f64(),
                ..Default::default()
            },
        }
    }

    /// One tick: a member goes (unless an earlier replacement still has to join), then
    /// the oldest vacancy is filled.
    async fn tick(&mut self, meeting: &mut Meeting<'_>) {
        if self.vacancies.is_empty() && !meeting.rooms.is_empty() {
            let room = self.next_room % meeting.rooms.len();
            self.next_room += 1;
            let oldest = meeting
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.room == room)
                .min_by_key(|(_, m)| m.join_started)
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                let gone = meeting.members.remove(i);
                meeting.start.remove(i);
                if !gone.participant.received().iter().any(|t| t.packets > 0) {
                    self.summary.departed_without_media += 1;
                }
                self.vacancies.push_back((gone.room, gone.index_in_room));
                // Alternate, starting with a clean leave.
                if self.summary.left <= self.summary.vanished {
                    self.summary.left += 1;
                    let _ =
                        tokio::time::timeout(Self::LEAVE_TIMEOUT, gone.participant.leave()).await;
                } else {
                    self.summary.vanished += 1;
                    let _ =
                        tokio::time::timeout(Self::LEAVE_TIMEOUT, gone.participant.vanish()).await;
                }
            }
        }
        self.fill(meeting).await;
    }

    /// Tries once to fill the oldest vacancy; a failed join leaves it for the next try.
    async fn fill(&mut self, meeting: &mut Meeting<'_>) {
        let Some(&(room, index_in_room)) = self.vacancies.front() else {
            return;
        };
        let Some(room_id) = meeting.rooms.get(room) else {
            return;
        };
        let config = member_config(
            meeting.scenario,
            meeting.target,
            room_id,
            room,
            index_in_room,
        );
        let join_started = Instant::now();
        match tokio::time::timeout(Self::JOIN_TIMEOUT, Participant::join(config)).await {
            Ok(Ok(participant)) => {
                meeting.members.push(Member {
                    participant,
                    room,
                    index_in_room,
                    join_started,
                });
                // Everything it receives arrives inside the window.
                meeting.start.push(ParticipantSnapshot::default());
                self.vacancies.pop_front();
                self.summary.cycles += 1;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "churn: a replacement could not join");
                self.summary.failed_joins += 1;
            }
            Err(_) => {
                tracing::warn!("churn: a replacement's join timed out");
                self.summary.failed_joins += 1;
            }
        }
    }
}

/// The steady-state window of a soak: samples every `plan.sample_every` and, when the
/// plan churns, one replacement every `churn_every`.
async fn soak_window(
    meeting: &mut Meeting<'_>,
    plan: &SoakPlan,
    progress: &dyn Progress,
) -> (Sampler, Vec<Sample>, Option<Churner>) {
    let began = Instant::now();
    let end_at = began + meeting.scenario.duration;
    let sampler = Sampler::new(meeting.target.memory_pid, &meeting.target.server, began);
    let mut churner = plan.churn_every.map(Churner::new);
    let mut next_churn = plan.churn_every.map(|every| began + every);
    let sample_every = plan.sample_every.max(Duration::from_millis(100));
    let mut next_sample = began;
    let mut samples = Vec::new();
    let mut log = CsvLog::create(plan.samples_file.as_deref());
    progress.phase(
        if churner.is_some() {
            "soak: churning"
        } else {
            "soak"
        },
        meeting.scenario.duration.as_secs().max(1),
    );
    loop {
        let now = Instant::now();
        if now >= end_at {
            break;
        }
        let cycles = churner.as_ref().map_or(0, |c| c.summary.cycles);
        if now >= next_sample {
            let sample = sampler.sample(Phase::Window, cycles).await;
            log.append(&sample);
            samples.push(sample);
            // A slow reading skips slots rather than bunching readings together.
            while next_sample <= Instant::now() {
                next_sample += sample_every;
            }
            continue;
        }
        if let (Some(at), Some(every), Some(c)) = (next_churn, plan.churn_every, churner.as_mut())
            && now >= at
        {
            c.tick(meeting).await;
            next_churn = Some((at + every).max(Instant::now()));
            continue;
        }
        progress.advance(began.elapsed().as_secs());
        let wake = [Some(end_at), Some(next_sample), next_churn]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end_at)
            .min(now + Duration::from_millis(250));
        tokio::time::sleep_until(wake.into()).await;
    }
    (sampler, samples, churner)
}

/// Churn stops with the window: a place a failed join left empty gets a few more tries,
/// and the last replacements may still be negotiating.
async fn churn_ends(
    mut churner: Churner,
    meeting: &mut Meeting<'_>,
    problems: &mut Vec<String>,
    progress: &dyn Progress,
) -> ChurnSummary {
    for _ in 0..3 {
        if churner.vacancies.is_empty() {
            break;
        }
        churner.fill(meeting).await;
    }
    if !churner.vacancies.is_empty() {
        problems.push(format!(
            "{} place(s) stayed empty after the window: replacements could not join",
            churner.vacancies.len()
        ));
    }
    let scenario = meeting.scenario;
    problems.extend(
        settle(scenario, meeting.members, scenario.settle_timeout, progress)
            .await
            .map(|p| format!("after churn: {p}")),
    );
    churner.summary
}

/// Runs `scenario`, as a soak when `plan` is given.
async fn run(
    scenario: &Scenario,
    target: &VeilTarget,
    plan: Option<&SoakPlan>,
    progress: &dyn Progress,
) -> Result<(Report, Option<SoakReport>), LoadError> {
    scenario.check()?;
    let memory_before = usage::process_memory(target.memory_pid)?;
    let mut rooms = Vec::with_capacity(scenario.rooms);
    for _ in 0..scenario.rooms {
        rooms.push(create_room(target).await?);
    }
    let total = scenario.participants();
    progress.phase("joining", total as u64);
    let spacing = scenario.ramp_up / u32::try_from(total).unwrap_or(u32::MAX);
    let mut members: Vec<Member> = Vec::with_capacity(total);
    // Round-robin over rooms so every room fills at the same pace.
    for index_in_room in 0..scenario.participants_per_room {
        for (room_index, room) in rooms.iter().enumerate() {
            let config = member_config(scenario, target, room, room_index, index_in_room);
            let join_started = Instant::now();
            let participant =
                Participant::join(config)
                    .await
                    .map_err(|source| LoadError::Join {
                        index: members.len(),
                        source,
                    })?;
            members.push(Member {
                participant,
                room: room_index,
                index_in_room,
                join_started,
            });
            progress.advance(members.len() as u64);
            tokio::time::sleep(spacing).await;
        }
    }
    let mut problems = Vec::new();
    problems.extend(settle(scenario, &members, scenario.settle_timeout, progress).await);
    tokio::time::sleep(scenario.warmup).await;

    let mut start = snapshot(&members);
    let cpu_start = read_cpu(target)?;
    let soaked = match plan {
        None => {
            measure_window(scenario.duration, progress, "measuring").await;
            None
        }
        Some(plan) => {
            let mut meeting = Meeting {
                scenario,
                target,
                rooms: &rooms,
                members: &mut members,
                start: &mut start,
            };
            let (sampler, samples, churner) = soak_window(&mut meeting, plan, progress).await;
            let churn = match churner {
                Some(churner) => {
                    Some(churn_ends(churner, &mut meeting, &mut problems, progress).await)
                }
                None => None,
            };
            Some((sampler, samples, churn))
        }
    };
    let cpu_end = read_cpu(target)?;
    let (sampler, mut samples, churn) = match soaked {
        Some((sampler, samples, churn)) => (Some(sampler), samples, churn),
        None => (None, Vec::new(), None),
    };
    let end = snapshot(&members);
    let memory_end: Memory = usage::process_memory(target.memory_pid)?;
    let expected: Vec<usize> = members
        .iter()
        .map(|m| scenario.expected_tracks(m.index_in_room))
        .collect();
    let receivers = expected.iter().filter(|e| **e > 0).count();
    let soak = match (plan, sampler) {
        (Some(plan), Some(sampler)) => {
            let size = scenario.participants() as u64;
            let cycles = churn.as_ref().map_or(0, |c| c.cycles);
            // Sessions of participants that just went close on their own schedule
            // (a vanished one when its socket's close is seen): give them a moment.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let sample = sampler.sample(Phase::Settled, cycles).await;
                let back = sample.sessions == Some(size) && sample.participants == Some(size);
                samples.push(sample);
                if back || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // Only the last settled reading counts; the ones before it were waiting.
            let last = samples.len().saturating_sub(1);
            let mut kept: Vec<Sample> = samples
                .drain(..)
                .enumerate()
                .filter(|(i, s)| s.phase == Phase::Window || *i == last)
                .map(|(_, s)| s)
                .collect();
            kept.shrink_to_fit();
            let verdict = judge(&kept, size, plan);
            Some(SoakReport {
                sampled: if target.memory_includes_generator {
                    format!(
                        "process {} (Veil and the generator: RSS, threads and fds include the participants)",
                        target.memory_pid
                    )
                } else {
                    format!("process {} (Veil alone)", target.memory_pid)
                },
                sample_every_s: plan.sample_every.as_secs_f64(),
                churn,
                first: kept.first().cloned(),
                last: kept.last().cloned(),
                verdict,
                samples: kept,
            })
        }
        _ => None,
    };

    // Join time: grant request → first packet of any publisher that joined earlier.
    let joined_at: HashMap<String, Instant> = members
        .iter()
        .map(|m| (m.participant.id.clone(), m.join_started))
        .collect();
    let joins_ms: Vec<f64> = members
        .iter()
        .zip(&end)
        .filter_map(|(m, s)| {
            s.tracks
                .values()
                .filter(|t| {
                    joined_at
                        .get(&t.publisher)
                        .is_some_and(|p| *p < m.join_started)
                })
                .filter_map(|t| t.first_packet)
                .min()
                .map(|first| first.duration_since(m.join_started).as_secs_f64() * 1000.0)
        })
        .collect();
    let room_sizes: Vec<u64> = {
        let mut sizes = vec![0u64; scenario.rooms];
        for m in &members {
            sizes[m.room] += 1;
        }
        members.iter().map(|m| sizes[m.room] - 1).collect()
    };

    // Diagnostics for incomplete runs: negotiation errors, and publishers nobody hears.
    for m in &members {
        let errors = m.participant.errors();
        if !errors.is_empty() {
            problems.push(format!(
                "participant {} reported errors: {}",
                m.participant.id,
                errors.join(", ")
            ));
        }
    }
    for m in members
        .iter()
        .filter(|m| scenario.publishes(m.index_in_room))
    {
        let heard_by = end
            .iter()
            .filter(|s| {
                s.tracks
                    .values()
                    .any(|t| t.publisher == m.participant.id && t.packets > 0)
            })
            .count();
        if heard_by < scenario.participants_per_room - 1 {
            problems.push(format!(
                "publisher {} (room {}) reached {heard_by} of {} others",
                m.participant.id,
                m.room,
                scenario.participants_per_room - 1
            ));
        }
    }

    progress.phase("leaving", members.len() as u64);
    let leaving = futures::future::join_all(members.into_iter().map(|m| m.participant.leave()));
    let _ = tokio::time::timeout(Duration::from_secs(15), leaving).await;
    progress.finish();

    let memory_scope = if target.memory_includes_generator {
        format!("whole process {}", target.memory_pid)
    } else {
        format!("process {}", target.memory_pid)
    };
    let server_cost = ServerCost {
        cpu_scope: match &target.server_cpu {
            CpuScope::Process(pid) => format!("process {pid}"),
            CpuScope::Threads(prefix) => format!("threads {prefix}*"),
            CpuScope::Thread(tid) => format!("thread {tid}"),
        },
        cpu_includes_generator: target.cpu_includes_generator,
        cpu_s: 0.0,
        cpu_s_per_1k_packets: 0.0,
        packets_per_cpu_s: 0.0,
        memory_scope: Some(memory_scope),
        memory_includes_generator: target.memory_includes_generator,
        rss_kib: Some(memory_end.rss_kib),
        peak_rss_kib: Some(memory_end.peak_rss_kib),
        rss_kib_per_subscribed_track: None,
    };
    let report = build_report(Measured {
        target_label: target.label.clone(),
        scenario,
        start: &start,
        end: &end,
        fan_out: &room_sizes,
        receivers,
        expected_tracks: &expected,
        joins_ms,
        cpu_start,
        cpu_end,
        server_cost,
        rss_before_kib: Some(memory_before.rss_kib),
        generator_threads: target.generator_threads,
        problems,
    });
    Ok((report, soak))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_expected_tracks() {
        let m = Scenario::meeting(10, 4);
        assert_eq!(m.participants(), 40);
        assert_eq!(m.expected_tracks(0), 6);
        let w = Scenario::webinar(50);
        assert_eq!(w.participants(), 51);
        assert_eq!(w.expected_tracks(0), 0);
        assert_eq!(w.expected_tracks(7), 2);
        let mut a = Scenario::audio(1, 100);
        a.publishers_per_room = 10;
        assert_eq!(a.expected_tracks(3), 9);
        assert_eq!(a.expected_tracks(50), 10);
        assert!(a.check().is_ok());
        a.publishers_per_room = 0;
        assert!(a.check().is_err());
        assert!(Scenario::meeting(1, 1).check().is_err());
    }
}
