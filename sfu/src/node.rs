//! An SFU as its own process (`veil sfu`): it connects to signaling over the node link
//! (QUIC, pinned mutual TLS), registers with its name, region and media address, learns
//! the key that verifies join grants, reports its load every second, and serves each
//! media session signaling opens on it as one QUIC stream. When signaling goes away
//! the node closes the sessions it carried and keeps trying to reconnect.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Sfu;
use crate::grant::GrantVerifier;
use crate::identity::{Identity, LINK_NAME};
use crate::signal::{SessionId, SfuControl, SfuSignal};
use crate::wire::{
    NodeFrame, NodeLoad, PROTOCOL_VERSION, SessionEvent, SessionFrame, SignalingFrame, WireError,
    read_frame, write_frame,
};

/// How an SFU node finds and trusts signaling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Signaling's node-link address (UDP, QUIC), `host:port`; resolved at each
    /// connection attempt, so a name that moves is followed.
    pub signaling_addr: String,
    /// SHA-256 fingerprint of signaling's link certificate (printed at its first start).
    pub signaling_fingerprint: String,
    /// This node's name, unique in the deployment.
    pub name: String,
    pub region: String,
    /// Where this node keeps its own link certificate.
    pub identity_dir: std::path::PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            signaling_addr: "127.0.0.1:7890".into(),
            signaling_fingerprint: String::new(),
            name: "sfu-1".into(),
            region: "local".into(),
            identity_dir: "data/sfu-link".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node link: {0}")]
    Link(String),
    #[error("signaling refused this node: {0}")]
    Refused(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

fn link_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Link(e.to_string())
}

/// Heartbeat period; signaling marks a node down after three missed.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Runs the node link until the process stops: connects, serves, reconnects.
pub async fn run(sfu: Sfu, identity: Identity, config: NodeConfig) -> Result<(), NodeError> {
    let pinned =
        crate::identity::parse_fingerprint(&config.signaling_fingerprint).map_err(link_err)?;
    let client = identity.client_config(pinned).map_err(link_err)?;
    let bind: SocketAddr = "[::]:0".parse().map_err(link_err)?;
    // Dual-stack where the system allows it, IPv4 otherwise.
    let mut endpoint = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(_) => {
            quinn::Endpoint::client("0.0.0.0:0".parse().map_err(link_err)?).map_err(link_err)?
        }
    };
    endpoint.set_default_client_config(client);
    loop {
        match serve_once(&sfu, &endpoint, &config).await {
            Err(NodeError::Refused(reason)) => return Err(NodeError::Refused(reason)),
            Err(e) => warn!("node link lost: {e}; reconnecting"),
            Ok(()) => warn!("node link closed; reconnecting"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One connection to signaling, from registration until it drops.
async fn serve_once(
    sfu: &Sfu,
    endpoint: &quinn::Endpoint,
    config: &NodeConfig,
) -> Result<(), NodeError> {
    let addr = tokio::net::lookup_host(&config.signaling_addr)
        .await
        .map_err(link_err)?
        .next()
        .ok_or_else(|| NodeError::Link(format!("{} did not resolve", config.signaling_addr)))?;
    let connection = endpoint
        .connect(addr, LINK_NAME)
        .map_err(link_err)?
        .await
        .map_err(link_err)?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(link_err)?;
    write_frame(
        &mut send,
        &NodeFrame::Register {
            version: PROTOCOL_VERSION,
            node: config.name.clone(),
            region: config.region.clone(),
            media_addr: sfu.media_addr(),
        },
    )
    .await?;
    match read_frame::<_, SignalingFrame>(&mut recv).await? {
        Some(SignalingFrame::Registered { grant_key }) => {
            let key = URL_SAFE_NO_PAD.decode(grant_key).map_err(link_err)?;
            sfu.set_grant_verifier(GrantVerifier::new(&key).map_err(link_err)?);
        }
        Some(SignalingFrame::Refused { reason }) => return Err(NodeError::Refused(reason)),
        None => {
            return Err(NodeError::Link(
                "signaling closed during registration".into(),
            ));
        }
    }
    info!(node = %config.name, "registered with signaling");
    let heartbeat = tokio::spawn(heartbeats(sfu.clone(), send));
    let mut sessions = tokio::task::JoinSet::new();
    let result = loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                sessions.spawn(serve_session(sfu.clone(), send, recv));
            }
            Err(e) => break Err(link_err(e)),
        }
    };
    heartbeat.abort();
    // Every session this connection carried ends with it (each task's guard closes its
    // session): nobody can signal them any more, and their published tracks must not
    // linger in rooms that people rejoin through the next connection.
    sessions.shutdown().await;
    result
}

