//! Veil's media plane: a selective forwarding unit on the `webrtc` crate.
//!
//! Owns rooms (by opaque id), one peer connection per participant, the forwarding of
//! RTP from publishers to subscribers, RTCP feedback, simulcast layer choice and the
//! single UDP port all media uses. Admits a participant only on a valid join grant.
//!
//! Must never: read, alter or store a media payload (it is SFrame ciphertext — only
//! headers are rewritten); hold a media key; write media to disk; log or export an IP
//! address, a name or any content. It has no database.

pub mod feedback;
pub mod forwarder;
pub mod grant;
pub mod identity;
pub mod keyframe;
pub mod metadata;
pub mod node;
pub mod participant;
pub mod room;
pub mod sequence;
pub mod signal;
pub mod track;
pub mod udp_mux;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{self, UnboundedSender};
use tracing::debug;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, RTCConfigurationBuilder, Registry,
    SettingEngineBuilder, register_default_interceptors,
};

use rtc::rtp_transceiver::rtp_sender::{RTCRtpHeaderExtensionCapability, RtpCodecKind};

use veil_metrics::Metrics;

use crate::grant::GrantVerifier;
use crate::participant::{Session, SessionCmd, SessionEvents};
use crate::room::{Member, Room};
pub use crate::signal::*;
use crate::udp_mux::UdpMux;

/// SFU settings; defaults run on a laptop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SfuConfig {
    /// The one UDP address all media uses.
    pub media_addr: SocketAddr,
    /// Address announced to clients in ICE candidates instead of the bound one
    /// (a public IP in front of NAT). Required when `media_addr` is a wildcard.
    pub announce_ip: Option<IpAddr>,
    /// A session whose peer connection is not up by then is closed.
    #[serde(with = "seconds")]
    pub connect_timeout: Duration,
    /// Most sessions this SFU holds at once.
    pub max_sessions: usize,
    /// `veil sfu` only: where this node serves `/metrics` and `/healthz`.
    pub http_addr: SocketAddr,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            media_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7882),
            announce_ip: None,
            connect_timeout: Duration::from_secs(30),
            max_sessions: 1000,
            http_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081),
        }
    }
}

mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !(secs.is_finite() && secs > 0.0 && secs < 86_400.0) {
            return Err(serde::de::Error::custom(
                "expected seconds between 0 and 86400",
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the media UDP port: {0}")]
    Bind(#[from] std::io::Error),
    #[error("media_addr is a wildcard address: set announce_ip to the address clients reach")]
    NeedsAnnounceIp,
}

struct SessionEntry {
    commands: UnboundedSender<SessionCmd>,
}

/// State shared by the SFU handle and its session actors.
pub struct SfuInner {
    config: SfuConfig,
    /// Replaced when a node (re)registers with signaling and learns its grant key.
    verifier: std::sync::RwLock<GrantVerifier>,
    pub(crate) metrics: Arc<Metrics>,
    mux: Arc<UdpMux>,
    announced: SocketAddr,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    next_session: AtomicU64,
    connected_sessions: AtomicU64,
    join_time_total_micros: AtomicU64,
}

impl SfuInner {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn on_connected(&self, join_time: Duration) {
        self.metrics
            .connect_seconds
            .observe(join_time.as_secs_f64());
        self.connected_sessions.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(join_time.as_micros()).unwrap_or(u64::MAX);
        self.join_time_total_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn session_ended(&self, session: SessionId, room: &Arc<Room>, reason: CloseReason) {
        self.metrics
            .sessions_ended
            .with_label_values(&[reason.label()])
            .inc();
        self.sessions().remove(&session);
        self.metrics.sessions_live.set(self.sessions().len() as i64);
        let mut rooms = self.rooms();
        if room.is_empty() && rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.id);
        }
        self.metrics.sfu_rooms.set(rooms.len() as i64);
    }
}

/// The in-process SFU. Cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<SfuInner>,
}

/// A snapshot of what the SFU holds, for tests and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SfuStats {
    pub sessions: usize,
    pub rooms: usize,
    pub mux_connections: usize,
    pub mux_addresses: usize,
}

impl Sfu {
    pub async fn start(
        config: SfuConfig,
        verifier: GrantVerifier,
        metrics: Arc<Metrics>,
    ) -> Result<Sfu, StartError> {
        let announce_ip = match (config.announce_ip, config.media_addr.ip()) {
            (Some(ip), _) => ip,
            (None, ip) if ip.is_unspecified() => return Err(StartError::NeedsAnnounceIp),
            (None, ip) => ip,
        };
        let mux = UdpMux::bind(config.media_addr).await?;
        let announced = SocketAddr::new(announce_ip, mux.local_addr().port());
        Ok(Sfu {
            inner: Arc::new(SfuInner {
                config,
                verifier: std::sync::RwLock::new(verifier),
                metrics,
                mux,
                announced,
                rooms: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
                connected_sessions: AtomicU64::new(0),
                join_time_total_micros: AtomicU64::new(0),
            }),
        })
    }

    /// Trusts grants signed by a new key from now on (a node registering with signaling).
    pub fn set_grant_verifier(&self, verifier: GrantVerifier) {
        *self
            .inner
            .verifier
            .write()
            .unwrap_or_else(|e| e.into_inner()) = verifier;
    }

    /// Tracks published across all rooms.
    pub fn track_count(&self) -> usize {
        self.inner
            .rooms()
            .values()
            .map(|r| r.producer_count())
            .sum()
    }

    /// The UDP address media flows to, as clients see it.
    pub fn media_addr(&self) -> SocketAddr {
        self.inner.announced
    }

    pub fn stats(&self) -> SfuStats {
        let mux = self.inner.mux.stats();
        SfuStats {
            sessions: self.inner.sessions().len(),
            rooms: self.inner.rooms().len(),
            mux_connections: mux.connections,
            mux_addresses: mux.addresses,
        }
    }

