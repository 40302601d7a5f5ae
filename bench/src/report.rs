//! The load report: one shape for every target (Veil in-process, an external Veil, the
//! plain UDP relay), computed from snapshots of what the participants sent and received
//! at the start and end of the steady-state window, plus what the server and the
//! generator cost over that window. Serialises to JSON (`--json`) and renders as text.
//!
//! Must never: measure anything itself (no clocks, no `/proc`) — it only derives figures
//! from the snapshots and costs it is handed, so the same arithmetic serves every target.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;
use veil_sfu::Layer;

use crate::histogram::LatencyHistogram;
use crate::participant::{CounterRange, RemoteTrackStats};

/// What one received track had delivered at one instant.
#[derive(Debug, Clone, Default)]
pub struct TrackSnapshot {
    pub publisher: String,
    pub packets: u64,
    pub bytes: u64,
    pub first_packet: Option<Instant>,
    pub latency: LatencyHistogram,
    pub counters: HashMap<([u8; 8], Option<Layer>), CounterRange>,
}

impl From<&RemoteTrackStats> for TrackSnapshot {
    fn from(t: &RemoteTrackStats) -> Self {
        TrackSnapshot {
            publisher: t.publisher.clone(),
            packets: t.packets,
            bytes: t.payload_bytes,
            first_packet: t.first_packet,
            latency: t.latency.clone(),
            counters: t.counters.clone(),
        }
    }
}

/// One participant at one instant: what it received (by track) and sent (packets).
#[derive(Debug, Clone, Default)]
pub struct ParticipantSnapshot {
    pub tracks: HashMap<String, TrackSnapshot>,
    pub sent_packets: u64,
}

/// Percentiles of a distribution.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of_histogram(h: &LatencyHistogram) -> Percentiles {
        Percentiles {
            samples: h.count(),
            p50: h.quantile(0.5).unwrap_or(0) as f64,
            p99: h.quantile(0.99).unwrap_or(0) as f64,
            max: h.max() as f64,
        }
    }

    /// Nearest-rank percentiles of raw values.
    pub fn of_values(values: &[f64]) -> Percentiles {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Percentiles {
            samples: v.len() as u64,
            p50: at(0.5),
            p99: at(0.99),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// The scenario as run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScenarioSummary {
    pub name: String,
    pub rooms: usize,
    pub participants_per_room: usize,
    pub publishers_per_room: usize,
    pub audio: bool,
    pub video_bitrate_bps: Option<u64>,
    pub video_fps: Option<u32>,
    pub simulcast: bool,
    pub duration_s: f64,
    pub ramp_up_s: f64,
}

/// What the server under test cost over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerCost {
    /// Whose CPU was counted, e.g. `process 1234`, `threads veil-sfu*`, `relay thread`.
    pub cpu_scope: String,
    /// True when the figure includes the load generator's own work.
    pub cpu_includes_generator: bool,
    pub cpu_s: f64,
    pub cpu_s_per_1k_packets: f64,
    pub packets_per_cpu_s: f64,
    /// Whose memory was read; `None` when no process memory applies (the relay thread).
    pub memory_scope: Option<String>,
    pub memory_includes_generator: bool,
    pub rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// (RSS at the end of the window − RSS before anyone joined) / subscribed tracks.
    pub rss_kib_per_subscribed_track: Option<f64>,
}

/// What the load generator cost over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GeneratorCost {
    pub cpu_s: f64,
    /// CPU seconds per wall second per generator worker thread (1.0 = saturated).
    pub load: f64,
    pub threads: usize,
    pub saturated: bool,
}

/// Veil's figures divided by the relay's from the same run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RelayRatio {
    /// Server CPU per forwarded packet, Veil / relay (how many times the physical limit).
    pub cpu_per_packet: f64,
    /// Relay's packets per CPU-second as a share of Veil's inverse: relay / Veil cost,
    /// i.e. Veil's throughput per CPU as a fraction of the relay's (target ≥ 0.5).
    pub throughput_share: f64,
    pub latency_p50: f64,
    pub latency_p99: f64,
}

