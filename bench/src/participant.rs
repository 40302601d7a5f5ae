//! The headless participant: a real WebRTC peer on the same `webrtc` crate as the SFU,
//! joining exactly as a browser does — `POST /api/rooms/{room}/join`, then the grant on
//! the WebSocket, then one peer connection negotiated as the *polite* side of perfect
//! negotiation. It publishes synthetic audio and VP8-shaped video (optionally three
//! simulcast layers) and records everything it receives, so tests and the load
//! generator can check what the SFU forwarded.
//!
//! Given the room secret ([`ParticipantConfig::e2ee_secret`]) it is a full end-to-end
//! encryption member, as a browser is (`web/meeting.js`): it runs the key exchange of
//! `e2ee.rs` over the WebSocket, encrypts every frame it sends with SFrame, and
//! reassembles (`depacketize.rs`) and decrypts every frame it receives, counting per
//! publisher what decrypted and whether the result is valid VP8 or Opus.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp::header::Header;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability,
    RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;
use veil_sfu::keyframe::vp8_is_keyframe;
use veil_sfu::{IceCandidate, Layer, TrackInfo};
use veil_signaling::message::{ClientMessage, MediaState, Peer, ServerMessage};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::depacketize::{Vp8Assembler, opus_packet, vp8_is_key_frame, vp8_key_frame_header};
use crate::e2ee::{E2ee, E2eeError};
use crate::media::{
    AUDIO_CLOCK, AUDIO_PACKETS_PER_SECOND, Frame, VIDEO_CLOCK, audio_payload, layer_bitrate,
    opus_frame, packetize, split_frame, vp8_frame,
};
use crate::payload::{Kind, now_micros, parse_body, participant_hash, payload_hash};
use crate::sframe::{Codec, Encryptor, Header as SframeHeader, clear_prefix_len};

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const RRID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";

/// How one video source is shaped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoConfig {
    pub fps: u32,
    /// Bits per second of the full layer (lower simulcast layers get a share).
    pub bitrate_bps: u64,
    /// A key frame at least this often, and whenever the SFU asks for one.
    pub keyframe_interval: Duration,
    /// Publish three layers (`q`, `h`, `f`) instead of one.
    pub simulcast: bool,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            fps: 30,
            bitrate_bps: 720_000,
            keyframe_interval: Duration::from_secs(3),
            simulcast: false,
        }
    }
}

/// What a headless participant joins and publishes.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// Base URL of Veil's HTTP API, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    pub room: String,
    pub display_name: String,
    pub audio: bool,
    pub video: Option<VideoConfig>,
    pub screen: Option<VideoConfig>,
    /// Keep a hash of every payload sent and received (tests compare them).
    pub record_payloads: bool,
    /// The room's host key, to join as its host.
    pub host_key: Option<String>,
    /// A session cookie (`name=value`) to join as a logged-in account, whose usage
    /// record then holds this session.
    pub session_cookie: Option<String>,
    /// The room secret (the link's fragment). With it the participant joins the key
    /// exchange, encrypts what it sends and decrypts what it receives; with a wrong one
    /// it still joins and receives, but nobody verifies it and it decrypts nothing.
    pub e2ee_secret: Option<String>,
    /// Keep every received RTP payload and reassembled frame and everything sent to the
    /// server ([`Participant::take_captured`]), for tests that search them.
    pub capture: bool,
}

