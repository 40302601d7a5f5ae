//! Published tracks and their subscriptions (mediasoup's Producer and Consumer).
//!
//! A [`Producer`] is one track a participant publishes, with up to three simulcast
//! layers; a [`Consumer`] is that track as forwarded to one subscriber. Forwarding
//! clones the RTP payload by reference and never reads past the clear VP8 payload
//! header: the payload is SFrame ciphertext the SFU cannot and must not interpret.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp::header::{Extension, Header};
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;

use veil_metrics::Metrics;

use crate::forwarder::ForwardState;
use crate::keyframe;
use crate::signal::{Layer, MediaKind, SessionId, TrackInfo};

/// A subscriber asking for key frames more often than this is served from the last one.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// A simulcast layer not heard from for this long is treated as gone.
const LAYER_TIMEOUT: Duration = Duration::from_millis(1500);

/// Header extensions whose values are forwarded (with their ids remapped). Everything
/// else describes the publisher's own transport (mid, rid, transport-cc, abs-send-time)
/// and is regenerated or dropped on the subscriber's leg.
const FORWARDED_EXTENSIONS: &[&str] = &[
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:3gpp:video-orientation",
];

/// Marks a session's first forwarded media packet (to or from it), for the join-time
/// histogram: from the grant presented to media flowing.
pub struct JoinClock {
    started: Instant,
    done: AtomicBool,
}

impl JoinClock {
    pub fn new(started: Instant) -> Self {
        JoinClock {
            started,
            done: AtomicBool::new(false),
        }
    }

    pub fn media_flowed(&self, metrics: &Metrics) {
        if !self.done.load(Ordering::Relaxed) && !self.done.swap(true, Ordering::AcqRel) {
            metrics
                .join_seconds
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodecFamily {
    Vp8,
    H264,
    Other,
}

impl CodecFamily {
    fn of(mime: &str) -> Self {
        if mime.eq_ignore_ascii_case("video/vp8") {
            CodecFamily::Vp8
        } else if mime.eq_ignore_ascii_case("video/h264") {
            CodecFamily::H264
        } else {
            CodecFamily::Other
        }
    }

    fn is_keyframe(self, payload: &[u8]) -> bool {
        match self {
            CodecFamily::Vp8 => keyframe::vp8_is_keyframe(payload),
            CodecFamily::H264 => keyframe::h264_is_keyframe(payload),
            CodecFamily::Other => false,
        }
    }
}

#[derive(Debug, Default)]
struct LayerTable {
    /// Incoming SSRC → layer (`None` for a single-layer track).
    by_ssrc: HashMap<u32, Option<Layer>>,
    last_seen: HashMap<Option<Layer>, Instant>,
    last_keyframe_request: HashMap<u32, Instant>,
}

/// One published track.
pub struct Producer {
    pub id: String,
    pub publisher: String,
    /// The publishing session (a participant that rejoins gets a new one).
    pub session: SessionId,
    pub kind: MediaKind,
    pub codec: RTCRtpCodec,
    /// Simulcast layers announced in the publisher's SDP; empty when single-layer.
    pub layers: Vec<Layer>,
    /// The publisher's header-extension ids by URI (for remapping).
    pub extensions: Vec<(String, u8)>,
    family: CodecFamily,
    remote: Arc<dyn TrackRemote>,
    metrics: Arc<Metrics>,
    /// This track's kind-labelled counters, looked up once instead of per packet.
    counters: KindCounters,
    join: Arc<JoinClock>,
    table: Mutex<LayerTable>,
    consumers: RwLock<Vec<Arc<Consumer>>>,
}

impl Producer {
    // Each argument is a distinct fact about the published track, known only at open.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        publisher: String,
        session: SessionId,
        kind: MediaKind,
        codec: RTCRtpCodec,
        layers: Vec<Layer>,
        extensions: Vec<(String, u8)>,
        remote: Arc<dyn TrackRemote>,
        metrics: Arc<Metrics>,
        join: Arc<JoinClock>,
    ) -> Self {
        let family = CodecFamily::of(&codec.mime_type);
        let counters = KindCounters::new(&metrics, kind);
        Producer {
            id,
            publisher,
            session,
            kind,
            codec,
            layers,
            extensions,
            family,
            remote,
            metrics,
            counters,
            join,
            table: Mutex::new(LayerTable::default()),
            consumers: RwLock::new(Vec::new()),
        }
    }

    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            track: self.id.clone(),
            participant: self.publisher.clone(),
            kind: self.kind,
            layers: self.layers.clone(),
        }
    }

