//! Signaling's side of the node link: SFU nodes connect here over QUIC (pinned mutual
//! TLS), register and heartbeat; each room is placed on the least-loaded healthy node,
//! and every media session is one QUIC stream to its node. A node that misses three
//! heartbeats is marked down, its sessions end with `node_lost`, and their rooms are
//! placed again on the next join.
//!
//! [`Cluster`] implements [`SfuControl`], so the WebSocket code cannot tell a remote
//! node from the in-process SFU.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::mpsc;
use tracing::{info, warn};
use veil_metrics::Metrics;
use veil_sfu::grant::GrantVerifier;
use veil_sfu::identity::Identity;
use veil_sfu::wire::{
    NodeFrame, NodeLoad, NodeStatus, PROTOCOL_VERSION, SessionEvent, SessionFrame, SignalingFrame,
    read_frame, write_frame,
};
use veil_sfu::{
    ClientSignal, CloseReason, SessionId, SessionOpened, SessionRequest, SfuControl, SfuError,
    SfuSignal, unix_now,
};

/// A node is down when it has not heart-beaten for this long.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// One registered SFU node as signaling sees it.
struct Node {
    region: String,
    media_addr: SocketAddr,
    connection: quinn::Connection,
    load: NodeLoad,
    last_heartbeat: Instant,
    up: bool,
    /// Distinguishes a node's reconnection from its previous connection.
    generation: u64,
}

struct RemoteSession {
    node: String,
    frames: mpsc::UnboundedSender<SessionFrame>,
    events: mpsc::Sender<SfuSignal>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, Node>,
    /// Room → node it is placed on.
    placement: HashMap<String, String>,
}

type Sessions = Arc<Mutex<HashMap<SessionId, RemoteSession>>>;

fn lock_sessions(
    sessions: &Sessions,
) -> std::sync::MutexGuard<'_, HashMap<SessionId, RemoteSession>> {
    sessions.lock().unwrap_or_else(|e| e.into_inner())
}

