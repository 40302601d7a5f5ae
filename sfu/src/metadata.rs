//! What the SFU learns about one session's connection — timing and sizes, loss and
//! round-trip time — from the peer connection's statistics: sampled while the session
//! lives (feeding the counters and histograms) and summed into the
//! [`ConnectionRecord`] when it ends. Never a payload, an address or a name.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use veil_metrics::{ConnectionRecord, Metrics};

use crate::feedback::ReportBlock;
use webrtc::peer_connection::{RTCStatsReport, RTCStatsReportEntry};

/// Running totals of one peer connection, as its statistics report them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// NACKs we sent the publisher (about what it sends). Key-frame requests are
    /// counted where the SFU relays and sends them, NACKs from subscribers where the
    /// feedback interceptor sees them: rtc 0.21.1 does not count inbound RTCP.
    pub nack_out: u64,
    pub retransmitted_in: u64,
    pub retransmitted_out: u64,
    /// RTP packets sent to this participant.
    pub rtp_sent: u64,
}

/// Receiver-reported quality, one value per reporting stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quality {
    pub loss: Vec<f64>,
    pub jitter_seconds: Vec<f64>,
    pub rtt_seconds: Option<f64>,
}

/// Reads totals and the round-trip time out of a statistics report. (Receiver-reported
/// loss and jitter come from [`ReportBlock`]s: rtc 0.21.1 leaves its remote-inbound
/// statistics at zero.)
pub fn read_report(report: &RTCStatsReport) -> (Totals, Quality) {
    let mut t = Totals::default();
    let mut q = Quality::default();
    if let Some(transport) = report.transport() {
        t.bytes_in = transport.bytes_received;
        t.bytes_out = transport.bytes_sent;
        t.packets_in = transport.packets_received;
        t.packets_out = transport.packets_sent;
    }
    for entry in report.iter() {
        match entry {
            RTCStatsReportEntry::InboundRtp(s) => {
                t.nack_out += u64::from(s.nack_count);
                t.retransmitted_in += s.retransmitted_packets_received;
            }
            RTCStatsReportEntry::OutboundRtp(s) => {
                t.retransmitted_out += s.retransmitted_packets_sent;
                t.rtp_sent += s.sent_rtp_stream_stats.packets_sent;
            }
            RTCStatsReportEntry::IceCandidatePair(p)
                if q.rtt_seconds.is_none() && p.current_round_trip_time > 0.0 =>
            {
                q.rtt_seconds = Some(p.current_round_trip_time);
            }
            _ => {}
        }
    }
    (t, q)
}

/// Loss and jitter from receiver report blocks; `clock_rate` maps one of our SSRCs to
/// its RTP clock (jitter is in timestamp units). Blocks about unknown SSRCs are skipped.
pub fn quality_from_blocks(
    blocks: &[ReportBlock],
    clock_rate: impl Fn(u32) -> Option<u32>,
) -> Quality {
    let mut q = Quality::default();
    for b in blocks {
        let Some(rate) = clock_rate(b.ssrc).filter(|r| *r > 0) else {
            continue;
        };
        q.loss.push(f64::from(b.fraction_lost) / 256.0);
        q.jitter_seconds.push(f64::from(b.jitter) / f64::from(rate));
    }
    q
}

/// Adds what grew between two samples to the counters (totals never go back; a
/// stream that disappeared between samples simply adds nothing).
pub fn count_growth(metrics: &Metrics, before: &Totals, now: &Totals) {
    let grow = |a: u64, b: u64| b.saturating_sub(a);
    let pairs = [
        (
            &metrics.transport_bytes,
            "in",
            grow(before.bytes_in, now.bytes_in),
        ),
        (
            &metrics.transport_bytes,
            "out",
            grow(before.bytes_out, now.bytes_out),
        ),
        (
            &metrics.transport_packets,
            "in",
            grow(before.packets_in, now.packets_in),
        ),
        (
            &metrics.transport_packets,
            "out",
            grow(before.packets_out, now.packets_out),
        ),
        (
            &metrics.retransmitted_packets,
            "in",
            grow(before.retransmitted_in, now.retransmitted_in),
        ),
        (
            &metrics.retransmitted_packets,
            "out",
            grow(before.retransmitted_out, now.retransmitted_out),
        ),
    ];
    for (counter, direction, n) in pairs {
        if n > 0 {
            counter.with_label_values(&[direction]).inc_by(n);
        }
    }
    let nacks = grow(before.nack_out, now.nack_out);
    if nacks > 0 {
        metrics
            .rtcp_feedback
            .with_label_values(&["out", "nack"])
            .inc_by(nacks);
    }
}

/// Feeds the receiver-quality histograms.
pub fn observe_quality(metrics: &Metrics, q: &Quality) {
    for loss in &q.loss {
        metrics.receiver_loss_ratio.observe(*loss);
    }
    for jitter in &q.jitter_seconds {
        metrics.receiver_jitter_seconds.observe(*jitter);
    }
    if let Some(rtt) = q.rtt_seconds {
        metrics.rtt_seconds.observe(rtt);
    }
}