impl ParticipantConfig {
    /// Publishes audio and one 30 fps VP8 camera; records payload hashes.
    pub fn new(server: &str, room: &str, display_name: &str) -> Self {
        ParticipantConfig {
            server: server.trim_end_matches('/').to_string(),
            room: room.to_string(),
            display_name: display_name.to_string(),
            audio: true,
            video: Some(VideoConfig::default()),
            screen: None,
            record_payloads: true,
            host_key: None,
            session_cookie: None,
            e2ee_secret: None,
            capture: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    #[error("HTTP join request failed: {0}")]
    Http(String),
    #[error("join refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("WebSocket: {0}")]
    WebSocket(String),
    #[error("peer connection: {0}")]
    PeerConnection(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("end-to-end encryption: {0}")]
    E2ee(#[from] E2eeError),
}

fn pc_err(e: impl std::fmt::Display) -> ParticipantError {
    ParticipantError::PeerConnection(e.to_string())
}

/// What one received track delivered.
#[derive(Debug, Clone, Default)]
pub struct RemoteTrackStats {
    /// The track id the SFU gave it (`msid`), as in `track_published`.
    pub track: String,
    /// The publisher's participant id (`msid` stream id).
    pub publisher: String,
    pub kind: Option<Kind>,
    pub packets: u64,
    pub payload_bytes: u64,
    pub first_packet: Option<Instant>,
    pub first_keyframe: Option<Instant>,
    pub keyframes: u64,
    /// Packets received per simulcast layer, from the payload body.
    pub layers: BTreeMap<Option<Layer>, u64>,
    /// Each change of layer: (new layer, did the first packet of it start a key frame).
    pub layer_switches: Vec<(Option<Layer>, bool)>,
    /// Sequence numbers skipped (a gap of n counts n).
    pub sequence_gaps: u64,
    /// Packets that arrived with a sequence number not after the previous one.
    pub sequence_reorders: u64,
    /// Payloads that were not a body this tool sent.
    pub foreign_payloads: u64,
    /// Distinct body counters per (publisher hash, kind, layer), to measure loss.
    pub counters: HashMap<([u8; 8], Option<Layer>), CounterRange>,
    /// One-way latency (send time in the payload → arrival), microseconds.
    pub latency_sum_micros: u64,
    pub latency_max_micros: u64,
    /// The same one-way latencies as a histogram, for percentiles over a window.
    pub latency: crate::histogram::LatencyHistogram,
    pub ended: bool,
    last_sequence: Option<u16>,
    last_layer: Option<Option<Layer>>,
}

/// The packet counters seen on one stream: how many distinct, and the span.
#[derive(Debug, Clone, Copy, Default)]
pub struct CounterRange {
    pub first: u64,
    pub last: u64,
    pub received: u64,
}

impl CounterRange {
    /// Counts one received packet carrying `counter` on a stream.
    pub fn observe(
        ranges: &mut HashMap<([u8; 8], Option<Layer>), CounterRange>,
        key: ([u8; 8], Option<Layer>),
        counter: u64,
    ) {
        let range = ranges.entry(key).or_insert(CounterRange {
            first: counter,
            last: counter,
            received: 0,
        });
        range.first = range.first.min(counter);
        range.last = range.last.max(counter);
        range.received += 1;
    }

    /// Share of the packets sent between the first and last received that arrived.
    pub fn delivery(&self) -> f64 {
        let span = self.last.saturating_sub(self.first) + 1;
        self.received as f64 / span as f64
    }
}

/// Everything sent on one stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct SentStats {
    pub packets: u64,
    pub frames: u64,
    pub keyframes: u64,
    pub keyframe_requests: u64,
}

/// What one publisher's frames of one kind (audio or video) did at this receiver.
#[derive(Debug, Clone, Default)]
pub struct FrameStats {
    /// Frames reassembled from RTP (ciphertext).
    pub frames: u64,
    /// Frames lost to missing or malformed packets before reassembly finished.
    pub discarded: u64,
    pub decrypted: u64,
    /// Frames that did not decrypt (no key yet, wrong key, tampered, replayed).
    pub failed: u64,
    /// Frames per SFrame KID, read from the clear SFrame header (no key needed).
    pub kids: BTreeMap<u64, u64>,
    /// Decrypted VP8 key frames.
    pub key_frames: u64,
    /// Decrypted VP8 key frames with the start code `9d 01 2a` at bytes 3..6, a valid
    /// header (`depacketize::vp8_key_frame_header`) and the clear prefix unchanged.
    pub valid_key_frames: u64,
    /// Width and height of the last valid key frame.
    pub dimensions: Option<(u16, u16)>,
    /// Decrypted Opus frames that pass RFC 6716 §3.4 (R1–R7), and those that do not.
    pub valid_opus: u64,
    pub invalid_opus: u64,
}

/// One reassembled (still encrypted) frame a capturing participant kept.
#[derive(Debug, Clone)]
pub struct CapturedFrame {
    pub publisher: String,
    pub codec: Codec,
    /// The KID of its SFrame header, if the header parses.
    pub kid: Option<u64>,
    pub frame: Vec<u8>,
}

/// What a capturing participant ([`ParticipantConfig::capture`]) kept.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Every RTP payload received, as the SFU forwarded it.
    pub payloads: Vec<Bytes>,
    pub frames: Vec<CapturedFrame>,
    /// Everything sent to the server, as sent: the join request's body (when joined
    /// with [`Participant::join`]), then every WebSocket message.
    pub sent_messages: Vec<String>,
    /// Bytes held in `payloads` and `frames`.
    bytes: usize,
}

/// A capture keeps at most this much media, so a long run cannot exhaust memory.
const MAX_CAPTURE_BYTES: usize = 256 << 20;

#[derive(Default)]
struct Record {
    tracks: HashMap<String, RemoteTrackStats>,
    received_hashes: HashSet<u64>,
    sent_hashes: HashSet<u64>,
    sent: BTreeMap<(Kind, Option<Layer>), SentStats>,
    published: HashMap<String, TrackInfo>,
    peers: HashMap<String, Peer>,
    e2ee: Vec<(String, String)>,
    errors: Vec<String>,
    closed: Option<String>,
    /// Media resets (lost SFU node) this participant recovered from.
    media_resets: u64,
    /// Sockets resumed after a drop.
    resumes: u64,
    /// Presence as announced: `joined:<id>` / `left:<id>`, in order.
    presence_log: Vec<String>,
    /// End-to-end encryption per (publisher, audio or video).
    frames: BTreeMap<(String, Kind), FrameStats>,
    captured: Captured,
}

struct Shared {
    record: Mutex<Record>,
    record_payloads: bool,
    connected: watch::Sender<bool>,
    /// Bumped each time one of our offers is answered (our senders are negotiated).
    negotiated: watch::Sender<u64>,
    participant: String,
    /// The current peer connection's number (a media reset builds a new one).
    generation: std::sync::atomic::AtomicU64,
    /// The task reading each received track, by track id.
    receivers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// The key exchange and receivers' key rings, when given a secret.
    e2ee: Mutex<Option<E2ee>>,
    /// The key outgoing frames are encrypted with. It trails [`E2ee::encryptor`] after a
    /// rotation by [`KEY_SWITCH_DELAY`], as in the browser, so members have the new key
    /// before frames need it.
    sender_key: Mutex<Option<Arc<Encryptor>>>,
    /// Reassemble received frames (with a secret, or when capturing).
    reassemble: bool,
    capture: bool,
}

/// How long after sending a rotated key a sender starts using it (`web/meeting.js`).
const KEY_SWITCH_DELAY: Duration = Duration::from_secs(1);
/// A video receiver holding a publisher's key asks for a key frame at most this often
/// until one decrypts, as a browser's decoder does when it has nothing to decode from.
const KEY_FRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

impl Shared {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn e2ee(&self) -> std::sync::MutexGuard<'_, Option<E2ee>> {
        lock(&self.e2ee)
    }
}

enum Command {
    Send(ClientMessage),
    LocalCandidate(RTCIceCandidateInit),
    /// Drop the socket as a network failure would, and resume on a new one.
    Reconnect,
    /// Close the socket without a `leave`.
    Close,
    Leave,
}

struct Events {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Which peer connection this is; events of a replaced one are ignored.
    generation: u64,
}

