//! One participant's media session: its single peer connection carrying everything it
//! publishes and receives, and the negotiation state machine around it.
//!
//! Each session is an actor: one task owns the peer connection and handles, in order,
//! what the client sends, what the room asks (subscribe/unsubscribe) and what the
//! connection reports. The SFU is the impolite side of "perfect negotiation": an offer
//! from the client that collides with its own pending offer is ignored, and the client
//! rolls back.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tracing::debug;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, StatsSelector,
};
use webrtc::rtp_transceiver::RtpSender;

use rtc::peer_connection::event::RTCTrackEventInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpReceiveParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use crate::SfuInner;
use crate::feedback::ReceiverReports;
use crate::metadata::{SessionMetadata, quality_from_blocks, read_report};
use crate::room::Room;
use crate::signal::{
    ClientSignal, CloseReason, IceCandidate, Layer, MediaKind, SessionId, SfuSignal,
};
use crate::track::{Consumer, JoinClock, LegParameters, Producer};
use crate::udp_mux;

/// How often a session's connection statistics feed the metrics.
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Commands a session's actor handles, in arrival order.
pub enum SessionCmd {
    Client(ClientSignal),
    Subscribe(Arc<Producer>),
    Unsubscribe(String),
    RemoteTrack(Arc<dyn TrackRemote>),
    LocalCandidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    Close(CloseReason),
}

/// Relays peer-connection events into the actor's queue.
pub struct SessionEvents {
    pub commands: UnboundedSender<SessionCmd>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for SessionEvents {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.commands.send(SessionCmd::LocalCandidate(init));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.commands.send(SessionCmd::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.commands.send(SessionCmd::RemoteTrack(track));
    }
}

struct Subscription {
    consumer: Arc<Consumer>,
    /// Our SSRC and RTP clock on the subscriber's leg (for its receiver reports).
    out_ssrc: u32,
    clock_rate: u32,
    sender: Arc<dyn RtpSender>,
    producer: Weak<Producer>,
    rtcp_task: tokio::task::JoinHandle<()>,
}

/// Everything the actor owns.
pub struct Session {
    pub id: SessionId,
    pub participant: String,
    pub can_publish: bool,
    pub room: Arc<Room>,
    pub pc: Arc<dyn PeerConnection>,
    pub sfu: Weak<SfuInner>,
    pub events: mpsc::Sender<SfuSignal>,
    pub commands: UnboundedSender<SessionCmd>,
    pub driver_addrs: Vec<std::net::SocketAddr>,
    pub announced: std::net::SocketAddr,
    pub started: Instant,
    join: Arc<JoinClock>,
    metadata: SessionMetadata,
    reports: Arc<ReceiverReports>,
    offer_pending: bool,
    needs_offer: bool,
    connected: bool,
    pending_candidates: Vec<RTCIceCandidateInit>,
    subscriptions: HashMap<String, Subscription>,
    producer_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: SessionId,
        participant: String,
        can_publish: bool,
        room: Arc<Room>,
        pc: Arc<dyn PeerConnection>,
        sfu: Weak<SfuInner>,
        events: mpsc::Sender<SfuSignal>,
        commands: UnboundedSender<SessionCmd>,
        driver_addrs: Vec<std::net::SocketAddr>,
        announced: std::net::SocketAddr,
        started: Instant,
        reports: Arc<ReceiverReports>,
    ) -> Self {
        Session {
            id,
            participant,
            can_publish,
            room,
            pc,
            sfu,
            events,
            commands,
            driver_addrs,
            announced,
            started,
            join: Arc::new(JoinClock::new(started)),
            metadata: SessionMetadata::new(std::time::SystemTime::now(), started),
            reports,
            offer_pending: false,
            needs_offer: false,
            connected: false,
            pending_candidates: Vec::new(),
            subscriptions: HashMap::new(),
            producer_tasks: Vec::new(),
        }
    }