    /// Records which layer an incoming SSRC carries (from the track's open event).
    pub fn add_stream(&self, ssrc: u32, rid: Option<&str>) {
        let layer = rid.and_then(Layer::from_rid);
        let mut table = lock(&self.table);
        table.by_ssrc.insert(ssrc, layer);
    }

    pub fn add_consumer(&self, consumer: Arc<Consumer>) {
        write(&self.consumers).push(consumer);
    }

    pub fn remove_consumer(&self, subscriber: &str) {
        write(&self.consumers).retain(|c| c.subscriber != subscriber);
    }

    pub fn consumer_count(&self) -> usize {
        read(&self.consumers).len()
    }

    fn available_layers(table: &LayerTable, now: Instant) -> Vec<Layer> {
        let mut layers: Vec<Layer> = table
            .last_seen
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) < LAYER_TIMEOUT)
            .filter_map(|(layer, _)| *layer)
            .collect();
        layers.sort();
        layers
    }

    /// Asks the publisher for a key frame on `layer`, at most once per
    /// [`KEYFRAME_REQUEST_INTERVAL`] per stream. Returns whether a request was sent.
    pub async fn request_keyframe(&self, layer: Option<Layer>, now: Instant) -> bool {
        let ssrc = {
            let mut table = lock(&self.table);
            let Some(ssrc) = table
                .by_ssrc
                .iter()
                .find(|(_, l)| **l == layer)
                .map(|(ssrc, _)| *ssrc)
            else {
                return false;
            };
            if let Some(last) = table.last_keyframe_request.get(&ssrc)
                && now.saturating_duration_since(*last) < KEYFRAME_REQUEST_INTERVAL
            {
                return false;
            }
            table.last_keyframe_request.insert(ssrc, now);
            ssrc
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        self.metrics.keyframe_requests.inc();
        self.count_feedback("out", "pli");
        self.remote.write_rtcp(vec![Box::new(pli)]).await.is_ok()
    }

    /// Counts an RTCP feedback message about this track (`in` from a subscriber, `out`
    /// to the publisher).
    pub fn count_feedback(&self, direction: &'static str, kind: &'static str) {
        self.metrics
            .rtcp_feedback
            .with_label_values(&[direction, kind])
            .inc();
    }

    /// Forwards one incoming packet to every ready consumer.
    pub async fn forward(&self, packet: rtp::Packet) {
        let now = Instant::now();
        self.counters.received_packets.inc();
        self.counters
            .received_bytes
            .inc_by(packet.payload.len() as u64);
        let (layer, available) = {
            let mut table = lock(&self.table);
            let Some(layer) = table.by_ssrc.get(&packet.header.ssrc).copied() else {
                return;
            };
            table.last_seen.insert(layer, now);
            (layer, Self::available_layers(&table, now))
        };
        let is_video = self.kind == MediaKind::Video;
        let keyframe = is_video && self.family.is_keyframe(&packet.payload);
        let consumers: Vec<Arc<Consumer>> = read(&self.consumers).clone();
        let (mut packets, mut bytes) = (0u64, 0u64);
        for consumer in consumers {
            let prepared = consumer.prepare(&packet, layer, keyframe, is_video, &available, now);
            if let Some(direction) = prepared.switched {
                self.metrics
                    .layer_switches
                    .with_label_values(&[direction])
                    .inc();
            }
            if let Some(out) = prepared.packet {
                let len = out.payload.len() as u64;
                // A closed subscriber leg errors here; its session is being torn down.
                if consumer.track.write_rtp(out).await.is_ok() {
                    packets += 1;
                    bytes += len;
                    self.metrics
                        .forwarding_seconds
                        .observe(now.elapsed().as_secs_f64());
                    consumer.join.media_flowed(&self.metrics);
                }
            }
            if let Some(wanted) = prepared.wants_keyframe {
                self.request_keyframe(wanted, now).await;
            }
        }
        if packets > 0 {
            self.join.media_flowed(&self.metrics);
            self.counters.forwarded_packets.inc_by(packets);
            self.counters.forwarded_bytes.inc_by(bytes);
        }
    }
}

