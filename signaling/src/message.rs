//! The WebSocket protocol between a browser (or headless participant) and signaling:
//! one JSON object per text frame, tagged by `"type"`.
//!
//! Anything that does not parse as a [`ClientMessage`] is answered with
//! [`ServerMessage::Error`] and counted; the connection stays usable.

use serde::{Deserialize, Serialize};
use veil_sfu::{ClientSignal, CloseReason, IceCandidate, Layer, SfuSignal, TrackInfo};

/// Largest text frame signaling accepts. A session description grows by a few hundred
/// bytes per track received (each has its own m-line), so a full room of 100 people
/// publishing camera, microphone and screen needs about 100 KiB; this leaves room.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;
/// Frames up to this size are read and refused with a typed error; a larger one ends
/// the connection in the WebSocket layer, before it is buffered.
pub const MAX_FRAME_BYTES: usize = 2 * MAX_MESSAGE_BYTES;
/// Largest E2EE blob relayed (base64 text); key messages are far smaller.
pub const MAX_BLOB_BYTES: usize = 16 * 1024;

/// What a participant shows the others about its media: all plain flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaState {
    pub audio_muted: bool,
    pub video_muted: bool,
    pub screen_sharing: bool,
    pub hand_raised: bool,
}

/// One other participant, as the participant list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub participant: String,
    pub display_name: String,
    pub state: MediaState,
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message: present the join grant. `room`, when given, must match it.
    Join {
        grant: Option<String>,
        #[serde(default)]
        room: Option<String>,
    },
    /// First message on a new socket after the previous one dropped: carry on as the
    /// same participant, within the resume window, without the others seeing a leave.
    Resume {
        token: String,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: IceCandidate,
    },
    SetMaxLayer {
        track: String,
        layer: Layer,
    },
    /// An opaque end-to-end-encrypted blob for one participant (`to`) or for every
    /// other participant in the room (`to` absent). Signaling never parses `blob`.
    E2ee {
        to: Option<String>,
        blob: String,
    },
    /// This participant's mute, camera, screen and hand state changed.
    State {
        state: MediaState,
    },
    /// Open a new media session for this participant: after `media_reset`, or to replace
    /// a session whose peer connection never connected or failed.
    Rejoin {},
    /// Host only: remove a participant from the meeting.
    Remove {
        participant: String,
    },
    /// Host only: end the meeting for everyone.
    EndMeeting {},
    Leave {},
}

impl ClientMessage {
    /// Label for metrics (a fixed set, never message content).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Resume { .. } => "resume",
            ClientMessage::Offer { .. } => "offer",
            ClientMessage::Answer { .. } => "answer",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::SetMaxLayer { .. } => "set_max_layer",
            ClientMessage::E2ee { .. } => "e2ee",
            ClientMessage::State { .. } => "state",
            ClientMessage::Rejoin {} => "rejoin",
            ClientMessage::Remove { .. } => "remove",
            ClientMessage::EndMeeting {} => "end_meeting",
            ClientMessage::Leave {} => "leave",
        }
    }

    /// The part of the message meant for the media session, if any.
    pub fn into_signal(self) -> Option<ClientSignal> {
        match self {
            ClientMessage::Offer { sdp } => Some(ClientSignal::Offer { sdp }),
            ClientMessage::Answer { sdp } => Some(ClientSignal::Answer { sdp }),
            ClientMessage::Candidate { candidate } => Some(ClientSignal::Candidate { candidate }),
            ClientMessage::SetMaxLayer { track, layer } => {
                Some(ClientSignal::SetMaxLayer { track, layer })
            }
            ClientMessage::Join { .. }
            | ClientMessage::Resume { .. }
            | ClientMessage::E2ee { .. }
            | ClientMessage::State { .. }
            | ClientMessage::Rejoin {}
            | ClientMessage::Remove { .. }
            | ClientMessage::EndMeeting {}
            | ClientMessage::Leave {} => None,
        }
    }
}

/// What signaling sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The grant was accepted and the media session exists.
    Joined {
        participant: String,
        room: String,
        /// Everyone else already in the room.
        #[serde(default)]
        participants: Vec<Peer>,
        /// Present on a new socket with `resume` if this one drops.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    ParticipantJoined {
        participant: String,
        display_name: String,
    },
    ParticipantLeft {
        participant: String,
    },
    ParticipantState {
        participant: String,
        state: MediaState,
    },
    /// An opaque blob from another participant, relayed as it came.
    E2ee {
        from: String,
        blob: String,
    },
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
    /// A message was refused; `code` is stable, `message` is for people.
    Error {
        code: String,
        message: String,
    },
    /// The media session ended; the server closes the socket after this.
    Closed {
        reason: CloseReason,
    },
    /// The media session was lost (its SFU node went down) but the participant stays:
    /// close the peer connection, send `rejoin`, and negotiate again after `joined`.
    MediaReset {
        reason: CloseReason,
    },
}