/// Totals over the whole run (not only the window), for consistency checks.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RunTotals {
    pub sent_packets: u64,
    /// Upper bound of what receivers can get: each publisher's packets × its room's
    /// other participants.
    pub expected_packets: u64,
    pub received_packets: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub target: String,
    pub scenario: ScenarioSummary,
    /// Every participant that should receive did, and every figure could be measured.
    pub complete: bool,
    /// Not complete, or the generator saturated.
    pub valid: bool,
    pub problems: Vec<String>,
    pub participants: usize,
    pub receivers: usize,
    pub receivers_receiving: usize,
    pub subscribed_tracks: usize,
    pub window_s: f64,
    pub sent_packets: u64,
    pub received_packets: u64,
    /// RTP payload bytes received (headers and SRTP tags not counted).
    pub received_bytes: u64,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
    pub loss: f64,
    pub latency_us: Percentiles,
    pub join_ms: Percentiles,
    pub server: ServerCost,
    pub generator: GeneratorCost,
    /// (server + generator CPU) / window / cores: near 1.0 the machine itself was full,
    /// and latency includes waiting for a CPU.
    pub machine_load: f64,
    pub run: RunTotals,
    pub baseline: Option<Box<Report>>,
    pub relay_ratio: Option<RelayRatio>,
}

/// The window figures from two snapshots of every participant.
#[derive(Debug, Clone, Default)]
pub struct WindowFigures {
    pub sent_packets: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
    pub loss: f64,
    pub latency: LatencyHistogram,
}

/// Differences `end − start`, summed over participants and tracks.
pub fn window(start: &[ParticipantSnapshot], end: &[ParticipantSnapshot]) -> WindowFigures {
    let empty = ParticipantSnapshot::default();
    let mut out = WindowFigures::default();
    let (mut got, mut span) = (0u64, 0u64);
    for (i, e) in end.iter().enumerate() {
        let s = start.get(i).unwrap_or(&empty);
        out.sent_packets += e.sent_packets.saturating_sub(s.sent_packets);
        for (id, t) in &e.tracks {
            let before = s.tracks.get(id);
            out.received_packets += t.packets - before.map_or(0, |b| b.packets.min(t.packets));
            out.received_bytes += t.bytes - before.map_or(0, |b| b.bytes.min(t.bytes));
            match before {
                Some(b) => out.latency.merge(&t.latency.since(&b.latency)),
                None => out.latency.merge(&t.latency),
            }
            for (key, range) in &t.counters {
                match before.and_then(|b| b.counters.get(key)) {
                    Some(r0) => {
                        got += range.received.saturating_sub(r0.received);
                        span += range.last.saturating_sub(r0.last);
                    }
                    None => {
                        got += range.received;
                        span += range.last.saturating_sub(range.first) + 1;
                    }
                }
            }
        }
    }
    out.loss = if span == 0 {
        0.0
    } else {
        (1.0 - got as f64 / span as f64).max(0.0)
    };
    out
}