impl Events {
    fn current(&self) -> bool {
        self.shared.generation.load(Ordering::Acquire) == self.generation
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if self.current()
            && let Ok(init) = event.candidate.to_json()
        {
            let _ = self.commands.send(Command::LocalCandidate(init));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(?state, "participant connection state");
        if self.current() {
            self.shared
                .connected
                .send_replace(state == RTCPeerConnectionState::Connected);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if !self.current() {
            return;
        }
        let id = track.track_id().await;
        let task = tokio::spawn(receive_track(track, self.shared.clone()));
        // Replaced (and so ended) when renegotiation removes the track.
        if let Some(old) = lock(&self.shared.receivers).insert(id, task.abort_handle()) {
            old.abort();
        }
        lock(&self.tasks).push(task);
    }
}

/// A joined headless participant. Dropping it stops its tasks; [`Participant::leave`]
/// leaves cleanly.
pub struct Participant {
    pub id: String,
    pub room: String,
    /// When the grant was presented on the WebSocket.
    pub joined_at: Instant,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    /// The current peer connection (replaced when a lost SFU node forces a rejoin).
    pc: Arc<Mutex<Arc<dyn PeerConnection>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    signaling: Option<JoinHandle<()>>,
}

#[derive(serde::Serialize)]
struct JoinBody<'a> {
    display_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_key: Option<&'a str>,
}

impl<'a> JoinBody<'a> {
    fn of(config: &'a ParticipantConfig) -> Self {
        JoinBody {
            display_name: &config.display_name,
            host_key: config.host_key.as_deref(),
        }
    }
}

#[derive(serde::Deserialize)]
struct JoinReply {
    participant: String,
    grant: String,
    ws: String,
}

#[derive(serde::Deserialize)]
struct ErrorReply {
    error: String,
    message: String,
}

/// Asks signaling for a join grant: `(participant, grant, ws path)`.
pub async fn request_grant(
    config: &ParticipantConfig,
) -> Result<(String, String, String), ParticipantError> {
    let url = format!("{}/api/rooms/{}/join", config.server, config.room);
    let mut request = reqwest::Client::new().post(url).json(&JoinBody::of(config));
    if let Some(cookie) = &config.session_cookie {
        request = request.header("cookie", cookie);
    }
    let response = request
        .send()
        .await
        .map_err(|e| ParticipantError::Http(e.to_string()))?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(match response.json::<ErrorReply>().await {
            Ok(e) => ParticipantError::Refused {
                code: e.error,
                message: e.message,
            },
            Err(_) => ParticipantError::Http(format!("status {status}")),
        });
    }
    let reply: JoinReply = response
        .json()
        .await
        .map_err(|e| ParticipantError::Http(e.to_string()))?;
    Ok((reply.participant, reply.grant, reply.ws))
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket that joined.
pub struct Joined {
    pub ws: WsStream,
    pub participant: String,
    pub room: String,
    /// Who else was present.
    pub peers: Vec<Peer>,
    /// The token that resumes this participant on a new socket.
    pub resume: Option<String>,
}

/// Resumes a participant on a new socket after the previous one dropped.
pub async fn resume_socket(server: &str, token: &str) -> Result<Joined, ParticipantError> {
    first_message(
        server,
        "/ws",
        &ClientMessage::Resume {
            token: token.to_string(),
        },
    )
    .await
}

/// Opens the WebSocket and presents a grant; returns once `joined` arrives.
pub async fn open_socket(
    server: &str,
    ws_path: &str,
    grant: Option<&str>,
) -> Result<Joined, ParticipantError> {
    let join = ClientMessage::Join {
        grant: grant.map(str::to_string),
        room: None,
    };
    first_message(server, ws_path, &join).await
}

async fn first_message(
    server: &str,
    ws_path: &str,
    first: &ClientMessage,
) -> Result<Joined, ParticipantError> {
    let ws_url = format!(
        "{}{}",
        server
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1),
        ws_path
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .map_err(|e| ParticipantError::WebSocket(e.to_string()))?;
    send_message(&mut ws, first).await?;
    loop {
        match next_message(&mut ws).await? {
            Some(ServerMessage::Joined {
                participant,
                room,
                participants,
                resume,
            }) => {
                return Ok(Joined {
                    ws,
                    participant,
                    room,
                    peers: participants,
                    resume,
                });
            }
            Some(ServerMessage::Error { code, message }) => {
                return Err(ParticipantError::Refused { code, message });
            }
            Some(_) => continue,
            None => return Err(ParticipantError::WebSocket("closed before joined".into())),
        }
    }
}

async fn send_message(ws: &mut WsStream, msg: &ClientMessage) -> Result<(), ParticipantError> {
    let json = serde_json::to_string(msg).map_err(|e| ParticipantError::Protocol(e.to_string()))?;
    ws.send(Message::Text(json.into()))
        .await
        .map_err(|e| ParticipantError::WebSocket(e.to_string()))
}

/// The next server message; messages this build does not know are skipped.
async fn next_message(ws: &mut WsStream) -> Result<Option<ServerMessage>, ParticipantError> {
    while let Some(frame) = ws.next().await {
        match frame.map_err(|e| ParticipantError::WebSocket(e.to_string()))? {
            Message::Text(text) => match serde_json::from_str(text.as_str()) {
                Ok(msg) => return Ok(Some(msg)),
                Err(_) => continue,
            },
            Message::Close(_) => return Ok(None),
            _ => continue,
        }
    }
    Ok(None)
}

/// Builds a peer connection on loopback only, with the codecs and header extensions a
/// browser offers (simulcast needs mid and rid).
async fn build_peer_connection(
    events: Arc<Events>,
) -> Result<Arc<dyn PeerConnection>, ParticipantError> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().map_err(pc_err)?;
    for (uri, kind) in [
        (MID_URI, RtpCodecKind::Video),
        (RID_URI, RtpCodecKind::Video),
        (RRID_URI, RtpCodecKind::Video),
        (MID_URI, RtpCodecKind::Audio),
    ] {
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                kind,
                None,
            )
            .map_err(pc_err)?;
    }
    // Receiver reports about what we send are not needed here.
    let (registry, _reports) = veil_sfu::feedback::install(
        register_default_interceptors(Registry::new(), &mut media).map_err(pc_err)?,
    );
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(events)
        // Loopback only: tests and the load generator never leave this machine.
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .map_err(pc_err)?;
    Ok(Arc::new(pc))
}

/// One local source: its track, the layers it sends and its sender.
struct LocalSource {
    kind: Kind,
    video: Option<VideoConfig>,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    pc: Arc<dyn PeerConnection>,
    /// SSRC per layer (`None` for a single-layer stream).
    streams: Vec<(Option<Layer>, u32)>,
}

fn codec_for(kind: Kind) -> RTCRtpCodec {
    match kind {
        Kind::Audio => RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: AUDIO_CLOCK,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: vec![],
        },
        Kind::Video | Kind::Screen => RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: VIDEO_CLOCK,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
    }
}

async fn add_source(
    pc: &Arc<dyn PeerConnection>,
    participant: &str,
    kind: Kind,
    video: Option<VideoConfig>,
) -> Result<LocalSource, ParticipantError> {
    let layers: Vec<Option<Layer>> = match video {
        Some(v) if v.simulcast => Layer::ALL.iter().map(|l| Some(*l)).collect(),
        _ => vec![None],
    };
    let streams: Vec<(Option<Layer>, u32)> =
        layers.iter().map(|l| (*l, rand::random::<u32>())).collect();
    let codings = streams
        .iter()
        .map(|(layer, ssrc)| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: layer.map(|l| l.rid().to_string()).unwrap_or_default(),
                ssrc: Some(*ssrc),
                ..Default::default()
            },
            codec: codec_for(kind),
            ..Default::default()
        })
        .collect();
    let (track_id, rtc_kind) = match kind {
        Kind::Audio => ("audio", RtpCodecKind::Audio),
        Kind::Video => ("camera", RtpCodecKind::Video),
        Kind::Screen => ("screen", RtpCodecKind::Video),
    };
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        participant.to_string(),
        track_id.to_string(),
        track_id.to_string(),
        rtc_kind,
        codings,
    )));
    let sender = pc
        .add_track(track.clone() as Arc<dyn TrackLocal>)
        .await
        .map_err(pc_err)?;
    Ok(LocalSource {
        kind,
        video,
        track,
        sender,
        pc: pc.clone(),
        streams,
    })
}

/// Builds a peer connection for the current generation, adds this participant's
/// sources and starts sending on them. Returns the connection and whether there is
/// anything to offer.
async fn start_media(
    config: &ParticipantConfig,
    shared: &Arc<Shared>,
    commands: &mpsc::UnboundedSender<Command>,
    tasks: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) -> Result<(Arc<dyn PeerConnection>, bool), ParticipantError> {
    let id = &shared.participant;
    let pc = build_peer_connection(Arc::new(Events {
        commands: commands.clone(),
        shared: shared.clone(),
        tasks: tasks.clone(),
        generation: shared.generation.load(Ordering::Acquire),
    }))
    .await?;
    let mut sources = Vec::new();
    if config.audio {
        sources.push(add_source(&pc, id, Kind::Audio, None).await?);
    }
    if let Some(v) = config.video {
        sources.push(add_source(&pc, id, Kind::Video, Some(v)).await?);
    }
    if let Some(v) = config.screen {
        sources.push(add_source(&pc, id, Kind::Screen, Some(v)).await?);
    }
    let needs_offer = !sources.is_empty();
    for source in sources {
        let source = Arc::new(source);
        let feedback = Arc::new(KeyframeRequests::default());
        lock(tasks).push(tokio::spawn(watch_feedback(
            source.clone(),
            feedback.clone(),
            shared.clone(),
        )));
        lock(tasks).push(tokio::spawn(send_media(source, feedback, shared.clone())));
    }
    Ok((pc, needs_offer))
}