/// The `kind`-labelled RTP counters of one track.
struct KindCounters {
    received_packets: prometheus::IntCounter,
    received_bytes: prometheus::IntCounter,
    forwarded_packets: prometheus::IntCounter,
    forwarded_bytes: prometheus::IntCounter,
}

impl KindCounters {
    fn new(metrics: &Metrics, kind: MediaKind) -> Self {
        let kind = match kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        };
        KindCounters {
            received_packets: metrics.rtp_received_packets.with_label_values(&[kind]),
            received_bytes: metrics.rtp_received_bytes.with_label_values(&[kind]),
            forwarded_packets: metrics.rtp_forwarded_packets.with_label_values(&[kind]),
            forwarded_bytes: metrics.rtp_forwarded_bytes.with_label_values(&[kind]),
        }
    }
}

/// Per-subscriber negotiated details, known once the subscriber's leg is negotiated.
#[derive(Debug, Clone, Default)]
pub struct LegParameters {
    pub payload_type: u8,
    /// (publisher id, subscriber id) pairs for forwarded header extensions.
    pub extension_ids: Vec<(u8, u8)>,
}

impl LegParameters {
    /// Builds the extension remap from both legs' URI → id tables.
    pub fn new(payload_type: u8, publisher: &[(String, u8)], subscriber: &[(String, u8)]) -> Self {
        let extension_ids = publisher
            .iter()
            .filter(|(uri, _)| FORWARDED_EXTENSIONS.contains(&uri.as_str()))
            .filter_map(|(uri, pub_id)| {
                subscriber
                    .iter()
                    .find(|(u, _)| u == uri)
                    .map(|(_, sub_id)| (*pub_id, *sub_id))
            })
            .collect();
        LegParameters {
            payload_type,
            extension_ids,
        }
    }
}

struct ConsumerState {
    forward: ForwardState,
    leg: Option<LegParameters>,
}

/// What [`Consumer::prepare`] decided for one packet.
struct Prepared {
    packet: Option<rtp::Packet>,
    /// The layer a key frame is needed on, if any.
    wants_keyframe: Option<Option<Layer>>,
    /// `up` or `down` when this packet switched simulcast layers.
    switched: Option<&'static str>,
}

/// One published track as forwarded to one subscriber.
pub struct Consumer {
    pub subscriber: String,
    pub producer: Weak<Producer>,
    pub track: Arc<TrackLocalStaticRTP>,
    join: Arc<JoinClock>,
    ready: AtomicBool,
    state: Mutex<ConsumerState>,
}

impl Consumer {
    pub fn new(
        subscriber: String,
        producer: &Arc<Producer>,
        track: Arc<TrackLocalStaticRTP>,
        out_ssrc: u32,
        join: Arc<JoinClock>,
    ) -> Self {
        Consumer {
            subscriber,
            producer: Arc::downgrade(producer),
            track,
            join,
            ready: AtomicBool::new(false),
            state: Mutex::new(ConsumerState {
                forward: ForwardState::new(out_ssrc, producer.codec.clock_rate, Layer::Full),
                leg: None,
            }),
        }
    }

