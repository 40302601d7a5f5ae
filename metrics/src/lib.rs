//! Every metric Veil exports, defined in one place, and the text rendering the
//! `/metrics` endpoints serve.
//!
//! Must never: take a label value from input. Labels come only from the fixed sets
//! below (direction, kind, message type, reason, outcome) — never a room, participant,
//! account, IP address or user agent — so a metric can never identify anyone (P2).

pub mod process;
pub mod record;

pub use record::ConnectionRecord;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Reasons an input was refused; the only values the `reason` label takes.
pub const ERROR_REASONS: &[&str] = &[
    "malformed_message",
    "message_too_large",
    "not_joined",
    "already_joined",
    "grant_missing",
    "grant_malformed",
    "grant_expired",
    "grant_forged",
    "grant_wrong_room",
    "sfu_full",
    "bad_request",
    "not_found",
    "signal_refused",
    "unknown_participant",
    "blob_too_large",
    "rate_limited",
    "resume_expired",
    "not_host",
    "rooms_full",
    "join_timeout",
    "slow_client",
    "too_many_connections",
    "grant_used",
    // Accounts API.
    "invalid_body",
    "invalid_email",
    "invalid_display_name",
    "weak_password",
    "password_too_long",
    "age_required",
    "policy_required",
    "email_taken",
    "invalid_credentials",
    "email_not_verified",
    "account_closed",
    "unauthenticated",
    "invalid_token",
    "trial_ended",
    "reopen_too_late",
    "current_password_required",
    "cross_origin",
    "mail_failed",
    "internal",
    "unavailable",
];

/// Values the `kind` label of purges takes: closed accounts, expired sign-ups.
pub const PURGE_KINDS: &[&str] = &["closed", "unverified"];
/// Values the `outcome` label of log-ins takes.
pub const LOGIN_OUTCOMES: &[&str] = &["ok", "failed", "limited"];

#[derive(Debug, thiserror::Error)]
#[error("metric registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Values the `kind` label takes.
pub const KINDS: &[&str] = &["audio", "video"];
/// Values the `direction` label takes.
pub const DIRECTIONS: &[&str] = &["in", "out"];

/// Handles to every metric; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    process: Registry,
    /// Inputs refused, by reason.
    pub errors: IntCounterVec,
    /// WebSocket messages by direction (in/out) and message type.
    pub ws_messages: IntCounterVec,
    pub ws_connections: IntGauge,
    pub http_requests: IntCounterVec,
    pub rooms_created: IntCounter,
    /// Rooms signaling holds open.
    pub rooms_open: IntGauge,
    /// Participants present on a WebSocket, across all rooms.
    pub participants: IntGauge,
    /// Rooms the SFU forwards media in.
    pub sfu_rooms: IntGauge,
    pub sessions_started: IntCounter,
    pub sessions_ended: IntCounterVec,
    pub sessions_live: IntGauge,
    /// Admission to connected peer connection.
    pub connect_seconds: Histogram,
    /// Grant presented to the first media packet forwarded to or from the session.
    pub join_seconds: Histogram,
    pub session_seconds: Histogram,
    /// RTP received from publishers, by kind.
    pub rtp_received_packets: IntCounterVec,
    pub rtp_received_bytes: IntCounterVec,
    /// RTP sent to subscribers, by kind.
    pub rtp_forwarded_packets: IntCounterVec,
    pub rtp_forwarded_bytes: IntCounterVec,
    /// Every UDP packet and byte of media transport (RTP, RTCP, DTLS, STUN) by direction.
    pub transport_packets: IntCounterVec,
    pub transport_bytes: IntCounterVec,
    /// RTCP feedback by direction and type (pli, fir, nack).
    pub rtcp_feedback: IntCounterVec,
    pub retransmitted_packets: IntCounterVec,
    /// Receive to send inside the SFU, per forwarded packet.
    pub forwarding_seconds: Histogram,
    /// Loss, jitter and round-trip time as subscribers report them.
    pub receiver_loss_ratio: Histogram,
    pub receiver_jitter_seconds: Histogram,
    pub rtt_seconds: Histogram,
    /// Simulcast layer switches, up or down.
    pub layer_switches: IntCounterVec,
    pub keyframe_requests: IntCounter,
    /// Accounts signed up / closed.
    pub account_signups: IntCounter,
    pub account_closures: IntCounter,
    /// Log-in attempts by outcome.
    pub account_logins: IntCounterVec,
    /// Accounts whose records were purged, by kind.
    pub account_purges: IntCounterVec,
    /// Deletion requests not yet carried out, and those past their deadline.
    pub account_deletions_pending: IntGauge,
    pub account_deletions_overdue: IntGauge,
    /// How long the oldest purgeable deletion request has waited for the purge job.
    pub account_purge_lag_seconds: prometheus::Gauge,
    /// Completed purge runs, and when the last one finished (UNIX seconds).
    pub account_purge_runs: IntCounter,
    pub account_purge_last_run_seconds: prometheus::Gauge,
}