impl Participant {
    /// Asks for a grant, joins, publishes what `config` says and starts receiving.
    pub async fn join(config: ParticipantConfig) -> Result<Participant, ParticipantError> {
        let (_, grant, ws_path) = request_grant(&config).await?;
        let body = config
            .capture
            .then(|| serde_json::to_string(&JoinBody::of(&config)).unwrap_or_default());
        let joined = Self::join_with_grant(config, &grant, &ws_path).await?;
        if let Some(body) = body {
            joined
                .shared
                .record()
                .captured
                .sent_messages
                .insert(0, body);
        }
        Ok(joined)
    }

    /// Joins with a grant obtained elsewhere.
    pub async fn join_with_grant(
        config: ParticipantConfig,
        grant: &str,
        ws_path: &str,
    ) -> Result<Participant, ParticipantError> {
        let joined_at = Instant::now();
        let Joined {
            ws,
            participant: id,
            room,
            peers,
            resume,
        } = open_socket(&config.server, ws_path, Some(grant)).await?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let e2ee = match &config.e2ee_secret {
            Some(secret) => Some(E2ee::new(secret, &room, &id)?),
            None => None,
        };
        let sender_key = e2ee.as_ref().map(E2ee::encryptor);
        let mut captured = Captured::default();
        if config.capture {
            // The first message went out before there was a record to keep it in.
            let join = ClientMessage::Join {
                grant: Some(grant.to_string()),
                room: None,
            };
            captured
                .sent_messages
                .push(serde_json::to_string(&join).unwrap_or_default());
        }
        let shared = Arc::new(Shared {
            record: Mutex::new(Record {
                peers: peers
                    .into_iter()
                    .map(|p| (p.participant.clone(), p))
                    .collect(),
                captured,
                ..Record::default()
            }),
            reassemble: e2ee.is_some() || config.capture,
            capture: config.capture,
            e2ee: Mutex::new(e2ee),
            sender_key: Mutex::new(sender_key),
            record_payloads: config.record_payloads,
            connected: watch::channel(false).0,
            negotiated: watch::channel(0).0,
            participant: id.clone(),
            generation: std::sync::atomic::AtomicU64::new(0),
            receivers: Mutex::new(HashMap::new()),
        });
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let (pc, needs_offer) = start_media(&config, &shared, &commands, &tasks).await?;
        let pc_slot = Arc::new(Mutex::new(pc.clone()));
        let negotiator = Negotiator {
            resume,
            pc,
            pc_slot: pc_slot.clone(),
            shared: shared.clone(),
            config,
            commands: commands.clone(),
            tasks: tasks.clone(),
            making_offer: false,
            needs_offer,
            awaiting_rejoin: false,
            pending_candidates: Vec::new(),
        };
        let signaling = tokio::spawn(negotiator.run(ws, command_rx));
        Ok(Participant {
            id,
            room,
            joined_at,
            shared,
            commands,
            pc: pc_slot,
            tasks,
            signaling: Some(signaling),
        })
    }

    /// Whether the peer connection is up.
    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// A snapshot of every track received so far.
    pub fn received(&self) -> Vec<RemoteTrackStats> {
        self.shared.record().tracks.values().cloned().collect()
    }

    /// Stats of the received track the SFU announced with this id.
    pub fn received_track(&self, track: &str) -> Option<RemoteTrackStats> {
        self.shared.record().tracks.get(track).cloned()
    }

    /// Hashes of every payload received (when recording).
    pub fn received_hashes(&self) -> HashSet<u64> {
        self.shared.record().received_hashes.clone()
    }

    /// Hashes of every payload sent (when recording).
    pub fn sent_hashes(&self) -> HashSet<u64> {
        self.shared.record().sent_hashes.clone()
    }

    /// What was sent, per source kind and layer.
    pub fn sent(&self) -> BTreeMap<(Kind, Option<Layer>), SentStats> {
        self.shared.record().sent.clone()
    }

    /// Tracks the SFU currently forwards to this participant, by track id.
    pub fn published_tracks(&self) -> HashMap<String, TrackInfo> {
        self.shared.record().published.clone()
    }

    /// The other participants present, by id.
    pub fn peers(&self) -> HashMap<String, Peer> {
        self.shared.record().peers.clone()
    }

    /// Every E2EE blob received: (sender, blob).
    pub fn e2ee_received(&self) -> Vec<(String, String)> {
        self.shared.record().e2ee.clone()
    }

    /// Sends an opaque E2EE blob to one participant, or to everyone else.
    pub fn send_e2ee(&self, to: Option<&str>, blob: &str) {
        let _ = self.commands.send(Command::Send(ClientMessage::E2ee {
            to: to.map(str::to_string),
            blob: blob.to_string(),
        }));
    }

    /// Per (publisher, audio or video): frames reassembled, decrypted, failed, and how
    /// many decrypted into valid VP8 key frames and Opus packets.
    pub fn frame_stats(&self) -> BTreeMap<(String, Kind), FrameStats> {
        self.shared.record().frames.clone()
    }

    /// The security code this participant shows, when it has a secret.
    pub fn security_code(&self) -> Option<String> {
        self.shared.e2ee().as_ref().map(E2ee::security_code)
    }

    /// Members whose `hello` verified, when it has a secret.
    pub fn e2ee_members(&self) -> Vec<String> {
        self.shared
            .e2ee()
            .as_ref()
            .map(E2ee::members)
            .unwrap_or_default()
    }

    /// Every media key held so far (own and members'). Tests only (`key-audit`).
    #[cfg(feature = "key-audit")]
    pub fn held_keys(&self) -> Vec<crate::e2ee::HeldKey> {
        self.shared
            .e2ee()
            .as_ref()
            .map(E2ee::held_keys)
            .unwrap_or_default()
    }

    /// Hands over (and clears) what a capturing participant kept.
    pub fn take_captured(&self) -> Captured {
        std::mem::take(&mut self.shared.record().captured)
    }

    /// Host only: removes a participant from the meeting.
    pub fn remove(&self, participant: &str) {
        let _ = self.commands.send(Command::Send(ClientMessage::Remove {
            participant: participant.to_string(),
        }));
    }

    /// Host only: ends the meeting for everyone.
    pub fn end_meeting(&self) {
        let _ = self
            .commands
            .send(Command::Send(ClientMessage::EndMeeting {}));
    }

    /// Tells the others about mute, camera, screen and hand state.
    pub fn set_state(&self, state: MediaState) {
        let _ = self
            .commands
            .send(Command::Send(ClientMessage::State { state }));
    }

    /// Drops the WebSocket as a network failure would, then resumes on a new one.
    pub fn drop_connection(&self) {
        let _ = self.commands.send(Command::Reconnect);
    }

    /// Sockets resumed after a drop.
    pub fn resumes(&self) -> u64 {
        self.shared.record().resumes
    }

    /// Presence announcements received: `joined:<id>` / `left:<id>`, in order.
    pub fn presence_log(&self) -> Vec<String> {
        self.shared.record().presence_log.clone()
    }

    /// How many times the media session was lost and rebuilt (SFU node failover).
    pub fn media_resets(&self) -> u64 {
        self.shared.record().media_resets
    }

    /// Error codes the server sent.
    pub fn errors(&self) -> Vec<String> {
        self.shared.record().errors.clone()
    }

    /// Why the server closed the session, once it has.
    pub fn closed(&self) -> Option<String> {
        self.shared.record().closed.clone()
    }