    /// Mean time from admission to a connected peer connection, if any connected.
    pub fn mean_connect_time(&self) -> Option<Duration> {
        let n = self.inner.connected_sessions.load(Ordering::Relaxed);
        let total = self.inner.join_time_total_micros.load(Ordering::Relaxed);
        (n > 0).then(|| Duration::from_micros(total / n))
    }

    /// Asks a session to close as if its client had left (no-op once it has ended).
    /// Synchronous, so that a drop guard can call it.
    pub fn end_session(&self, session: SessionId) {
        let commands = self
            .inner
            .sessions()
            .get(&session)
            .map(|s| s.commands.clone());
        if let Some(c) = commands {
            let _ = c.send(SessionCmd::Close(CloseReason::Left));
        }
    }

    /// Closes every session.
    pub async fn shutdown(&self) {
        let commands: Vec<_> = self
            .inner
            .sessions()
            .values()
            .map(|s| s.commands.clone())
            .collect();
        for c in commands {
            let _ = c.send(SessionCmd::Close(CloseReason::Shutdown));
        }
    }

    async fn build_peer_connection(
        &self,
        commands: UnboundedSender<SessionCmd>,
    ) -> Result<
        (
            Arc<dyn PeerConnection>,
            Vec<SocketAddr>,
            Arc<feedback::ReceiverReports>,
        ),
        SfuError,
    > {
        let pc_err = |e: webrtc::error::Error| SfuError::PeerConnection(e.to_string());
        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(pc_err)?;
        for uri in [
            "urn:ietf:params:rtp-hdrext:sdes:mid",
            "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        ] {
            media
                .register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: uri.to_owned(),
                    },
                    RtpCodecKind::Video,
                    None,
                )
                .map_err(pc_err)?;
        }
        for uri in [
            "urn:ietf:params:rtp-hdrext:sdes:mid",
            "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        ] {
            media
                .register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: uri.to_owned(),
                    },
                    RtpCodecKind::Audio,
                    None,
                )
                .map_err(pc_err)?;
        }
        let (registry, reports) = feedback::install(
            register_default_interceptors(Registry::new(), &mut media).map_err(pc_err)?,
        );
        let ufrag = random_token(16);
        let settings = SettingEngineBuilder::new()
            .with_ice_credentials(ufrag.clone(), random_token(32))
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let runtime = self.inner.mux.runtime_for(&ufrag);
        // The driver binds a throwaway loopback socket; the mux runtime replaces it.
        let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_runtime(runtime.clone())
            .with_handler(Arc::new(SessionEvents { commands }))
            .with_udp_addrs(vec![bind])
            .build()
            .await
            .map_err(pc_err)?;
        Ok((Arc::new(pc), runtime.driver_addrs(), reports))
    }
}

#[async_trait::async_trait]
impl SfuControl for Sfu {
    async fn open_session(&self, request: SessionRequest) -> Result<SessionOpened, SfuError> {
        let presented = Instant::now();
        let verifier = self
            .inner
            .verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let grant = verifier
            .verify(
                request.grant.as_deref(),
                request.room.as_deref(),
                unix_now(),
            )
            .inspect_err(|e| self.inner.metrics.error(e.code()))?;
        if self.inner.sessions().len() >= self.inner.config.max_sessions {
            self.inner.metrics.error("sfu_full");
            return Err(SfuError::Full);
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (pc, driver_addrs, reports) = self.build_peer_connection(cmd_tx.clone()).await?;
        let session = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let room = {
            let mut rooms = self.inner.rooms();
            let room = rooms
                .entry(grant.room.clone())
                .or_insert_with(|| Arc::new(Room::new(grant.room.clone())))
                .clone();
            self.inner.metrics.sfu_rooms.set(rooms.len() as i64);
            room
        };
        let live = {
            let mut sessions = self.inner.sessions();
            sessions.insert(
                session,
                SessionEntry {
                    commands: cmd_tx.clone(),
                },
            );
            sessions.len()
        };
        self.inner.metrics.sessions_started.inc();
        self.inner.metrics.sessions_live.set(live as i64);
        let (replaced, existing) = room.join(
            &grant.participant,
            Member {
                session,
                commands: cmd_tx.clone(),
                can_subscribe: grant.can_subscribe,
            },
        );
        if let Some(old) = replaced {
            let _ = old.commands.send(SessionCmd::Close(CloseReason::Replaced));
        }
        for producer in existing {
            let _ = cmd_tx.send(SessionCmd::Subscribe(producer));
        }
        let actor = Session::new(
            session,
            grant.participant.clone(),
            grant.can_publish,
            room,
            pc,
            Arc::downgrade(&self.inner),
            events_tx,
            cmd_tx,
            driver_addrs,
            self.inner.announced,
            presented,
            reports,
        );
        tokio::spawn(actor.run(cmd_rx, self.inner.config.connect_timeout));
        debug!(session, "session opened");
        Ok(SessionOpened {
            session,
            room: grant.room,
            participant: grant.participant,
            events: events_rx,
        })
    }

    async fn signal(&self, session: SessionId, signal: ClientSignal) -> Result<(), SfuError> {
        let sessions = self.inner.sessions();
        let entry = sessions.get(&session).ok_or(SfuError::UnknownSession)?;
        entry
            .commands
            .send(SessionCmd::Client(signal))
            .map_err(|_| SfuError::UnknownSession)
    }

    async fn close_session(&self, session: SessionId) {
        self.end_session(session);
    }

    fn live_sessions(&self) -> usize {
        self.inner.sessions().len()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Random ICE-safe token (ICE ufrag/pwd allow `[A-Za-z0-9+/]`).
fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}