impl Report {
    /// Attaches the relay's report from the same run and the ratios to it.
    pub fn with_baseline(mut self, relay: Report) -> Report {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let cpu = ratio(
            self.server.cpu_s_per_1k_packets,
            relay.server.cpu_s_per_1k_packets,
        );
        self.relay_ratio = Some(RelayRatio {
            cpu_per_packet: cpu,
            throughput_share: if cpu > 0.0 { 1.0 / cpu } else { 0.0 },
            latency_p50: ratio(self.latency_us.p50, relay.latency_us.p50),
            latency_p99: ratio(self.latency_us.p99, relay.latency_us.p99),
        });
        self.baseline = Some(Box::new(relay));
        self
    }

    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let sc = &self.scenario;
        let video = match (sc.video_bitrate_bps, sc.video_fps) {
            (Some(b), Some(f)) => format!(
                "video {} kbit/s {f} fps{}",
                b / 1000,
                if sc.simulcast { " simulcast" } else { "" }
            ),
            _ => "no video".into(),
        };
        let _ = writeln!(
            s,
            "{} {}×{} on {} — {} publishing per room, {}audio, {video}",
            sc.name,
            sc.rooms,
            sc.participants_per_room,
            self.target,
            sc.publishers_per_room,
            if sc.audio { "" } else { "no " },
        );
        let _ = writeln!(
            s,
            "  status        {}{}",
            if self.valid { "valid" } else { "INVALID" },
            if self.problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.problems.join("; "))
            }
        );
        let _ = writeln!(
            s,
            "  window        {:.1} s; {} participants, {}/{} receivers receiving, {} subscribed tracks",
            self.window_s,
            self.participants,
            self.receivers_receiving,
            self.receivers,
            self.subscribed_tracks
        );
        let _ = writeln!(
            s,
            "  forwarded     {:.0} packets/s, {:.2} Mbit/s payload (counted at receivers); loss {:.4}%",
            self.packets_per_s,
            self.bytes_per_s * 8.0 / 1e6,
            self.loss * 100.0
        );
        let _ = writeln!(
            s,
            "  latency       p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} samples)",
            self.latency_us.p50, self.latency_us.p99, self.latency_us.max, self.latency_us.samples
        );
        let _ = writeln!(
            s,
            "  join→first    p50 {:.0} ms, p99 {:.0} ms ({} joins)",
            self.join_ms.p50, self.join_ms.p99, self.join_ms.samples
        );
        let sv = &self.server;
        let _ = writeln!(
            s,
            "  server CPU    {:.3} s = {:.4} s per 1,000 packets = {:.0} packets per CPU-second [{}{}]",
            sv.cpu_s,
            sv.cpu_s_per_1k_packets,
            sv.packets_per_cpu_s,
            sv.cpu_scope,
            if sv.cpu_includes_generator {
                ", INCLUDES the generator"
            } else {
                ""
            }
        );
        if let Some(scope) = &sv.memory_scope {
            let _ = writeln!(
                s,
                "  server memory RSS {} KiB, peak {} KiB, {} KiB per subscribed track [{scope}{}]",
                sv.rss_kib.unwrap_or(0),
                sv.peak_rss_kib.unwrap_or(0),
                sv.rss_kib_per_subscribed_track
                    .map_or("n/a".into(), |v| format!("{v:.0}")),
                if sv.memory_includes_generator {
                    ", INCLUDES the generator"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            s,
            "  generator     {:.3} CPU-s, load {:.2} of {} thread(s){}",
            self.generator.cpu_s,
            self.generator.load,
            self.generator.threads,
            if self.generator.saturated {
                " — SATURATED"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  machine       {:.0}% of all cores busy (server + generator)",
            self.machine_load * 100.0
        );
        if let (Some(r), Some(b)) = (&self.relay_ratio, &self.baseline) {
            let _ = writeln!(
                s,
                "  vs relay      CPU per packet ×{:.1} (relay {:.4} s per 1,000 packets, {:.0} packets/s); Veil throughput per CPU = {:.1}% of the relay's; latency p50 ×{:.1}, p99 ×{:.1}",
                r.cpu_per_packet,
                b.server.cpu_s_per_1k_packets,
                b.packets_per_s,
                r.throughput_share * 100.0,
                r.latency_p50,
                r.latency_p99
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(packets: u64, last: u64, received: u64, latency: &[u64]) -> TrackSnapshot {
        let mut h = LatencyHistogram::default();
        for l in latency {
            h.record(*l);
        }
        TrackSnapshot {
            publisher: "p".into(),
            packets,
            bytes: packets * 100,
            first_packet: None,
            latency: h,
            counters: HashMap::from([(
                ([0; 8], None),
                CounterRange {
                    first: 0,
                    last,
                    received,
                },
            )]),
        }
    }

    #[test]
    fn window_subtracts_and_measures_loss() {
        let start = vec![ParticipantSnapshot {
            tracks: HashMap::from([("a".into(), track(10, 9, 10, &[100; 10]))]),
            sent_packets: 5,
        }];
        // 100 more counters spanned, 90 received.
        let end = vec![ParticipantSnapshot {
            tracks: HashMap::from([(
                "a".into(),
                track(100, 109, 100, &[[100; 10].as_slice(), &[200; 90]].concat()),
            )]),
            sent_packets: 25,
        }];
        let w = window(&start, &end);
        assert_eq!(w.sent_packets, 20);
        assert_eq!(w.received_packets, 90);
        assert_eq!(w.received_bytes, 9000);
        assert!((w.loss - 0.1).abs() < 1e-9);
        assert_eq!(w.latency.count(), 90);
        assert!(
            w.latency
                .quantile(0.5)
                .is_some_and(|v| (190..=210).contains(&v))
        );
    }

    #[test]
    fn percentiles_of_values() {
        let p = Percentiles::of_values(&[3.0, 1.0, 2.0, 4.0]);
        assert_eq!((p.samples, p.p50, p.p99, p.max), (4, 2.0, 4.0, 4.0));
        assert_eq!(Percentiles::of_values(&[]).samples, 0);
    }
}