/// Creates a metric and registers it, so each is named once.
fn reg<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<T, prometheus::Error>,
) -> Result<T, MetricsError> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
}

fn counter_vec(
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

/// Forwarding latency buckets: 10 µs to 50 ms.
pub const FORWARDING_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
];

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let r = Registry::new_custom(Some("veil".into()), None)?;
        let process = Registry::new();
        process.register(Box::new(process::ProcessCollector::new()?))?;
        let m = Metrics {
            errors: reg(
                &r,
                counter_vec("errors_total", "Inputs refused, by reason", &["reason"]),
            )?,
            ws_messages: reg(
                &r,
                counter_vec(
                    "ws_messages_total",
                    "WebSocket messages by direction and type",
                    &["direction", "type"],
                ),
            )?,
            ws_connections: reg(
                &r,
                IntGauge::new("ws_connections", "Open WebSocket connections"),
            )?,
            http_requests: reg(
                &r,
                counter_vec(
                    "http_requests_total",
                    "HTTP API requests by route and status class",
                    &["route", "status"],
                ),
            )?,
            rooms_created: reg(&r, IntCounter::new("rooms_created_total", "Rooms created"))?,
            rooms_open: reg(&r, IntGauge::new("rooms", "Rooms signaling holds open"))?,
            participants: reg(
                &r,
                IntGauge::new("participants", "Participants present on a WebSocket"),
            )?,
            sfu_rooms: reg(
                &r,
                IntGauge::new("sfu_rooms", "Rooms with media sessions on this SFU"),
            )?,
            sessions_started: reg(
                &r,
                IntCounter::new("sfu_sessions_started_total", "Media sessions admitted"),
            )?,
            sessions_ended: reg(
                &r,
                counter_vec(
                    "sfu_sessions_ended_total",
                    "Media sessions ended, by reason",
                    &["reason"],
                ),
            )?,
            sessions_live: reg(
                &r,
                IntGauge::new("sfu_sessions", "Media sessions holding a peer connection"),
            )?,
            connect_seconds: reg(
                &r,
                histogram(
                    "sfu_connect_seconds",
                    "Time from admission to a connected peer connection",
                    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                ),
            )?,
            join_seconds: reg(
                &r,
                histogram(
                    "sfu_join_seconds",
                    "Time from the grant presented to the first media packet forwarded to or from the session",
                    &[0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0],
                ),
            )?,
            session_seconds: reg(
                &r,
                histogram(
                    "sfu_session_duration_seconds",
                    "Length of media sessions",
                    &[
                        10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
                    ],
                ),
            )?,
            rtp_received_packets: reg(
                &r,
                counter_vec(
                    "sfu_rtp_received_packets_total",
                    "RTP packets received from publishers",
                    &["kind"],
                ),
            )?,
            rtp_received_bytes: reg(
                &r,
                counter_vec(
                    "sfu_rtp_received_bytes_total",
                    "RTP payload bytes received from publishers",
                    &["kind"],
                ),
            )?,
            rtp_forwarded_packets: reg(
                &r,
                counter_vec(
                    "sfu_rtp_forwarded_packets_total",
                    "RTP packets sent to subscribers",
                    &["kind"],
                ),
            )?,
            rtp_forwarded_bytes: reg(
                &r,
                counter_vec(
                    "sfu_rtp_forwarded_bytes_total",
                    "RTP payload bytes sent to subscribers",
                    &["kind"],
                ),
            )?,
            transport_packets: reg(
                &r,
                counter_vec(
                    "sfu_transport_packets_total",
                    "UDP packets of media transport (RTP, RTCP, DTLS, STUN) by direction",
                    &["direction"],
                ),
            )?,
            transport_bytes: reg(
                &r,
                counter_vec(
                    "sfu_transport_bytes_total",
                    "UDP bytes of media transport (RTP, RTCP, DTLS, STUN) by direction",
                    &["direction"],
                ),
            )?,
            rtcp_feedback: reg(
                &r,
                counter_vec(
                    "sfu_rtcp_feedback_total",
                    "RTCP feedback messages by direction (in from subscribers, out to publishers) and type",
                    &["direction", "type"],
                ),
            )?,
            retransmitted_packets: reg(
                &r,
                counter_vec(
                    "sfu_retransmitted_packets_total",
                    "RTP retransmissions (NACK answered) by direction",
                    &["direction"],
                ),
            )?,
            forwarding_seconds: reg(
                &r,
                histogram(
                    "sfu_forwarding_latency_seconds",
                    "Time from receiving an RTP packet to handing it to a subscriber's transport",
                    FORWARDING_BUCKETS,
                ),
            )?,
            receiver_loss_ratio: reg(
                &r,
                histogram(
                    "sfu_receiver_loss_ratio",
                    "Fraction of packets lost as subscribers report it (RTCP receiver reports)",
                    &[0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
                ),
            )?,
            receiver_jitter_seconds: reg(
                &r,
                histogram(
                    "sfu_receiver_jitter_seconds",
                    "Interarrival jitter as subscribers report it",
                    &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5],
                ),
            )?,
            rtt_seconds: reg(
                &r,
                histogram(
                    "sfu_rtt_seconds",
                    "Round-trip time between the SFU and its peers",
                    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
                ),
            )?,
            layer_switches: reg(
                &r,
                counter_vec(
                    "sfu_layer_switches_total",
                    "Simulcast layer switches by direction",
                    &["direction"],
                ),
            )?,
            keyframe_requests: reg(
                &r,
                IntCounter::new(
                    "sfu_keyframe_requests_total",
                    "Key frame requests (PLI) sent to publishers after throttling",
                ),
            )?,
            account_signups: reg(
                &r,
                IntCounter::new("account_signups_total", "Accounts signed up"),
            )?,
            account_closures: reg(
                &r,
                IntCounter::new(
                    "account_closures_total",
                    "Accounts closed (consent withdrawn)",
                ),
            )?,
            account_logins: reg(
                &r,
                counter_vec(
                    "account_logins_total",
                    "Log-in attempts by outcome",
                    &["outcome"],
                ),
            )?,
            account_purges: reg(
                &r,
                counter_vec(
                    "account_purges_total",
                    "Accounts whose records were deleted, by kind (closed, unverified)",
                    &["kind"],
                ),
            )?,
            account_deletions_pending: reg(
                &r,
                IntGauge::new(
                    "account_deletions_pending",
                    "Closed accounts whose records await the purge",
                ),
            )?,
            account_deletions_overdue: reg(
                &r,
                IntGauge::new(
                    "account_deletions_overdue",
                    "Closed accounts past their 7-working-day deletion deadline",
                ),
            )?,
            account_purge_lag_seconds: reg(
                &r,
                prometheus::Gauge::new(
                    "account_purge_lag_seconds",
                    "How long the oldest purgeable deletion request has waited",
                ),
            )?,
            account_purge_runs: reg(
                &r,
                IntCounter::new("account_purge_runs_total", "Completed purge job runs"),
            )?,
            account_purge_last_run_seconds: reg(
                &r,
                prometheus::Gauge::new(
                    "account_purge_last_run_timestamp_seconds",
                    "When the purge job last completed (UNIX time)",
                ),
            )?,
            registry: r,
            process,
        };
        // Every fixed label value exists from the start, so dashboards show zeros
        // rather than gaps.
        for reason in ERROR_REASONS {
            m.errors.with_label_values(&[reason]);
        }
        for kind in KINDS {
            m.rtp_received_packets.with_label_values(&[kind]);
            m.rtp_received_bytes.with_label_values(&[kind]);
            m.rtp_forwarded_packets.with_label_values(&[kind]);
            m.rtp_forwarded_bytes.with_label_values(&[kind]);
        }
        for direction in DIRECTIONS {
            m.transport_packets.with_label_values(&[direction]);
            m.transport_bytes.with_label_values(&[direction]);
            m.retransmitted_packets.with_label_values(&[direction]);
            for t in ["pli", "fir", "nack"] {
                m.rtcp_feedback.with_label_values(&[direction, t]);
            }
        }
        for d in ["up", "down"] {
            m.layer_switches.with_label_values(&[d]);
        }
        for kind in PURGE_KINDS {
            m.account_purges.with_label_values(&[kind]);
        }
        for outcome in LOGIN_OUTCOMES {
            m.account_logins.with_label_values(&[outcome]);
        }
        Ok(m)
    }

    /// Counts a refused input. Unknown reasons are folded into `bad_request` so a
    /// caller's mistake can never mint a new label value.
    pub fn error(&self, reason: &str) {
        let reason = if ERROR_REASONS.contains(&reason) {
            reason
        } else {
            "bad_request"
        };
        self.errors.with_label_values(&[reason]).inc();
    }

    /// Prometheus text exposition of every metric, process metrics included.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The content type `/metrics` answers with.
    pub fn content_type() -> &'static str {
        "text/plain; version=0.0.4"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_reasons_do_not_create_labels() {
        let m = Metrics::new().unwrap();
        m.error("grant_expired");
        m.error("someone@example.org");
        let text = m.render();
        assert!(text.contains(r#"veil_errors_total{reason="grant_expired"} 1"#));
        assert!(text.contains(r#"veil_errors_total{reason="bad_request"} 1"#));
        assert!(!text.contains("example.org"));
    }
}