    /// Caps the simulcast layer the SFU forwards for one subscribed track.
    pub fn set_max_layer(&self, track: &str, layer: Layer) {
        let _ = self
            .commands
            .send(Command::Send(ClientMessage::SetMaxLayer {
                track: track.to_string(),
                layer,
            }));
    }

    /// Sends `leave`, waits briefly for the server to confirm, and closes everything.
    pub async fn leave(mut self) {
        let _ = self.commands.send(Command::Leave);
        if let Some(signaling) = self.signaling.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), signaling).await;
        }
        self.stop_tasks();
        let pc = lock(&self.pc).clone();
        let _ = pc.close().await;
    }

    /// Goes without a `leave`, as a closed browser tab does: the socket closes (with a
    /// close frame) and the peer connection with it.
    pub async fn vanish(mut self) {
        let _ = self.commands.send(Command::Close);
        if let Some(signaling) = self.signaling.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), signaling).await;
        }
        self.stop_tasks();
        let pc = lock(&self.pc).clone();
        let _ = pc.close().await;
    }

    fn stop_tasks(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        if let Some(signaling) = self.signaling.take() {
            signaling.abort();
        }
        self.stop_tasks();
    }
}

/// The polite side of perfect negotiation, plus the WebSocket pump and the recovery
/// from a lost SFU node (`media_reset` → new peer connection → `rejoin`).
struct Negotiator {
    /// Resumes this participant when the socket drops.
    resume: Option<String>,
    pc: Arc<dyn PeerConnection>,
    pc_slot: Arc<Mutex<Arc<dyn PeerConnection>>>,
    shared: Arc<Shared>,
    config: ParticipantConfig,
    commands: mpsc::UnboundedSender<Command>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    making_offer: bool,
    needs_offer: bool,
    /// `rejoin` sent; media negotiation waits for `joined`.
    awaiting_rejoin: bool,
    pending_candidates: Vec<RTCIceCandidateInit>,
}

impl Negotiator {
    async fn run(mut self, ws: WsStream, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut ws = ws;
        let mut reconnect = false;
        if let Err(e) = self.announce(&mut ws).await {
            self.note_error(&e);
        }
        if let Err(e) = self.maybe_offer(&mut ws).await {
            self.note_error(&e);
        }
        loop {
            if std::mem::take(&mut reconnect) {
                // No close frame: to the server this is a dropped connection.
                drop(ws);
                ws = match self.resume().await {
                    Ok(ws) => ws,
                    Err(e) => {
                        self.note_error(&e);
                        break;
                    }
                };
                // As the browser does after a resume: repairs anything lost meanwhile.
                if let Err(e) = self.announce(&mut ws).await {
                    self.note_error(&e);
                }
            }
            tokio::select! {
                msg = next_message(&mut ws) => {
                    let msg = match msg {
                        Ok(Some(msg)) => msg,
                        Ok(None) | Err(_) => break,
                    };
                    if let ServerMessage::Closed { reason } = &msg {
                        self.shared.record().closed = Some(format!("{reason:?}"));
                        break;
                    }
                    if let Err(e) = self.on_server(&mut ws, msg).await {
                        self.note_error(&e);
                    }
                }
                cmd = commands.recv() => {
                    let result = match cmd {
                        Some(Command::Send(msg)) => self.send(&mut ws, &msg).await,
                        Some(Command::LocalCandidate(init)) => {
                            if init.candidate.is_empty() {
                                continue;
                            }
                            let candidate = IceCandidate {
                                candidate: init.candidate,
                                sdp_mid: init.sdp_mid,
                                sdp_mline_index: init.sdp_mline_index,
                            };
                            self.send(&mut ws, &ClientMessage::Candidate { candidate }).await
                        }
                        Some(Command::Reconnect) => {
                            reconnect = self.resume.is_some();
                            Ok(())
                        }
                        Some(Command::Close) => {
                            let _ = ws.close(None).await;
                            break;
                        }
                        Some(Command::Leave) | None => {
                            let _ = self.send(&mut ws, &ClientMessage::Leave {}).await;
                            // Wait for `closed` so the server has torn the session down.
                            let wait = async {
                                while let Ok(Some(msg)) = next_message(&mut ws).await {
                                    if let ServerMessage::Closed { reason } = msg {
                                        return Some(reason);
                                    }
                                }
                                None
                            };
                            if let Ok(Some(reason)) = tokio::time::timeout(Duration::from_secs(5), wait).await {
                                self.shared.record().closed = Some(format!("{reason:?}"));
                            }
                            let _ = ws.close(None).await;
                            break;
                        }
                    };
                    if result.is_err() {
                        break;
                    }
                }
            }
        }
        self.shared.connected.send_replace(false);
    }