/// SFU nodes reached over QUIC, behind the same trait as the in-process SFU.
pub struct Cluster {
    state: Mutex<State>,
    /// Shared with each session's event pump, which removes its entry when it ends.
    sessions: Sessions,
    verifier: GrantVerifier,
    grant_key: String,
    next_session: AtomicU64,
    next_generation: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Cluster {
    pub fn new(
        verifier: GrantVerifier,
        grant_public_key: &[u8],
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Cluster {
            state: Mutex::new(State::default()),
            sessions: Arc::new(Mutex::new(HashMap::new())),
            verifier,
            grant_key: URL_SAFE_NO_PAD.encode(grant_public_key),
            next_session: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
            metrics,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens for SFU nodes on `addr`; only nodes whose certificate fingerprint is in
    /// `pinned` complete the handshake. Returns the bound address.
    pub fn listen(
        self: &Arc<Self>,
        identity: &Identity,
        pinned: Vec<String>,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
        let config = identity.server_config(pinned).map_err(|e| e.to_string())?;
        let endpoint = quinn::Endpoint::server(config, addr).map_err(|e| e.to_string())?;
        let bound = endpoint.local_addr().map_err(|e| e.to_string())?;
        let cluster = self.clone();
        // One task accepts nodes and checks heartbeats, so aborting it stops both.
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    incoming = endpoint.accept() => {
                        let Some(incoming) = incoming else { break };
                        let cluster = cluster.clone();
                        tokio::spawn(async move {
                            // A peer without a pinned certificate fails here.
                            match incoming.await {
                                Ok(connection) => cluster.serve_node(connection).await,
                                Err(e) => warn!("node link handshake refused: {e}"),
                            }
                        });
                    }
                    _ = ticker.tick() => cluster.check_heartbeats(Instant::now()),
                }
            }
        });
        Ok((bound, task))
    }

    async fn serve_node(self: Arc<Self>, connection: quinn::Connection) {
        let Ok((mut send, mut recv)) = connection.accept_bi().await else {
            return;
        };
        let (name, region, media_addr) = match read_frame::<_, NodeFrame>(&mut recv).await {
            Ok(Some(NodeFrame::Register {
                version,
                node,
                region,
                media_addr,
            })) => {
                if version != PROTOCOL_VERSION {
                    let reason = format!(
                        "protocol version {version}; this signaling speaks {PROTOCOL_VERSION}"
                    );
                    let _ = write_frame(&mut send, &SignalingFrame::Refused { reason }).await;
                    return;
                }
                (node, region, media_addr)
            }
            _ => return,
        };
        if write_frame(
            &mut send,
            &SignalingFrame::Registered {
                grant_key: self.grant_key.clone(),
            },
        )
        .await
        .is_err()
        {
            return;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.state();
            state.nodes.insert(
                name.clone(),
                Node {
                    region,
                    media_addr,
                    connection: connection.clone(),
                    load: NodeLoad::default(),
                    last_heartbeat: Instant::now(),
                    up: true,
                    generation,
                },
            );
        }
        info!(node = %name, "SFU node registered");
        loop {
            match read_frame::<_, NodeFrame>(&mut recv).await {
                Ok(Some(NodeFrame::Heartbeat { load })) => {
                    let mut state = self.state();
                    if let Some(node) = state.nodes.get_mut(&name)
                        && node.generation == generation
                    {
                        node.load = load;
                        node.last_heartbeat = Instant::now();
                        node.up = true;
                    }
                }
                Ok(Some(NodeFrame::Register { .. })) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.node_down(&name, generation);
    }

    /// Marks nodes that stopped heart-beating as down.
    pub fn check_heartbeats(&self, now: Instant) {
        let stale: Vec<(String, u64)> = self
            .state()
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.up && now.saturating_duration_since(n.last_heartbeat) >= NODE_TIMEOUT
            })
            .map(|(name, n)| (name.clone(), n.generation))
            .collect();
        for (name, generation) in stale {
            self.node_down(&name, generation);
        }
    }

    /// A node is gone: forget its rooms and end its sessions with `node_lost`.
    fn node_down(&self, name: &str, generation: u64) {
        let lost: Vec<RemoteSession> = {
            let mut state = self.state();
            match state.nodes.get_mut(name) {
                Some(node) if node.generation == generation => {
                    if !node.up {
                        return;
                    }
                    node.up = false;
                    node.connection.close(0u32.into(), b"node down");
                }
                _ => return,
            }
            state.placement.retain(|_, node| node != name);
            let mut sessions = lock_sessions(&self.sessions);
            let ids: Vec<SessionId> = sessions
                .iter()
                .filter(|(_, s)| s.node == name)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| sessions.remove(&id))
                .collect()
        };
        warn!(node = %name, sessions = lost.len(), "SFU node down");
        for session in lost {
            let _ = session.events.try_send(SfuSignal::Closed {
                reason: CloseReason::NodeLost,
                record: None,
            });
        }
    }

    /// Every node signaling knows, up or down.
    pub fn node_statuses(&self) -> Vec<NodeStatus> {
        let mut out: Vec<NodeStatus> = self
            .state()
            .nodes
            .iter()
            .map(|(name, n)| NodeStatus {
                name: name.clone(),
                region: n.region.clone(),
                up: n.up,
                load: n.load,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The node a room is on, if placed.
    pub fn placement(&self, room: &str) -> Option<String> {
        self.state().placement.get(room).cloned()
    }

    /// The node for `room`: where it already is, or the least-loaded healthy node.
    fn place(&self, room: &str) -> Option<(String, quinn::Connection, SocketAddr)> {
        let mut state = self.state();
        if let Some(name) = state.placement.get(room)
            && let Some(node) = state.nodes.get(name).filter(|n| n.up)
        {
            return Some((name.clone(), node.connection.clone(), node.media_addr));
        }
        let (name, node) =
            state
                .nodes
                .iter()
                .filter(|(_, n)| n.up)
                .min_by(|(an, a), (bn, b)| {
                    (a.load.sessions, a.load.rooms, an.as_str())
                        .partial_cmp(&(b.load.sessions, b.load.rooms, bn.as_str()))
                        .unwrap_or(std::cmp::Ordering::Equal)
                })?;
        let chosen = (name.clone(), node.connection.clone(), node.media_addr);
        // Count the room at once, so rooms created together spread out before the
        // next heartbeat reports the real load.
        if let Some(n) = state.nodes.get_mut(&chosen.0) {
            n.load.rooms += 1;
        }
        state.placement.insert(room.to_string(), chosen.0.clone());
        Some(chosen)
    }
}

#[async_trait::async_trait]
impl SfuControl for Cluster {
    async fn open_session(&self, request: SessionRequest) -> Result<SessionOpened, SfuError> {
        // Refuse bad grants here, before any node is involved.
        let grant = self
            .verifier
            .verify(
                request.grant.as_deref(),
                request.room.as_deref(),
                unix_now(),
            )
            .inspect_err(|e| self.metrics.error(e.code()))?;
        let Some((node, connection, _)) = self.place(&grant.room) else {
            self.metrics.error("sfu_full");
            return Err(SfuError::Full);
        };
        let link =
            |e: &dyn std::fmt::Display| SfuError::PeerConnection(format!("node {node}: {e}"));
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| link(&e))?;
        write_frame(&mut send, &SessionFrame::Open { request })
            .await
            .map_err(|e| link(&e))?;
        let (remote_session, room, participant) =
            match read_frame::<_, SessionEvent>(&mut recv).await {
                Ok(Some(SessionEvent::Opened {
                    session,
                    room,
                    participant,
                })) => (session, room, participant),
                Ok(Some(SessionEvent::Refused { code, message })) => {
                    return Err(SfuError::PeerConnection(format!("{code}: {message}")));
                }
                Ok(_) => return Err(link(&"no answer")),
                Err(e) => return Err(link(&e)),
            };
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<SessionFrame>();
        lock_sessions(&self.sessions).insert(
            session,
            RemoteSession {
                node: node.clone(),
                frames: frames_tx,
                events: events_tx.clone(),
            },
        );
        tokio::spawn(async move {
            while let Some(frame) = frames_rx.recv().await {
                let close = matches!(frame, SessionFrame::Close {});
                if write_frame(&mut send, &frame).await.is_err() || close {
                    break;
                }
            }
            let _ = send.finish();
        });
        let events = events_tx;
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            loop {
                match read_frame::<_, SessionEvent>(&mut recv).await {
                    Ok(Some(SessionEvent::Event { event })) => {
                        let closed = matches!(event, SfuSignal::Closed { .. });
                        if events.send(event).await.is_err() || closed {
                            break;
                        }
                    }
                    Ok(Some(_)) => {}
                    // The stream broke without a close: the node is gone.
                    Ok(None) | Err(_) => {
                        let _ = events
                            .send(SfuSignal::Closed {
                                reason: CloseReason::NodeLost,
                                record: None,
                            })
                            .await;
                        break;
                    }
                }
            }
            lock_sessions(&sessions).remove(&session);
        });
        tracing::debug!(session, remote_session, "remote session opened");
        Ok(SessionOpened {
            session,
            room,
            participant,
            events: events_rx,
        })
    }

    async fn signal(&self, session: SessionId, signal: ClientSignal) -> Result<(), SfuError> {
        let sessions = lock_sessions(&self.sessions);
        let remote = sessions.get(&session).ok_or(SfuError::UnknownSession)?;
        remote
            .frames
            .send(SessionFrame::Signal { signal })
            .map_err(|_| SfuError::UnknownSession)
    }

    async fn close_session(&self, session: SessionId) {
        if let Some(remote) = lock_sessions(&self.sessions).remove(&session) {
            let _ = remote.frames.send(SessionFrame::Close {});
        }
    }

    fn live_sessions(&self) -> usize {
        lock_sessions(&self.sessions).len()
    }

    fn nodes(&self) -> Vec<NodeStatus> {
        self.node_statuses()
    }
}
