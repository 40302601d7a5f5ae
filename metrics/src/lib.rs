//! Every metric Veil exports, defined in one place, and the text rendering the
//! `/metrics` endpoints serve.
//!
//! Must never: take a label value from input. Labels come only from the fixed sets
//! below (direction, kind, message type, reason, outcome) — never a room, participant,
//! account, IP address or user agent — so a metric can never identify anyone (P2).

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
];

#[derive(Debug, thiserror::Error)]
#[error("metric registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Handles to every metric; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// Inputs refused, by reason.
    pub errors: IntCounterVec,
    /// WebSocket messages by direction (in/out) and message type.
    pub ws_messages: IntCounterVec,
    pub ws_connections: IntGauge,
    pub http_requests: IntCounterVec,
    pub rooms_created: IntCounter,
    pub sessions_started: IntCounter,
    pub sessions_ended: IntCounterVec,
    pub sessions_live: IntGauge,
    /// Admission to connected peer connection.
    pub connect_seconds: Histogram,
    pub rtp_forwarded_packets: IntCounterVec,
    pub rtp_forwarded_bytes: IntCounterVec,
    pub keyframe_requests: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("veil".into()), None)?;
        let errors = IntCounterVec::new(
            Opts::new("errors_total", "Inputs refused, by reason"),
            &["reason"],
        )?;
        let ws_messages = IntCounterVec::new(
            Opts::new(
                "ws_messages_total",
                "WebSocket messages by direction and type",
            ),
            &["direction", "type"],
        )?;
        let ws_connections = IntGauge::new("ws_connections", "Open WebSocket connections")?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP API requests by route and status class",
            ),
            &["route", "status"],
        )?;
        let rooms_created = IntCounter::new("rooms_created_total", "Rooms created")?;
        let sessions_started =
            IntCounter::new("sfu_sessions_started_total", "Media sessions admitted")?;
        let sessions_ended = IntCounterVec::new(
            Opts::new(
                "sfu_sessions_ended_total",
                "Media sessions ended, by reason",
            ),
            &["reason"],
        )?;
        let sessions_live =
            IntGauge::new("sfu_sessions", "Media sessions holding a peer connection")?;
        let connect_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sfu_connect_seconds",
                "Time from admission to a connected peer connection",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let rtp_forwarded_packets = IntCounterVec::new(
            Opts::new(
                "sfu_rtp_forwarded_packets_total",
                "RTP packets sent to subscribers",
            ),
            &["kind"],
        )?;
        let rtp_forwarded_bytes = IntCounterVec::new(
            Opts::new(
                "sfu_rtp_forwarded_bytes_total",
                "RTP payload bytes sent to subscribers",
            ),
            &["kind"],
        )?;
        let keyframe_requests = IntCounter::new(
            "sfu_keyframe_requests_total",
            "Key frame requests (PLI) sent to publishers after throttling",
        )?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(ws_messages.clone()))?;
        registry.register(Box::new(ws_connections.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(rooms_created.clone()))?;
        registry.register(Box::new(sessions_started.clone()))?;
        registry.register(Box::new(sessions_ended.clone()))?;
        registry.register(Box::new(sessions_live.clone()))?;
        registry.register(Box::new(connect_seconds.clone()))?;
        registry.register(Box::new(rtp_forwarded_packets.clone()))?;
        registry.register(Box::new(rtp_forwarded_bytes.clone()))?;
        registry.register(Box::new(keyframe_requests.clone()))?;
        Ok(Metrics {
            registry,
            errors,
            ws_messages,
            ws_connections,
            http_requests,
            rooms_created,
            sessions_started,
            sessions_ended,
            sessions_live,
            connect_seconds,
            rtp_forwarded_packets,
            rtp_forwarded_bytes,
            keyframe_requests,
        })
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

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
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