    /// Runs until the session closes, then tears everything down.
    pub async fn run(
        mut self,
        mut commands: UnboundedReceiver<SessionCmd>,
        connect_timeout: std::time::Duration,
    ) {
        let deadline = tokio::time::sleep(connect_timeout);
        tokio::pin!(deadline);
        let mut sampling = tokio::time::interval(STATS_INTERVAL);
        sampling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            let cmd = tokio::select! {
                cmd = commands.recv() => cmd,
                () = &mut deadline, if !self.connected => break CloseReason::Timeout,
                _ = sampling.tick() => {
                    self.sample_stats().await;
                    continue;
                }
            };
            let Some(cmd) = cmd else {
                break CloseReason::Left;
            };
            if let Some(reason) = self.handle(cmd).await {
                break reason;
            }
        };
        self.teardown(reason).await;
    }

    async fn handle(&mut self, cmd: SessionCmd) -> Option<CloseReason> {
        match cmd {
            SessionCmd::Client(signal) => self.on_client(signal).await,
            SessionCmd::Subscribe(producer) => self.subscribe(producer).await,
            SessionCmd::Unsubscribe(track) => self.unsubscribe(&track, true).await,
            SessionCmd::RemoteTrack(track) => self.on_remote_track(track),
            SessionCmd::LocalCandidate(init) => {
                if !init.candidate.is_empty() {
                    let candidate = IceCandidate {
                        candidate: udp_mux::rewrite_candidate(
                            &init.candidate,
                            &self.driver_addrs,
                            self.announced,
                        ),
                        sdp_mid: init.sdp_mid,
                        sdp_mline_index: init.sdp_mline_index,
                    };
                    self.emit(SfuSignal::Candidate { candidate }).await;
                }
            }
            SessionCmd::State(state) => return self.on_state(state).await,
            SessionCmd::Close(reason) => return Some(reason),
        }
        None
    }

    async fn sample_stats(&mut self) {
        if !self.connected {
            return;
        }
        let Some(sfu) = self.sfu.upgrade() else {
            return;
        };
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let (totals, rtt) = read_report(&report);
        let blocks = self.reports.take();
        let mut quality = quality_from_blocks(&blocks, |ssrc| {
            self.subscriptions
                .values()
                .find(|s| s.out_ssrc == ssrc)
                .map(|s| s.clock_rate)
        });
        quality.rtt_seconds = rtt.rtt_seconds;
        self.metadata.on_reports(&blocks);
        let nacks = self.reports.take_nacks();
        if nacks > 0 {
            sfu.metrics
                .rtcp_feedback
                .with_label_values(&["in", "nack"])
                .inc_by(nacks);
        }
        self.metadata.sample(&sfu.metrics, totals, &quality);
    }

    async fn emit(&self, signal: SfuSignal) {
        // The receiver is gone only when signaling already dropped the session.
        let _ = self.events.send(signal).await;
    }

    async fn error(&self, code: &str, message: String) {
        self.emit(SfuSignal::Error {
            code: code.to_string(),
            message,
        })
        .await;
    }

    async fn on_client(&mut self, signal: ClientSignal) {
        let result = match signal {
            ClientSignal::Offer { sdp } => self.on_offer(sdp).await,
            ClientSignal::Answer { sdp } => self.on_answer(sdp).await,
            ClientSignal::Candidate { candidate } => self.on_remote_candidate(candidate).await,
            ClientSignal::SetMaxLayer { track, layer } => {
                self.set_max_layer(&track, layer).await;
                Ok(())
            }
        };
        if let Err((code, message)) = result {
            debug!(session = self.id, code, "client signal refused");
            self.error(code, message).await;
        }
    }

    async fn on_offer(&mut self, sdp: String) -> Result<(), (&'static str, String)> {
        if self.offer_pending {
            // Glare: we are the impolite peer; the client rolls back and answers ours.
            debug!(session = self.id, "ignoring colliding client offer");
            return Ok(());
        }
        let offer = RTCSessionDescription::offer(sdp).map_err(|e| ("bad_sdp", e.to_string()))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| ("bad_sdp", e.to_string()))?;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(|e| ("negotiation_failed", e.to_string()))?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(|e| ("negotiation_failed", e.to_string()))?;
        let sdp = self.local_sdp().await;
        self.emit(SfuSignal::Answer { sdp }).await;
        self.flush_candidates().await;
        self.refresh_legs().await;
        self.maybe_offer().await;
        Ok(())
    }

    async fn on_answer(&mut self, sdp: String) -> Result<(), (&'static str, String)> {
        if !self.offer_pending {
            return Err((
                "unexpected_answer",
                "no offer is waiting for an answer".into(),
            ));
        }
        let answer = RTCSessionDescription::answer(sdp).map_err(|e| ("bad_sdp", e.to_string()))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|e| ("bad_sdp", e.to_string()))?;
        self.offer_pending = false;
        self.flush_candidates().await;
        self.refresh_legs().await;
        self.maybe_offer().await;
        Ok(())
    }

    async fn on_remote_candidate(&mut self, c: IceCandidate) -> Result<(), (&'static str, String)> {
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            ..Default::default()
        };
        if self.pc.remote_description().await.is_none() {
            if self.pending_candidates.len() < 64 {
                self.pending_candidates.push(init);
            }
            return Ok(());
        }
        self.pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| ("bad_candidate", e.to_string()))
    }

    async fn flush_candidates(&mut self) {
        for init in std::mem::take(&mut self.pending_candidates) {
            if let Err(e) = self.pc.add_ice_candidate(init).await {
                self.error("bad_candidate", e.to_string()).await;
            }
        }
    }

    async fn local_sdp(&self) -> String {
        let sdp = self
            .pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default();
        udp_mux::rewrite_sdp(&sdp, &self.driver_addrs, self.announced)
    }

    /// Sends our offer when subscriptions changed and no negotiation is in flight.
    async fn maybe_offer(&mut self) {
        if !self.needs_offer || self.offer_pending {
            return;
        }
        let offer = match self.pc.create_offer(None).await {
            Ok(offer) => offer,
            Err(e) => {
                self.error("negotiation_failed", e.to_string()).await;
                return;
            }
        };
        if let Err(e) = self.pc.set_local_description(offer).await {
            self.error("negotiation_failed", e.to_string()).await;
            return;
        }
        self.needs_offer = false;
        self.offer_pending = true;
        let sdp = self.local_sdp().await;
        self.emit(SfuSignal::Offer { sdp }).await;
        self.refresh_legs().await;
    }

    /// Learns each subscribed track's negotiated payload type and extension ids, and
    /// marks consumers ready once the transport is up.
    async fn refresh_legs(&mut self) {
        // Only a fully negotiated leg may carry media: before the subscriber has
        // answered, it could not map the stream and the first key frame would be lost.
        if self.offer_pending || self.needs_offer {
            return;
        }
        let mut newly_ready = Vec::new();
        for sub in self.subscriptions.values() {
            let Some(producer) = sub.producer.upgrade() else {
                continue;
            };
            if !sub.consumer.has_leg() {
                let Ok(params) = sub.sender.get_parameters().await else {
                    continue;
                };
                let codec = params.rtp_parameters.codecs.iter().find(|c| {
                    c.rtp_codec
                        .mime_type
                        .eq_ignore_ascii_case(&producer.codec.mime_type)
                });
                let Some(codec) = codec else {
                    continue;
                };
                let subscriber_ext: Vec<(String, u8)> = params
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .filter_map(|e| u8::try_from(e.id).ok().map(|id| (e.uri.clone(), id)))
                    .collect();
                sub.consumer.set_leg(LegParameters::new(
                    codec.payload_type,
                    &producer.extensions,
                    &subscriber_ext,
                ));
            }
            if self.connected && !sub.consumer.is_ready() && sub.consumer.has_leg() {
                sub.consumer.set_ready(true);
                newly_ready.push((producer, sub.consumer.clone()));
            }
        }
        // A new subscriber needs a key frame before it can show anything.
        for (producer, consumer) in newly_ready {
            if producer.kind == MediaKind::Video {
                let layer = consumer.wanted_layer(&producer.layers);
                producer.request_keyframe(layer, Instant::now()).await;
            }
        }
    }

    async fn on_state(&mut self, state: RTCPeerConnectionState) -> Option<CloseReason> {
        match state {
            RTCPeerConnectionState::Connected => {
                if !self.connected {
                    self.connected = true;
                    if let Some(sfu) = self.sfu.upgrade() {
                        sfu.on_connected(self.started.elapsed());
                    }
                }
                self.refresh_legs().await;
                None
            }
            RTCPeerConnectionState::Failed => Some(CloseReason::ConnectionFailed),
            RTCPeerConnectionState::Closed => Some(CloseReason::ConnectionFailed),
            _ => None,
        }
    }

    async fn set_max_layer(&mut self, track: &str, layer: Layer) {
        match self.subscriptions.get(track) {
            Some(sub) => sub.consumer.set_max_layer(layer),
            None => {
                self.error("unknown_track", "no such subscribed track".into())
                    .await
            }
        }
    }

    async fn subscribe(&mut self, producer: Arc<Producer>) {
        if self.subscriptions.contains_key(&producer.id) {
            return;
        }
        let out_ssrc: u32 = rand::random();
        let kind = match producer.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            producer.publisher.clone(),
            producer.id.clone(),
            producer.id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    ..Default::default()
                },
                codec: producer.codec.clone(),
                ..Default::default()
            }],
        )));
        // A transceiver of its own, send-only: `add_track` would reuse any transceiver
        // without a sender, including the ones this participant publishes on, and a
        // client cannot be relied on to receive on its own (simulcast) send m-line.
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![producer.publisher.clone()],
            send_encodings: Vec::new(),
        };
        let added = self
            .pc
            .add_transceiver_from_track(track.clone() as Arc<dyn TrackLocal>, Some(init))
            .await;
        let sender = match added {
            Ok(transceiver) => match transceiver.sender().await {
                Ok(Some(sender)) => sender,
                _ => {
                    self.error("subscribe_failed", "transceiver without a sender".into())
                        .await;
                    return;
                }
            },
            Err(e) => {
                self.error("subscribe_failed", e.to_string()).await;
                return;
            }
        };
        let consumer = Arc::new(Consumer::new(
            self.participant.clone(),
            &producer,
            track.clone(),
            out_ssrc,
            self.join.clone(),
        ));
        producer.add_consumer(consumer.clone());
        let rtcp_task = tokio::spawn(relay_feedback(track, consumer.clone()));
        self.subscriptions.insert(
            producer.id.clone(),
            Subscription {
                consumer,
                out_ssrc,
                clock_rate: producer.codec.clock_rate,
                sender,
                producer: Arc::downgrade(&producer),
                rtcp_task,
            },
        );
        self.emit(SfuSignal::TrackPublished {
            track: producer.info(),
        })
        .await;
        self.needs_offer = true;
        self.maybe_offer().await;
    }

    async fn unsubscribe(&mut self, track: &str, renegotiate: bool) {
        let Some(sub) = self.subscriptions.remove(track) else {
            return;
        };
        sub.rtcp_task.abort();
        if let Some(producer) = sub.producer.upgrade() {
            producer.remove_consumer(&self.participant);
        }
        sub.consumer.set_ready(false);
        if renegotiate {
            if let Err(e) = self.pc.remove_track(&sub.sender).await {
                debug!(session = self.id, "remove_track failed: {e}");
            }
            self.emit(SfuSignal::TrackUnpublished {
                track: track.to_string(),
            })
            .await;
            self.needs_offer = true;
            self.maybe_offer().await;
        }
    }

    fn on_remote_track(&mut self, track: Arc<dyn TrackRemote>) {
        if !self.can_publish {
            // The grant does not allow publishing: the track is received and dropped.
            let task = tokio::spawn(async move { while track.poll().await.is_some() {} });
            self.producer_tasks.push(task);
            return;
        }
        // Random suffix: ids stay unique when the same participant rejoins.
        let id = format!("{}-{:08x}", self.participant, rand::random::<u32>());
        let Some(sfu) = self.sfu.upgrade() else {
            return;
        };
        let task = tokio::spawn(run_producer(
            id,
            self.participant.clone(),
            self.id,
            track,
            self.pc.clone(),
            self.room.clone(),
            sfu.metrics.clone(),
            self.join.clone(),
        ));
        self.producer_tasks.push(task);
    }

    async fn teardown(mut self, reason: CloseReason) {
        let tracks: Vec<String> = self.subscriptions.keys().cloned().collect();
        for track in tracks {
            self.unsubscribe(&track, false).await;
        }
        let (removed, members) = self.room.leave(&self.participant, self.id);
        notify_unpublished(&removed, &members);
        for task in self.producer_tasks.drain(..) {
            task.abort();
        }
        self.sample_stats().await;
        let record = self.metadata.record(std::time::SystemTime::now());
        if let Some(sfu) = self.sfu.upgrade() {
            record.observe(&sfu.metrics);
        }
        if let Err(e) = self.pc.close().await {
            debug!(session = self.id, "close failed: {e}");
        }
        self.emit(SfuSignal::Closed {
            reason,
            record: Some(record),
        })
        .await;
        if let Some(sfu) = self.sfu.upgrade() {
            sfu.session_ended(self.id, &self.room, reason);
        }
        debug!(session = self.id, ?reason, "session closed");
    }
}