    pub fn set_leg(&self, leg: LegParameters) {
        lock(&self.state).leg = Some(leg);
    }

    pub fn has_leg(&self) -> bool {
        lock(&self.state).leg.is_some()
    }

    /// Marks the subscriber's transport as able to carry media.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_max_layer(&self, layer: Layer) {
        lock(&self.state).forward.selector.set_max(layer);
    }

    /// The layer this consumer currently receives or is waiting to receive.
    pub fn wanted_layer(&self, available: &[Layer]) -> Option<Layer> {
        let state = lock(&self.state);
        match state.forward.selector.current() {
            Some(current) => current,
            None => state.forward.selector.target(available),
        }
    }

    /// Decides and rewrites one packet for this subscriber; also reports the layer a
    /// key frame is needed on and whether the layer switched.
    fn prepare(
        &self,
        packet: &rtp::Packet,
        layer: Option<Layer>,
        keyframe: bool,
        is_video: bool,
        available: &[Layer],
        now: Instant,
    ) -> Prepared {
        let mut prepared = Prepared {
            packet: None,
            wants_keyframe: None,
            switched: None,
        };
        if !self.is_ready() {
            return prepared;
        }
        let mut state = lock(&self.state);
        let Some(leg) = state.leg.clone() else {
            return prepared;
        };
        let before = state.forward.selector.current();
        let h = &packet.header;
        let rewritten = state.forward.on_packet(
            layer,
            keyframe,
            is_video,
            available,
            h.ssrc,
            h.sequence_number,
            h.timestamp,
            now,
        );
        prepared.wants_keyframe = if is_video {
            state.forward.selector.wants_keyframe(available)
        } else {
            None
        };
        if let (Some(Some(from)), Some(Some(to))) = (before, state.forward.selector.current())
            && from != to
        {
            prepared.switched = Some(if to > from { "up" } else { "down" });
        }
        drop(state);
        let Some(r) = rewritten else {
            return prepared;
        };
        let extensions: Vec<Extension> = h
            .extensions
            .iter()
            .filter_map(|ext| {
                leg.extension_ids
                    .iter()
                    .find(|(from, _)| *from == ext.id)
                    .map(|(_, to)| Extension {
                        id: *to,
                        payload: ext.payload.clone(),
                    })
            })
            .collect();
        let header = Header {
            version: 2,
            padding: false,
            extension: !extensions.is_empty(),
            marker: h.marker,
            payload_type: leg.payload_type,
            sequence_number: r.sequence_number,
            timestamp: r.timestamp,
            ssrc: r.ssrc,
            csrc: Vec::new(),
            extension_profile: if extensions.iter().all(|e| e.id <= 14) {
                0xBEDE
            } else {
                0x1000
            },
            extensions,
            ..Default::default()
        };
        prepared.packet = Some(rtp::Packet {
            header,
            // Same bytes, shared by reference: the SFU never alters a payload.
            payload: packet.payload.clone(),
        });
        prepared
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_extensions_are_remapped() {
        let publisher = vec![
            ("urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_string(), 1),
            ("urn:ietf:params:rtp-hdrext:sdes:mid".to_string(), 4),
            ("urn:3gpp:video-orientation".to_string(), 7),
        ];
        let subscriber = vec![
            ("urn:ietf:params:rtp-hdrext:sdes:mid".to_string(), 1),
            (
                "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_string(),
                10,
            ),
        ];
        let leg = LegParameters::new(111, &publisher, &subscriber);
        assert_eq!(leg.payload_type, 111);
        assert_eq!(leg.extension_ids, vec![(1, 10)]);
    }

    #[test]
    fn codec_family_by_mime() {
        assert_eq!(CodecFamily::of("video/VP8"), CodecFamily::Vp8);
        assert_eq!(CodecFamily::of("video/h264"), CodecFamily::H264);
        assert_eq!(CodecFamily::of("audio/opus"), CodecFamily::Other);
    }
}