    /// Resumes on a new socket; retries briefly while the server notices the drop.
    async fn resume(&mut self) -> Result<WsStream, ParticipantError> {
        let token = self
            .resume
            .clone()
            .ok_or_else(|| ParticipantError::Protocol("no resume token".into()))?;
        let mut last = None;
        for _ in 0..20 {
            match resume_socket(&self.config.server, &token).await {
                Ok(joined) => {
                    self.resume = joined.resume;
                    let mut record = self.shared.record();
                    record.resumes += 1;
                    record.peers = joined
                        .peers
                        .into_iter()
                        .map(|p| (p.participant.clone(), p))
                        .collect();
                    return Ok(joined.ws);
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| ParticipantError::Protocol("resume failed".into())))
    }

    /// Sends a message, keeping a copy when capturing.
    async fn send(&self, ws: &mut WsStream, msg: &ClientMessage) -> Result<(), ParticipantError> {
        if self.shared.capture {
            let text = serde_json::to_string(msg).unwrap_or_default();
            self.shared.record().captured.sent_messages.push(text);
        }
        send_message(ws, msg).await
    }

    async fn send_blobs(
        &self,
        ws: &mut WsStream,
        blobs: Vec<crate::e2ee::Outgoing>,
    ) -> Result<(), ParticipantError> {
        for o in blobs {
            let msg = ClientMessage::E2ee {
                to: o.to,
                blob: o.blob,
            };
            self.send(ws, &msg).await?;
        }
        Ok(())
    }

    /// Announces this member's identity (`hello` to everyone), after `joined` and after
    /// each resume, as the browser does.
    async fn announce(&self, ws: &mut WsStream) -> Result<(), ParticipantError> {
        let hello = self.shared.e2ee().as_ref().map(E2ee::start);
        self.send_blobs(ws, hello.unwrap_or_default()).await
    }

    /// Starts encrypting with the rotated key a moment after sending it, so the members
    /// have it before the first frame that needs it.
    fn switch_key_later(&self) {
        let shared = self.shared.clone();
        // Not one of `tasks`: a media reset must not cancel the switch.
        tokio::spawn(async move {
            tokio::time::sleep(KEY_SWITCH_DELAY).await;
            let current = shared.e2ee().as_ref().map(E2ee::encryptor);
            *lock(&shared.sender_key) = current;
        });
    }

    fn note_error(&self, e: &ParticipantError) {
        debug!(participant = %self.shared.participant, "negotiation error: {e}");
        self.shared.record().errors.push(e.to_string());
    }

    /// The SFU node carrying our media is gone: drop everything media, keep the
    /// WebSocket, presence and (in a browser) the E2EE keys, and start again.
    async fn reset_media(&mut self, ws: &mut WsStream) -> Result<(), ParticipantError> {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.shared.connected.send_replace(false);
        self.shared.negotiated.send_replace(0);
        {
            let mut record = self.shared.record();
            record.media_resets += 1;
            record.published.clear();
            for track in record.tracks.values_mut() {
                track.ended = true;
            }
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        lock(&self.shared.receivers).clear();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pc.close()).await;
        let (pc, needs_offer) =
            start_media(&self.config, &self.shared, &self.commands, &self.tasks).await?;
        *lock(&self.pc_slot) = pc.clone();
        self.pc = pc;
        self.making_offer = false;
        self.needs_offer = needs_offer;
        self.pending_candidates.clear();
        self.awaiting_rejoin = true;
        self.send(ws, &ClientMessage::Rejoin {}).await
    }

    async fn on_server(
        &mut self,
        ws: &mut WsStream,
        msg: ServerMessage,
    ) -> Result<(), ParticipantError> {
        match msg {
            ServerMessage::MediaReset { .. } => self.reset_media(ws).await?,
            ServerMessage::Joined { participants, .. } if self.awaiting_rejoin => {
                self.awaiting_rejoin = false;
                self.shared.record().peers = participants
                    .into_iter()
                    .map(|p| (p.participant.clone(), p))
                    .collect();
                // Same keys, new media session: announce again, as the browser does on
                // every `joined`.
                self.announce(ws).await?;
                self.maybe_offer(ws).await?;
            }
            ServerMessage::Offer { sdp } => {
                if self.making_offer {
                    // Glare: we are polite; roll back ours, answer theirs, offer again.
                    let rollback = RTCSessionDescription::rollback(None).map_err(pc_err)?;
                    self.pc
                        .set_local_description(rollback)
                        .await
                        .map_err(pc_err)?;
                    self.making_offer = false;
                    self.needs_offer = true;
                }
                let offer = RTCSessionDescription::offer(sdp).map_err(pc_err)?;
                self.pc
                    .set_remote_description(offer)
                    .await
                    .map_err(pc_err)?;
                let answer = self.pc.create_answer(None).await.map_err(pc_err)?;
                self.pc
                    .set_local_description(answer)
                    .await
                    .map_err(pc_err)?;
                let sdp = self.local_sdp().await;
                self.send(ws, &ClientMessage::Answer { sdp }).await?;
                self.mark_removed_tracks().await;
                self.flush_candidates().await;
                self.maybe_offer(ws).await?;
            }
            ServerMessage::Answer { sdp } => {
                if !self.making_offer {
                    return Err(ParticipantError::Protocol("unexpected answer".into()));
                }
                let answer = RTCSessionDescription::answer(sdp).map_err(pc_err)?;
                self.pc
                    .set_remote_description(answer)
                    .await
                    .map_err(pc_err)?;
                self.making_offer = false;
                self.shared.negotiated.send_modify(|n| *n += 1);
                self.flush_candidates().await;
                self.maybe_offer(ws).await?;
            }
            ServerMessage::Candidate { candidate } => {
                let init = RTCIceCandidateInit {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid,
                    sdp_mline_index: candidate.sdp_mline_index,
                    ..Default::default()
                };
                if self.pc.remote_description().await.is_none() {
                    self.pending_candidates.push(init);
                } else {
                    self.pc.add_ice_candidate(init).await.map_err(pc_err)?;
                }
            }
            ServerMessage::TrackPublished { track } => {
                self.shared
                    .record()
                    .published
                    .insert(track.track.clone(), track);
            }
            ServerMessage::TrackUnpublished { track } => {
                self.shared.record().published.remove(&track);
            }
            ServerMessage::Error { code, .. } => {
                self.shared.record().errors.push(code);
            }
            ServerMessage::ParticipantJoined {
                participant,
                display_name,
            } => {
                let mut record = self.shared.record();
                record.presence_log.push(format!("joined:{participant}"));
                let peer = Peer {
                    participant: participant.clone(),
                    display_name,
                    state: MediaState::default(),
                };
                record.peers.insert(participant, peer);
            }
            ServerMessage::ParticipantLeft { participant } => {
                {
                    let mut record = self.shared.record();
                    record.presence_log.push(format!("left:{participant}"));
                    record.peers.remove(&participant);
                }
                // Rotate so the departed member cannot read what follows.
                let rotated = self
                    .shared
                    .e2ee()
                    .as_mut()
                    .map(|e| e.peer_left(&participant))
                    .transpose()?
                    .unwrap_or_default();
                if !rotated.is_empty() {
                    self.switch_key_later();
                }
                self.send_blobs(ws, rotated).await?;
            }
            ServerMessage::ParticipantState { participant, state } => {
                if let Some(peer) = self.shared.record().peers.get_mut(&participant) {
                    peer.state = state;
                }
            }
            ServerMessage::E2ee { from, blob } => {
                // Refused blobs (bad MAC, forged, malformed) are dropped, as in the
                // browser; `E2ee` remembers why a member was refused.
                let replies = self
                    .shared
                    .e2ee()
                    .as_mut()
                    .and_then(|e| e.handle(&from, &blob).ok())
                    .unwrap_or_default();
                self.shared.record().e2ee.push((from, blob));
                self.send_blobs(ws, replies).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// webrtc 0.21 signals no end for a remote track that renegotiation removed (its
    /// transceiver just stops receiving), so the participant looks for itself.
    async fn mark_removed_tracks(&self) {
        let mut removed = Vec::new();
        for t in self.pc.get_transceivers().await {
            let receiving = t.current_direction().await.is_ok_and(|d| d.has_recv());
            if receiving {
                continue;
            }
            if let Ok(Some(receiver)) = t.receiver().await {
                removed.push(receiver.track().track_id().await);
            }
        }
        for id in &removed {
            if let Some(task) = lock(&self.shared.receivers).remove(id) {
                task.abort();
            }
        }
        let mut record = self.shared.record();
        for id in removed {
            if let Some(stats) = record.tracks.get_mut(&id) {
                stats.ended = true;
            }
        }
    }

    async fn flush_candidates(&mut self) {
        for init in std::mem::take(&mut self.pending_candidates) {
            if let Err(e) = self.pc.add_ice_candidate(init).await {
                self.note_error(&pc_err(e));
            }
        }
    }

    async fn local_sdp(&self) -> String {
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default()
    }

    async fn maybe_offer(&mut self, ws: &mut WsStream) -> Result<(), ParticipantError> {
        if !self.needs_offer || self.making_offer || self.awaiting_rejoin {
            return Ok(());
        }
        let offer = self.pc.create_offer(None).await.map_err(pc_err)?;
        self.pc.set_local_description(offer).await.map_err(pc_err)?;
        self.making_offer = true;
        self.needs_offer = false;
        let sdp = self.local_sdp().await;
        self.send(ws, &ClientMessage::Offer { sdp }).await
    }
}

/// Key-frame requests the SFU sent, per SSRC.
#[derive(Default)]
struct KeyframeRequests {
    pending: Mutex<HashSet<u32>>,
    any: AtomicBool,
}

impl KeyframeRequests {
    fn request(&self, ssrc: u32) {
        lock(&self.pending).insert(ssrc);
        self.any.store(true, Ordering::Release);
    }

    fn take(&self, ssrc: u32) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut pending = lock(&self.pending);
        let hit = pending.remove(&ssrc);
        if pending.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        hit
    }
}

/// Reads RTCP about a local track: PLI/FIR mean "send a key frame now".
async fn watch_feedback(
    source: Arc<LocalSource>,
    requests: Arc<KeyframeRequests>,
    shared: Arc<Shared>,
) {
    while let Some(event) = source.track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        for p in &packets {
            let ssrcs: Vec<u32> =
                if let Some(pli) = p.as_any().downcast_ref::<PictureLossIndication>() {
                    vec![pli.media_ssrc]
                } else if let Some(fir) = p.as_any().downcast_ref::<FullIntraRequest>() {
                    fir.fir.iter().map(|e| e.ssrc).collect()
                } else {
                    continue;
                };
            for ssrc in ssrcs {
                if let Some((layer, _)) = source.streams.iter().find(|(_, s)| *s == ssrc) {
                    requests.request(ssrc);
                    shared
                        .record()
                        .sent
                        .entry((source.kind, *layer))
                        .or_default()
                        .keyframe_requests += 1;
                }
            }
        }
    }
}

/// Negotiated payload type and header extension ids for one sender.
struct SendLeg {
    payload_type: u8,
    mid: Option<(u8, Bytes)>,
    rid: Option<u8>,
}

async fn negotiated_leg(source: &LocalSource) -> Option<SendLeg> {
    let params = source.sender.get_parameters().await.ok()?;
    let mime = codec_for(source.kind).mime_type;
    let payload_type = params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))?
        .payload_type;
    let ext = |uri: &str| {
        params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == uri)
            .and_then(|e| u8::try_from(e.id).ok())
    };
    let mut mid_value = None;
    for t in source.pc.get_transceivers().await {
        if let Ok(Some(sender)) = t.sender().await
            && sender.id() == source.sender.id()
        {
            mid_value = t
                .mid()
                .await
                .ok()
                .flatten()
                .map(|m| Bytes::from(m.into_bytes()));
        }
    }
    Some(SendLeg {
        payload_type,
        mid: ext(MID_URI).zip(mid_value),
        rid: ext(RID_URI),
    })
}