/// One session's metadata as it goes along.
#[derive(Debug, Clone)]
pub struct SessionMetadata {
    started_at: u64,
    started: Instant,
    totals: Totals,
    rtt_seconds: Option<f64>,
    /// Latest cumulative loss each of our streams' receivers reported.
    lost_by_ssrc: HashMap<u32, u32>,
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SessionMetadata {
    pub fn new(started_at: SystemTime, started: Instant) -> Self {
        SessionMetadata {
            started_at: unix_seconds(started_at),
            started,
            totals: Totals::default(),
            rtt_seconds: None,
            lost_by_ssrc: HashMap::new(),
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Remembers the cumulative loss receivers reported, for the record.
    pub fn on_reports(&mut self, blocks: &[ReportBlock]) {
        for b in blocks {
            self.lost_by_ssrc.insert(b.ssrc, b.total_lost);
        }
    }

    /// Takes one sample: counts what grew since the last one.
    pub fn sample(&mut self, metrics: &Metrics, totals: Totals, quality: &Quality) {
        count_growth(metrics, &self.totals, &totals);
        observe_quality(metrics, quality);
        // Totals only grow; keep the largest seen in case a sample came back partial.
        self.totals = Totals {
            bytes_in: self.totals.bytes_in.max(totals.bytes_in),
            bytes_out: self.totals.bytes_out.max(totals.bytes_out),
            packets_in: self.totals.packets_in.max(totals.packets_in),
            packets_out: self.totals.packets_out.max(totals.packets_out),
            rtp_sent: self.totals.rtp_sent.max(totals.rtp_sent),
            ..totals
        };
        if quality.rtt_seconds.is_some() {
            self.rtt_seconds = quality.rtt_seconds;
        }
    }

    /// The record for a session ending at `ended_at`.
    pub fn record(&self, ended_at: SystemTime) -> ConnectionRecord {
        let t = &self.totals;
        let lost: u64 = self.lost_by_ssrc.values().map(|l| u64::from(*l)).sum();
        let loss_ratio = if t.rtp_sent > 0 {
            lost as f64 / t.rtp_sent as f64
        } else {
            0.0
        };
        ConnectionRecord {
            started_at: self.started_at,
            ended_at: unix_seconds(ended_at),
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            packets_in: t.packets_in,
            packets_out: t.packets_out,
            loss_ratio,
            rtt_seconds: self.rtt_seconds,
        }
        .clamped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn totals(scale: u64) -> Totals {
        Totals {
            bytes_in: 1000 * scale,
            bytes_out: 3000 * scale,
            packets_in: 10 * scale,
            packets_out: 30 * scale,
            nack_out: 2 * scale,
            rtp_sent: 100 * scale,
            ..Totals::default()
        }
    }

    fn value(metrics: &Metrics, name: &str) -> String {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn samples_count_only_growth_and_the_record_sums_up() {
        let m = Metrics::new().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut s = SessionMetadata::new(t0, Instant::now());
        let quality = Quality {
            loss: vec![0.01],
            jitter_seconds: vec![0.002],
            rtt_seconds: Some(0.004),
        };
        s.sample(&m, totals(1), &quality);
        let block = |ssrc, total_lost| ReportBlock {
            ssrc,
            fraction_lost: 0,
            total_lost,
            jitter: 0,
        };
        s.on_reports(&[block(1, 1), block(2, 0)]);
        s.on_reports(&[block(1, 2), block(2, 1)]);
        s.sample(&m, totals(3), &Quality::default());
        // A partial sample (a stream gone) must not count backwards.
        s.sample(&m, totals(2), &Quality::default());
        assert_eq!(m.transport_bytes.with_label_values(&["in"]).get(), 3000);
        assert_eq!(m.transport_packets.with_label_values(&["out"]).get(), 90);
        assert_eq!(m.rtcp_feedback.with_label_values(&["out", "nack"]).get(), 6);
        assert_eq!(m.receiver_loss_ratio.get_sample_count(), 1);
        assert_eq!(m.rtt_seconds.get_sample_count(), 1);
        assert!(value(&m, "veil_sfu_receiver_jitter_seconds_count").ends_with(" 1"));

        let record = s.record(t0 + Duration::from_secs(60));
        assert_eq!(record.duration_seconds(), 60);
        assert_eq!((record.bytes_in, record.bytes_out), (3000, 9000));
        assert_eq!((record.packets_in, record.packets_out), (30, 90));
        assert!((record.loss_ratio - 0.01).abs() < 1e-9);
        assert_eq!(record.rtt_seconds, Some(0.004));
    }

    #[test]
    fn report_blocks_become_loss_and_jitter_in_seconds() {
        let blocks = [
            ReportBlock {
                ssrc: 1,
                fraction_lost: 64,
                total_lost: 3,
                jitter: 900,
            },
            ReportBlock {
                ssrc: 2,
                fraction_lost: 0,
                total_lost: 0,
                jitter: 480,
            },
            ReportBlock {
                ssrc: 99,
                fraction_lost: 255,
                total_lost: 0,
                jitter: 1,
            },
        ];
        let q = quality_from_blocks(&blocks, |ssrc| match ssrc {
            1 => Some(90_000),
            2 => Some(48_000),
            _ => None,
        });
        assert_eq!(q.loss, vec![0.25, 0.0]);
        assert_eq!(q.jitter_seconds, vec![0.01, 0.01]);
    }

    #[test]
    fn an_unsampled_session_has_an_empty_record() {
        let t0 = SystemTime::now();
        let s = SessionMetadata::new(t0, Instant::now());
        let r = s.record(t0);
        assert_eq!((r.bytes_in, r.packets_out, r.loss_ratio), (0, 0, 0.0));
        assert_eq!(r.rtt_seconds, None);
    }
}