impl ServerMessage {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Joined { .. } => "joined",
            ServerMessage::ParticipantJoined { .. } => "participant_joined",
            ServerMessage::ParticipantLeft { .. } => "participant_left",
            ServerMessage::ParticipantState { .. } => "participant_state",
            ServerMessage::E2ee { .. } => "e2ee",
            ServerMessage::Offer { .. } => "offer",
            ServerMessage::Answer { .. } => "answer",
            ServerMessage::Candidate { .. } => "candidate",
            ServerMessage::TrackPublished { .. } => "track_published",
            ServerMessage::TrackUnpublished { .. } => "track_unpublished",
            ServerMessage::Error { .. } => "error",
            ServerMessage::Closed { .. } => "closed",
            ServerMessage::MediaReset { .. } => "media_reset",
        }
    }
}

impl From<SfuSignal> for ServerMessage {
    fn from(signal: SfuSignal) -> Self {
        match signal {
            SfuSignal::Offer { sdp } => ServerMessage::Offer { sdp },
            SfuSignal::Answer { sdp } => ServerMessage::Answer { sdp },
            SfuSignal::Candidate { candidate } => ServerMessage::Candidate { candidate },
            SfuSignal::TrackPublished { track } => ServerMessage::TrackPublished { track },
            SfuSignal::TrackUnpublished { track } => ServerMessage::TrackUnpublished { track },
            SfuSignal::Error { code, message } => ServerMessage::Error { code, message },
            // The connection record is for Veil's own bookkeeping, not the client.
            SfuSignal::Closed { reason, .. } => ServerMessage::Closed { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes() {
        let join: ClientMessage =
            serde_json::from_str(r#"{"type":"join","grant":"v1.a.b"}"#).unwrap();
        assert_eq!(
            join,
            ClientMessage::Join {
                grant: Some("v1.a.b".into()),
                room: None
            }
        );
        let cand: ClientMessage = serde_json::from_str(
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        )
        .unwrap();
        assert_eq!(cand.kind(), "candidate");
        let layer: ClientMessage =
            serde_json::from_str(r#"{"type":"set_max_layer","track":"t","layer":"h"}"#).unwrap();
        assert_eq!(
            layer.into_signal(),
            Some(ClientSignal::SetMaxLayer {
                track: "t".into(),
                layer: Layer::Half
            })
        );
    }

    #[test]
    fn refuses_unknown_types_and_fields() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"explode"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"leave","x":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"leave"}"#).unwrap(),
            ClientMessage::Leave {}
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"sdp":"x"}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(
                r#"{"type":"set_max_layer","track":"t","layer":"z"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn e2ee_and_state_shapes() {
        let to_all: ClientMessage =
            serde_json::from_str(r#"{"type":"e2ee","blob":"AAEC"}"#).unwrap();
        assert_eq!(
            to_all,
            ClientMessage::E2ee {
                to: None,
                blob: "AAEC".into()
            }
        );
        assert_eq!(to_all.into_signal(), None);
        let to_one: ClientMessage =
            serde_json::from_str(r#"{"type":"e2ee","to":"p1","blob":"x"}"#).unwrap();
        assert_eq!(to_one.kind(), "e2ee");
        let state: ClientMessage =
            serde_json::from_str(r#"{"type":"state","state":{"audio_muted":true}}"#).unwrap();
        assert_eq!(
            state,
            ClientMessage::State {
                state: MediaState {
                    audio_muted: true,
                    ..MediaState::default()
                }
            }
        );
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"state","state":{"muted":1}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"e2ee","to":"p"}"#).is_err());
    }

    #[test]
    fn server_messages_carry_a_type_tag() {
        let json = serde_json::to_value(ServerMessage::error("grant_expired", "expired")).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["code"], "grant_expired");
        let closed = serde_json::to_value(ServerMessage::from(SfuSignal::Closed {
            reason: CloseReason::Left,
            record: None,
        }))
        .unwrap();
        assert_eq!(closed, serde_json::json!({"type":"closed","reason":"left"}));
    }
}