struct StreamState {
    layer: Option<Layer>,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    counter: u64,
    picture_id: u16,
    last_keyframe: Option<Instant>,
}

/// Sends one source's packets at its rate once the connection is up and our offer
/// was answered.
async fn send_media(
    source: Arc<LocalSource>,
    requests: Arc<KeyframeRequests>,
    shared: Arc<Shared>,
) {
    let mut connected = shared.connected.subscribe();
    let mut negotiated = shared.negotiated.subscribe();
    if connected.wait_for(|c| *c).await.is_err() || negotiated.wait_for(|n| *n > 0).await.is_err() {
        return;
    }
    let leg = loop {
        match negotiated_leg(&source).await {
            Some(leg) => break leg,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let sender_hash = participant_hash(&shared.participant);
    let mut streams: Vec<StreamState> = source
        .streams
        .iter()
        .map(|(layer, ssrc)| StreamState {
            layer: *layer,
            ssrc: *ssrc,
            sequence: rand::random(),
            timestamp: rand::random(),
            counter: 0,
            picture_id: rand::random::<u16>() & 0x7fff,
            last_keyframe: None,
        })
        .collect();
    let (period, clock_step) = match source.video {
        None => (
            Duration::from_secs(1) / AUDIO_PACKETS_PER_SECOND,
            AUDIO_CLOCK / AUDIO_PACKETS_PER_SECOND,
        ),
        Some(v) => {
            let fps = v.fps.max(1);
            (Duration::from_secs(1) / fps, VIDEO_CLOCK / fps)
        }
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let sent_micros = now_micros();
        // With end-to-end encryption: whole frames, encrypted, then split into packets.
        let sender_key = lock(&shared.sender_key).clone();
        for stream in &mut streams {
            let payloads = match source.video {
                None => {
                    let p = match &sender_key {
                        None => audio_payload(stream.counter, sender_hash, sent_micros),
                        Some(key) => {
                            let frame = opus_frame(stream.counter, sender_hash, sent_micros);
                            // Cannot fail for a non-empty frame short of 2^64 frames.
                            match key.encrypt_frame(Codec::Opus, &frame) {
                                Ok(p) => p,
                                Err(_) => continue,
                            }
                        }
                    };
                    stream.counter += 1;
                    vec![p]
                }
                Some(v) => {
                    let requested = requests.take(stream.ssrc);
                    let key = requested
                        || stream
                            .last_keyframe
                            .is_none_or(|t| now.duration_since(t) >= v.keyframe_interval);
                    if key {
                        stream.last_keyframe = Some(now);
                    }
                    let fps = u64::from(v.fps.max(1));
                    let bytes =
                        usize::try_from(layer_bitrate(v.bitrate_bps, stream.layer) / 8 / fps)
                            .unwrap_or(usize::MAX);
                    let frame = Frame {
                        kind: source.kind,
                        layer: stream.layer,
                        key,
                        bytes,
                        picture_id: stream.picture_id,
                        sender: sender_hash,
                        sent_micros,
                    };
                    let picture_id = stream.picture_id;
                    stream.picture_id = (stream.picture_id + 1) & 0x7fff;
                    let payloads = match &sender_key {
                        None => packetize(&frame, &mut stream.counter),
                        Some(key) => {
                            let plain = vp8_frame(&frame, stream.counter);
                            stream.counter += 1;
                            match key.encrypt_frame(Codec::Vp8, &plain) {
                                Ok(sealed) => split_frame(&sealed, picture_id),
                                Err(_) => continue,
                            }
                        }
                    };
                    let mut record = shared.record();
                    let s = record.sent.entry((source.kind, stream.layer)).or_default();
                    s.frames += 1;
                    s.keyframes += u64::from(key);
                    payloads
                }
            };
            let count = payloads.len();
            for (i, payload) in payloads.into_iter().enumerate() {
                let mut header = Header {
                    version: 2,
                    marker: source.video.is_some() && i + 1 == count,
                    payload_type: leg.payload_type,
                    sequence_number: stream.sequence,
                    timestamp: stream.timestamp,
                    ssrc: stream.ssrc,
                    ..Default::default()
                };
                if let Some((id, mid)) = &leg.mid {
                    let _ = header.set_extension(*id, mid.clone());
                }
                if let (Some(id), Some(layer)) = (leg.rid, stream.layer) {
                    let _ = header.set_extension(id, Bytes::from_static(layer.rid().as_bytes()));
                }
                stream.sequence = stream.sequence.wrapping_add(1);
                {
                    let mut record = shared.record();
                    if shared.record_payloads {
                        record.sent_hashes.insert(payload_hash(&payload));
                    }
                    record
                        .sent
                        .entry((source.kind, stream.layer))
                        .or_default()
                        .packets += 1;
                }
                let packet = rtp::Packet {
                    header,
                    payload: Bytes::from(payload),
                };
                if source.track.write_rtp(packet).await.is_err() {
                    return;
                }
            }
            stream.timestamp = stream.timestamp.wrapping_add(clock_step);
        }
    }
}

/// Records every packet of one received track.
async fn receive_track(track: Arc<dyn TrackRemote>, shared: Arc<Shared>) {
    let id = track.track_id().await;
    let publisher = track.stream_id().await;
    let publisher_id = publisher.clone();
    {
        let mut record = shared.record();
        let stats = record.tracks.entry(id.clone()).or_default();
        stats.track = id.clone();
        stats.publisher = publisher;
        stats.ended = false;
    }
    let codec = match track.kind().await {
        RtpCodecKind::Audio => Codec::Opus,
        // Veil negotiates VP8 only for video (docs/e2ee.md).
        _ => Codec::Vp8,
    };
    let mut receiver = FrameReceiver::new(publisher_id, codec);
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                on_packet(&shared, &id, &packet);
                if shared.reassemble {
                    receiver.on_packet(&shared, &packet);
                    if let Some(pli) = receiver.key_frame_request(&shared, packet.header.ssrc) {
                        let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                    }
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    if let Some(stats) = shared.record().tracks.get_mut(&id) {
        stats.ended = true;
    }
}

/// One received track's frames: reassembly, decryption and the codec checks.
struct FrameReceiver {
    publisher: String,
    codec: Codec,
    vp8: Vp8Assembler,
    /// Whether a valid key frame decrypted on this track (no more requests needed).
    decodable: bool,
    last_request: Option<Instant>,
}

impl FrameReceiver {
    fn new(publisher: String, codec: Codec) -> Self {
        FrameReceiver {
            publisher,
            codec,
            vp8: Vp8Assembler::new(),
            decodable: false,
            last_request: None,
        }
    }

    fn kind(&self) -> Kind {
        match self.codec {
            Codec::Opus => Kind::Audio,
            Codec::Vp8 => Kind::Video,
        }
    }

    fn on_packet(&mut self, shared: &Shared, packet: &rtp::Packet) {
        let discarded_before = self.vp8.discarded;
        let frame = match self.codec {
            Codec::Opus => Some(packet.payload.to_vec()),
            Codec::Vp8 => self.vp8.push(
                packet.header.sequence_number,
                packet.header.timestamp,
                packet.header.marker,
                &packet.payload,
            ),
        };
        let discarded = self.vp8.discarded - discarded_before;
        if shared.capture {
            let mut record = shared.record();
            let captured = &mut record.captured;
            if captured.bytes < MAX_CAPTURE_BYTES {
                captured.bytes += packet.payload.len();
                captured.payloads.push(packet.payload.clone());
            }
        }
        let kid = frame.as_deref().and_then(|f| {
            let prefix = clear_prefix_len(self.codec, f);
            let header = f.get(prefix..)?;
            SframeHeader::decode(header).ok().map(|(h, _)| h.kid)
        });
        let plain = frame.as_deref().and_then(|f| {
            let mut e2ee = shared.e2ee();
            e2ee.as_mut()?
                .decrypt_frame(&self.publisher, self.codec, f)
                .ok()
        });
        let mut record = shared.record();
        let stats = record
            .frames
            .entry((self.publisher.clone(), self.kind()))
            .or_default();
        stats.discarded += discarded;
        let Some(frame) = frame else {
            return;
        };
        stats.frames += 1;
        if let Some(kid) = kid {
            *stats.kids.entry(kid).or_default() += 1;
        }
        match &plain {
            None => stats.failed += 1,
            Some(plain) => {
                stats.decrypted += 1;
                match self.codec {
                    Codec::Opus => match opus_packet(plain) {
                        Ok(_) => stats.valid_opus += 1,
                        Err(_) => stats.invalid_opus += 1,
                    },
                    Codec::Vp8 if vp8_is_key_frame(plain) => {
                        stats.key_frames += 1;
                        let prefix = clear_prefix_len(Codec::Vp8, &frame);
                        let header = vp8_key_frame_header(plain);
                        if let Ok(dimensions) = header
                            && plain.get(..prefix) == frame.get(..prefix)
                        {
                            stats.valid_key_frames += 1;
                            stats.dimensions = Some(dimensions);
                            self.decodable = true;
                        }
                    }
                    Codec::Vp8 => {}
                }
            }
        }
        if shared.capture && record.captured.bytes < MAX_CAPTURE_BYTES {
            record.captured.bytes += frame.len();
            record.captured.frames.push(CapturedFrame {
                publisher: self.publisher.clone(),
                codec: self.codec,
                kid,
                frame,
            });
        }
    }

    /// A picture loss indication to send, if this video track holds the publisher's key
    /// but has not decrypted a usable key frame yet (at most one per interval).
    fn key_frame_request(&mut self, shared: &Shared, ssrc: u32) -> Option<PictureLossIndication> {
        if self.codec != Codec::Vp8 || self.decodable {
            return None;
        }
        if self
            .last_request
            .is_some_and(|t| t.elapsed() < KEY_FRAME_REQUEST_INTERVAL)
        {
            return None;
        }
        let has_key = shared
            .e2ee()
            .as_ref()
            .is_some_and(|e| e.has_key_from(&self.publisher));
        if !has_key {
            return None;
        }
        self.last_request = Some(Instant::now());
        Some(PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        })
    }
}

fn on_packet(shared: &Shared, track: &str, packet: &rtp::Packet) {
    let now = Instant::now();
    let body = parse_body(&packet.payload);
    let keyframe = body.is_some_and(|b| b.kind != Kind::Audio) && vp8_is_keyframe(&packet.payload);
    let hash = shared
        .record_payloads
        .then(|| payload_hash(&packet.payload));
    let mut record = shared.record();
    if let Some(h) = hash {
        record.received_hashes.insert(h);
    }
    let Some(stats) = record.tracks.get_mut(track) else {
        return;
    };
    stats.packets += 1;
    stats.payload_bytes += packet.payload.len() as u64;
    stats.first_packet.get_or_insert(now);
    let seq = packet.header.sequence_number;
    if let Some(last) = stats.last_sequence {
        let step = seq.wrapping_sub(last);
        if step == 0 || step > u16::MAX / 2 {
            stats.sequence_reorders += 1;
        } else {
            stats.sequence_gaps += u64::from(step - 1);
        }
    }
    if stats
        .last_sequence
        .is_none_or(|last| veil_sfu::sequence::seq_newer(seq, last))
    {
        stats.last_sequence = Some(seq);
    }
    let Some(body) = body else {
        stats.foreign_payloads += 1;
        return;
    };
    stats.kind = Some(body.kind);
    if keyframe {
        stats.keyframes += 1;
        stats.first_keyframe.get_or_insert(now);
    }
    if stats.last_layer != Some(body.layer) {
        if stats.last_layer.is_some() {
            stats.layer_switches.push((body.layer, keyframe));
        }
        stats.last_layer = Some(body.layer);
    }
    *stats.layers.entry(body.layer).or_default() += 1;
    CounterRange::observe(&mut stats.counters, (body.sender, body.layer), body.counter);
    let latency = now_micros().saturating_sub(body.sent_micros);
    stats.latency_sum_micros += latency;
    stats.latency_max_micros = stats.latency_max_micros.max(latency);
    stats.latency.record(latency);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