/// Ends a session when the task serving its stream stops, however it stops: the stream
/// closing, the connection dropping, or the task being aborted.
struct SessionGuard {
    sfu: Sfu,
    session: SessionId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sfu.end_session(self.session);
    }
}

async fn heartbeats(sfu: Sfu, mut send: quinn::SendStream) {
    let mut cpu = CpuMeter::new();
    let mut ticker = tokio::time::interval(HEARTBEAT);
    loop {
        ticker.tick().await;
        let stats = sfu.stats();
        let load = NodeLoad {
            sessions: u32::try_from(stats.sessions).unwrap_or(u32::MAX),
            rooms: u32::try_from(stats.rooms).unwrap_or(u32::MAX),
            tracks: u32::try_from(sfu.track_count()).unwrap_or(u32::MAX),
            cpu: cpu.sample(),
        };
        if write_frame(&mut send, &NodeFrame::Heartbeat { load })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// This process's CPU use between samples, in cores.
struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    fn new() -> Self {
        CpuMeter { last: None }
    }

    fn sample(&mut self) -> f32 {
        let now = Instant::now();
        let Some(cpu) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| veil_metrics::process::parse_stat(&s))
            .map(|(cpu, _, _)| cpu)
        else {
            return 0.0;
        };
        let used = match self.last {
            Some((then, before)) => {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    (cpu - before) / wall
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, cpu));
        used as f32
    }
}

/// One media session carried on one stream.
async fn serve_session(sfu: Sfu, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let request = match read_frame::<_, SessionFrame>(&mut recv).await {
        Ok(Some(SessionFrame::Open { request })) => request,
        _ => return,
    };
    let mut opened = match sfu.open_session(request).await {
        Ok(opened) => opened,
        Err(e) => {
            let _ = write_frame(
                &mut send,
                &SessionEvent::Refused {
                    code: e.code().to_string(),
                    message: e.to_string(),
                },
            )
            .await;
            let _ = send.finish();
            return;
        }
    };
    let session = opened.session;
    let _guard = SessionGuard {
        sfu: sfu.clone(),
        session,
    };
    let reply = SessionEvent::Opened {
        session,
        room: opened.room.clone(),
        participant: opened.participant.clone(),
    };
    if write_frame(&mut send, &reply).await.is_err() {
        sfu.close_session(session).await;
        return;
    }
    let sfu_for_reader = sfu.clone();
    // Signals from signaling, in order, until the stream ends.
    let mut reader = tokio::spawn(async move {
        loop {
            match read_frame::<_, SessionFrame>(&mut recv).await {
                Ok(Some(SessionFrame::Signal { signal })) => {
                    let _ = sfu_for_reader.signal(session, signal).await;
                }
                Ok(Some(SessionFrame::Open { .. })) => {}
                Ok(Some(SessionFrame::Close {})) | Ok(None) | Err(_) => return,
            }
        }
    });
    loop {
        tokio::select! {
            event = opened.events.recv() => {
                let Some(event) = event else { break };
                let closed = matches!(event, SfuSignal::Closed { .. });
                if write_frame(&mut send, &SessionEvent::Event { event }).await.is_err() || closed {
                    break;
                }
            }
            _ = &mut reader => {
                sfu.close_session(session).await;
                // Relay the close (with its record) before finishing the stream.
                while let Some(event) = opened.events.recv().await {
                    let closed = matches!(event, SfuSignal::Closed { .. });
                    if write_frame(&mut send, &SessionEvent::Event { event }).await.is_err() || closed {
                        break;
                    }
                }
                break;
            }
        }
    }
    reader.abort();
    sfu.close_session(session).await;
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_meter_starts_at_zero_and_never_goes_negative() {
        let mut m = CpuMeter::new();
        assert_eq!(m.sample(), 0.0);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(m.sample() >= 0.0);
    }
}
