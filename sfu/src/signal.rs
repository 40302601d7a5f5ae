//! The control interface between signaling and the SFU: typed requests a client's
//! signaling connection makes of its media session, and the events the SFU sends back.
//!
//! Everything here is plain serde data so the same values can cross a process boundary
//! (the QUIC link between `veil signaling` and `veil sfu`) without change; [`SfuControl`]
//! is the seam where that link slots in beside the in-process [`crate::Sfu`].

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::grant::GrantError;

/// Opaque id of one participant's media session on an SFU.
pub type SessionId = u64;

/// A simulcast layer, lowest to highest quality, named by the RID browsers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Layer {
    #[serde(rename = "q")]
    Quarter,
    #[serde(rename = "h")]
    Half,
    #[serde(rename = "f")]
    Full,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Quarter, Layer::Half, Layer::Full];

    /// Maps a simulcast RID to a layer; unknown RIDs are not forwarded.
    pub fn from_rid(rid: &str) -> Option<Layer> {
        match rid {
            "q" => Some(Layer::Quarter),
            "h" => Some(Layer::Half),
            "f" => Some(Layer::Full),
            _ => None,
        }
    }

    pub fn rid(self) -> &'static str {
        match self {
            Layer::Quarter => "q",
            Layer::Half => "h",
            Layer::Full => "f",
        }
    }
}

/// Media kind of a published track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

/// One ICE candidate, shaped like the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, rename = "sdpMid")]
    pub sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex")]
    pub sdp_mline_index: Option<u16>,
}

/// A track the SFU now forwards to this participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// The track id in the subscriber's SDP (`msid`), unique in the room.
    pub track: String,
    /// The publisher (also the `msid` stream id).
    pub participant: String,
    pub kind: MediaKind,
    /// Simulcast layers the publisher sends; empty for a single-layer track.
    pub layers: Vec<Layer>,
}

/// What a client asks of its media session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientSignal {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: IceCandidate,
    },
    /// Cap the simulcast layer forwarded for one subscribed track.
    SetMaxLayer {
        track: String,
        layer: Layer,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The client left or its signaling connection closed.
    Left,
    /// ICE or DTLS failed, or the peer stopped answering.
    ConnectionFailed,
    /// The peer connection was not established in time.
    Timeout,
    /// The same participant joined again; the older session gives way.
    Replaced,
    /// The SFU is shutting down.
    Shutdown,
    /// The SFU node carrying the session stopped answering; the client rejoins elsewhere.
    NodeLost,
    /// The host removed this participant.
    Removed,
    /// The host ended the meeting for everyone.
    MeetingEnded,
}

impl CloseReason {
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Left => "left",
            CloseReason::ConnectionFailed => "connection_failed",
            CloseReason::Timeout => "timeout",
            CloseReason::Replaced => "replaced",
            CloseReason::Shutdown => "shutdown",
            CloseReason::NodeLost => "node_lost",
            CloseReason::Removed => "removed",
            CloseReason::MeetingEnded => "meeting_ended",
        }
    }
}

/// What the SFU tells a client's signaling connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SfuSignal {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: IceCandidate,
    },
    TrackPublished {
        track: TrackInfo,
    },
    TrackUnpublished {
        track: String,
    },
    /// A request could not be carried out; the session continues.
    Error {
        code: String,
        message: String,
    },
    /// The session ended; `record` is its connection metadata (timing and sizes only).
    Closed {
        reason: CloseReason,
        #[serde(default)]
        record: Option<veil_metrics::ConnectionRecord>,
    },
}

/// Opening a session: the room the client asks for and the grant it presents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub room: Option<String>,
    pub grant: Option<String>,
}

/// A session that was admitted.
#[derive(Debug)]
pub struct SessionOpened {
    pub session: SessionId,
    pub room: String,
    pub participant: String,
    pub events: mpsc::Receiver<SfuSignal>,
}

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("join grant refused: {0}")]
    Grant(#[from] GrantError),
    #[error("no such session")]
    UnknownSession,
    #[error("the SFU is at its session limit")]
    Full,
    #[error("peer connection error: {0}")]
    PeerConnection(String),
}

impl SfuError {
    /// Stable machine-readable code for clients and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            SfuError::Grant(e) => e.code(),
            SfuError::UnknownSession => "unknown_session",
            SfuError::Full => "sfu_full",
            SfuError::PeerConnection(_) => "peer_connection",
        }
    }
}

/// The SFU as signaling sees it. Implemented in-process by [`crate::Sfu`]; a QUIC
/// client implements the same trait for a separate SFU process.
#[async_trait::async_trait]
pub trait SfuControl: Send + Sync + 'static {
    /// Verifies the grant first; only an admitted request allocates anything.
    async fn open_session(&self, request: SessionRequest) -> Result<SessionOpened, SfuError>;
    async fn signal(&self, session: SessionId, signal: ClientSignal) -> Result<(), SfuError>;
    async fn close_session(&self, session: SessionId);
    /// Sessions currently holding a peer connection.
    fn live_sessions(&self) -> usize;
    /// The SFU nodes behind this control, for health checks (none when in-process).
    fn nodes(&self) -> Vec<crate::wire::NodeStatus> {
        Vec::new()
    }
}
