//! The link between signaling and SFU nodes: typed, versioned frames carried over QUIC
//! (quinn, mutual TLS pinned by certificate fingerprint — see [`crate::identity`]).
//!
//! Each frame is a 4-byte big-endian length followed by one JSON value. An SFU node
//! connects to signaling and opens the **control stream**: it sends [`NodeFrame::Register`],
//! signaling answers [`SignalingFrame::Registered`] (with the grant-verification key) or
//! [`SignalingFrame::Refused`], and the node then sends a [`NodeFrame::Heartbeat`] every
//! second. For every media session signaling opens a **session stream**: the first frame
//! is [`SessionFrame::Open`], the node answers [`SessionEvent::Opened`] or
//! [`SessionEvent::Refused`]; then client signals flow one way and SFU signals the other,
//! and either side finishing the stream ends the session.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::signal::{ClientSignal, SessionId, SessionRequest, SfuSignal};

/// Bumped on any incompatible change to the frames below.
pub const PROTOCOL_VERSION: u16 = 1;
/// ALPN of the node link; a peer speaking anything else is refused in the handshake.
pub const ALPN: &[u8] = b"veil-node/1";
/// Largest frame either side accepts (an SDP of a large room fits comfortably).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// What a node reports about its load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub sessions: u32,
    pub rooms: u32,
    pub tracks: u32,
    /// CPU use of the node process since the last heartbeat, in cores (0.5 = half a core).
    pub cpu: f32,
}

/// What an operator (and `/healthz`) sees of one SFU node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub region: String,
    pub up: bool,
    pub load: NodeLoad,
}

/// Node → signaling, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeFrame {
    Register {
        version: u16,
        /// Stable name of the node (unique in a deployment).
        node: String,
        /// Free-form region label, for placement and dashboards.
        region: String,
        /// Where participants send media.
        media_addr: SocketAddr,
    },
    Heartbeat {
        load: NodeLoad,
    },
}

/// Signaling → node, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SignalingFrame {
    Registered {
        /// Raw Ed25519 public key that verifies join grants, base64url.
        grant_key: String,
    },
    Refused {
        reason: String,
    },
}

/// Signaling → node, on a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SessionFrame {
    Open { request: SessionRequest },
    Signal { signal: ClientSignal },
    Close {},
}

/// Node → signaling, on a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SessionEvent {
    Opened {
        session: SessionId,
        room: String,
        participant: String,
    },
    Refused {
        code: String,
        message: String,
    },
    Event {
        event: SfuSignal,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes one frame: length prefix and JSON.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let json = serde_json::to_vec(value).map_err(|e| WireError::Malformed(e.to_string()))?;
    if json.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(json.len()));
    }
    let len = u32::try_from(json.len()).map_err(|_| WireError::TooLarge(json.len()))?;
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

pub async fn write_frame<W, T>(writer: &mut W, value: &T) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    writer.write_all(&encode(value)?).await?;
    Ok(())
}

/// Reads one frame; `None` when the stream ended cleanly between frames.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{CloseReason, Layer};

    #[tokio::test]
    async fn frames_round_trip_over_a_byte_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let register = NodeFrame::Register {
            version: PROTOCOL_VERSION,
            node: "sfu-1".into(),
            region: "eu".into(),
            media_addr: "127.0.0.1:7882".parse().unwrap(),
        };
        let open = SessionFrame::Open {
            request: SessionRequest {
                room: Some("r".into()),
                grant: Some("v1.x.y".into()),
            },
        };
        let signal = SessionFrame::Signal {
            signal: ClientSignal::SetMaxLayer {
                track: "t".into(),
                layer: Layer::Half,
            },
        };
        write_frame(&mut a, &register).await.unwrap();
        write_frame(&mut a, &open).await.unwrap();
        write_frame(&mut a, &signal).await.unwrap();
        drop(a);
        assert_eq!(
            read_frame::<_, NodeFrame>(&mut b).await.unwrap(),
            Some(register)
        );
        assert_eq!(
            read_frame::<_, SessionFrame>(&mut b).await.unwrap(),
            Some(open)
        );
        assert_eq!(
            read_frame::<_, SessionFrame>(&mut b).await.unwrap(),
            Some(signal)
        );
        assert_eq!(read_frame::<_, SessionFrame>(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(MAX_FRAME_BYTES as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame::<_, NodeFrame>(&mut b).await,
            Err(WireError::TooLarge(_))
        ));
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{bad}").await.unwrap();
        assert!(matches!(
            read_frame::<_, NodeFrame>(&mut b).await,
            Err(WireError::Malformed(_))
        ));
        let event = SessionEvent::Event {
            event: SfuSignal::Closed {
                reason: CloseReason::Left,
                record: None,
            },
        };
        let bytes = encode(&event).unwrap();
        assert_eq!(&bytes[..4], &((bytes.len() - 4) as u32).to_be_bytes());
    }

    #[test]
    fn unknown_frame_types_are_refused() {
        assert!(serde_json::from_str::<NodeFrame>(r#"{"type":"steal"}"#).is_err());
        assert!(
            serde_json::from_str::<NodeFrame>(r#"{"type":"heartbeat","load":{},"x":1}"#).is_err()
        );
    }
}