fn notify_unpublished(removed: &[Arc<Producer>], members: &[crate::room::Member]) {
    for producer in removed {
        for member in members {
            let _ = member
                .commands
                .send(SessionCmd::Unsubscribe(producer.id.clone()));
        }
    }
}

/// Relays a subscriber's key-frame requests (PLI/FIR) to the publisher, throttled there.
async fn relay_feedback(track: Arc<TrackLocalStaticRTP>, consumer: Arc<Consumer>) {
    while let Some(event) = track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        let mut wants_keyframe = false;
        for p in &packets {
            let kind = if p.as_any().is::<PictureLossIndication>() {
                "pli"
            } else if p.as_any().is::<FullIntraRequest>() {
                "fir"
            } else {
                continue;
            };
            wants_keyframe = true;
            if let Some(producer) = consumer.producer.upgrade() {
                producer.count_feedback("in", kind);
            }
        }
        if !wants_keyframe {
            continue;
        }
        let Some(producer) = consumer.producer.upgrade() else {
            return;
        };
        let layer = consumer.wanted_layer(&producer.layers);
        producer.request_keyframe(layer, Instant::now()).await;
    }
}

/// Reads one published track: registers it in the room once it opens with a known
/// codec, forwards every packet, and unpublishes it when the track ends.
#[allow(clippy::too_many_arguments)]
async fn run_producer(
    id: String,
    publisher: String,
    session: SessionId,
    track: Arc<dyn TrackRemote>,
    pc: Arc<dyn PeerConnection>,
    room: Arc<Room>,
    metrics: Arc<veil_metrics::Metrics>,
    join: Arc<JoinClock>,
) {
    let mut producer: Option<Arc<Producer>> = None;
    // Streams (simulcast layers) that opened before their codec was known. webrtc 0.21
    // can copy a receiver's coding into the track before the codec is filled in, and
    // never updates the copy; the first packet's payload type then names the codec among
    // the negotiated ones. Waiting for it, rather than giving up on the track, is what
    // keeps such a camera from never reaching anyone.
    let mut opened: Vec<RTCTrackEventInit> = Vec::new();
    while let Some(event) = track.poll().await {
        let (codec, receiver_id, packet) = match event {
            TrackRemoteEvent::OnOpen(init) => {
                if let Some(p) = &producer {
                    p.add_stream(init.ssrc, init.rid.as_deref());
                    continue;
                }
                let codec = track.codec(init.ssrc).await;
                let receiver_id = init.receiver_id;
                opened.push(init);
                match codec {
                    Some(codec) => (codec, receiver_id, None),
                    None => continue,
                }
            }
            TrackRemoteEvent::OnRtpPacket(packet) => {
                if let Some(p) = &producer {
                    p.forward(packet).await;
                    continue;
                }
                let Some(receiver_id) = opened.first().map(|init| init.receiver_id) else {
                    continue;
                };
                let payload_type = packet.header.payload_type;
                match negotiated_codec(&pc, &receiver_id, payload_type).await {
                    Some(codec) => {
                        debug!(session, "codec found by the first packet's payload type");
                        (codec, receiver_id, Some(packet))
                    }
                    None => continue,
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let kind = match track.kind().await {
            RtpCodecKind::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        };
        let mut layers: Vec<Layer> = track
            .codings()
            .await
            .iter()
            .filter_map(|c| Layer::from_rid(&c.rtp_coding_parameters.rid))
            .collect();
        layers.sort();
        layers.dedup();
        let extensions = receiver_extensions(&pc, &receiver_id).await;
        let p = Arc::new(Producer::new(
            id.clone(),
            publisher.clone(),
            session,
            kind,
            codec,
            layers,
            extensions,
            track.clone(),
            metrics.clone(),
            join.clone(),
        ));
        for init in opened.drain(..) {
            p.add_stream(init.ssrc, init.rid.as_deref());
        }
        for member in room.add_producer(p.clone()) {
            let _ = member.commands.send(SessionCmd::Subscribe(p.clone()));
        }
        if let Some(packet) = packet {
            p.forward(packet).await;
        }
        producer = Some(p);
    }
    if let Some((p, members)) = room.remove_producer(&id) {
        notify_unpublished(&[p], &members);
    }
}

/// The negotiated media codec a receiver's packets with `payload_type` carry; `None` for
/// a retransmission or FEC payload type, which names no media codec.
async fn negotiated_codec(
    pc: &Arc<dyn PeerConnection>,
    receiver_id: &rtc::rtp_transceiver::RTCRtpReceiverId,
    payload_type: u8,
) -> Option<RTCRtpCodec> {
    receiver_parameters(pc, receiver_id)
        .await?
        .rtp_parameters
        .codecs
        .into_iter()
        .find(|c| c.payload_type == payload_type)
        .map(|c| c.rtp_codec)
        .filter(|codec| !is_repair_codec(&codec.mime_type))
}

/// RTX, RED and FEC carry other packets rather than media of their own.
fn is_repair_codec(mime_type: &str) -> bool {
    let subtype = mime_type.rsplit('/').next().unwrap_or_default();
    ["rtx", "red", "ulpfec", "flexfec", "flexfec-03"]
        .iter()
        .any(|repair| subtype.eq_ignore_ascii_case(repair))
}

async fn receiver_extensions(
    pc: &Arc<dyn PeerConnection>,
    receiver_id: &rtc::rtp_transceiver::RTCRtpReceiverId,
) -> Vec<(String, u8)> {
    let Some(params) = receiver_parameters(pc, receiver_id).await else {
        return Vec::new();
    };
    params
        .rtp_parameters
        .header_extensions
        .iter()
        .filter_map(|e| u8::try_from(e.id).ok().map(|id| (e.uri.clone(), id)))
        .collect()
}

/// What was negotiated for one of the connection's receivers.
async fn receiver_parameters(
    pc: &Arc<dyn PeerConnection>,
    receiver_id: &rtc::rtp_transceiver::RTCRtpReceiverId,
) -> Option<RTCRtpReceiveParameters> {
    for receiver in pc.get_receivers().await {
        if receiver.id() == *receiver_id {
            return receiver.get_parameters().await.ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::is_repair_codec;

    #[test]
    fn repair_payload_types_name_no_media_codec() {
        for mime in [
            "video/rtx",
            "audio/rtx",
            "video/red",
            "video/ulpfec",
            "video/flexfec-03",
        ] {
            assert!(is_repair_codec(mime), "{mime}");
        }
        for mime in ["video/VP8", "video/H264", "audio/opus", "video/VP9"] {
            assert!(!is_repair_codec(mime), "{mime}");
        }
    }
}
