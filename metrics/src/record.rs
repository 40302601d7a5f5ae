//! The connection metadata record: what Veil keeps about one media session when it
//! ends — when, how much, how well — and nothing else (P2). It feeds the session
//! histograms and, for a logged-in account, that account's usage record.

use serde::{Deserialize, Serialize};

use crate::Metrics;

/// One ended media session. Deliberately no room, participant, address or name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRecord {
    /// UNIX seconds.
    pub started_at: u64,
    pub ended_at: u64,
    /// Media transport bytes and packets, as the SFU counted them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Share of packets lost, as the session's receivers reported (0 to 1).
    pub loss_ratio: f64,
    /// Round-trip time between the SFU and the participant, when measured.
    pub rtt_seconds: Option<f64>,
}

impl ConnectionRecord {
    pub fn duration_seconds(&self) -> u64 {
        self.ended_at.saturating_sub(self.started_at)
    }

    /// A record made safe to store: loss within 0..=1, RTT finite and non-negative,
    /// end not before start.
    pub fn clamped(mut self) -> Self {
        self.loss_ratio = if self.loss_ratio.is_finite() {
            self.loss_ratio.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.rtt_seconds = self.rtt_seconds.filter(|r| r.is_finite() && *r >= 0.0);
        self.ended_at = self.ended_at.max(self.started_at);
        self
    }

    /// Feeds the session-level histograms.
    pub fn observe(&self, metrics: &Metrics) {
        metrics
            .session_seconds
            .observe(self.duration_seconds() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConnectionRecord {
        ConnectionRecord {
            started_at: 1_700_000_000,
            ended_at: 1_700_000_090,
            bytes_in: 1000,
            bytes_out: 3000,
            packets_in: 10,
            packets_out: 30,
            loss_ratio: 0.01,
            rtt_seconds: Some(0.002),
        }
    }

    #[test]
    fn duration_and_clamping() {
        assert_eq!(record().duration_seconds(), 90);
        let odd = ConnectionRecord {
            ended_at: 1,
            loss_ratio: f64::NAN,
            rtt_seconds: Some(-1.0),
            ..record()
        }
        .clamped();
        assert_eq!(odd.duration_seconds(), 0);
        assert_eq!(odd.loss_ratio, 0.0);
        assert_eq!(odd.rtt_seconds, None);
        assert_eq!(
            ConnectionRecord {
                loss_ratio: 7.0,
                ..record()
            }
            .clamped()
            .loss_ratio,
            1.0
        );
    }

    #[test]
    fn serializes_only_timing_and_sizes() {
        let json = serde_json::to_value(record()).unwrap();
        let mut keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bytes_in",
                "bytes_out",
                "ended_at",
                "loss_ratio",
                "packets_in",
                "packets_out",
                "rtt_seconds",
                "started_at"
            ]
        );
        assert!(serde_json::from_str::<ConnectionRecord>(r#"{"room":"x"}"#).is_err());
    }

    #[test]
    fn observing_feeds_the_session_histogram() {
        let m = Metrics::new().unwrap();
        record().observe(&m);
        assert_eq!(m.session_seconds.get_sample_count(), 1);
        assert!((m.session_seconds.get_sample_sum() - 90.0).abs() < 1e-9);
    }
}
