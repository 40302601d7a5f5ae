//! The identifying body every synthetic payload carries where real SFrame ciphertext
//! would be, and the hashes used to match what was received against what was sent.
//!
//! Body layout (big-endian), after the VP8 payload descriptor and clear VP8 payload
//! header for video, or from the first byte for audio:
//!
//! | bytes | field |
//! |-------|-------|
//! | 1 | [`MAGIC`] |
//! | 1 | kind: 0 audio, 1 video, 2 screen |
//! | 1 | layer: 0 none, 1 q, 2 h, 3 f |
//! | 8 | per-stream packet counter |
//! | 8 | [`participant_hash`] of the sender's participant id |
//! | 8 | send time, microseconds since the UNIX epoch |
//! | .. | deterministic filler up to the target size |

use std::hash::{Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use veil_sfu::Layer;
use veil_sfu::keyframe::vp8_descriptor_len;

/// First byte of every body. Chosen so it can never be mistaken for the first byte of the
/// VP8 payload descriptors this crate sends (those always have the X bit, 0x80, set).
pub const MAGIC: u8 = 0x56;
/// Bytes of a body before the filler.
pub const BODY_HEADER_LEN: usize = 27;
/// Clear VP8 payload header on the first packet of a key frame (RFC 6386 §9.1: 3-byte
/// frame tag, 3-byte start code, 2-byte width, 2-byte height).
pub const VP8_KEY_HEADER_LEN: usize = 10;
/// Clear VP8 payload header on the first packet of a delta frame (the frame tag alone).
pub const VP8_DELTA_HEADER_LEN: usize = 3;

const VP8_S: u8 = 0x10;
const VP8_PID_MASK: u8 = 0x07;

/// Whether a VP8 RTP payload starts a frame (RFC 7741: descriptor S bit set and
/// partition index 0); only that packet carries the VP8 payload header.
pub fn vp8_starts_frame(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|first| first & VP8_S != 0 && first & VP8_PID_MASK == 0)
}

/// What kind of source a stream stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Audio,
    Video,
    Screen,
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::Audio => 0,
            Kind::Video => 1,
            Kind::Screen => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Audio),
            1 => Some(Kind::Video),
            2 => Some(Kind::Screen),
            _ => None,
        }
    }

    /// Audio or video, as signalled in SDP and `TrackInfo`.
    pub fn media_kind(self) -> veil_sfu::MediaKind {
        match self {
            Kind::Audio => veil_sfu::MediaKind::Audio,
            Kind::Video | Kind::Screen => veil_sfu::MediaKind::Video,
        }
    }
}

fn layer_to_byte(layer: Option<Layer>) -> u8 {
    match layer {
        None => 0,
        Some(Layer::Quarter) => 1,
        Some(Layer::Half) => 2,
        Some(Layer::Full) => 3,
    }
}

fn layer_from_byte(b: u8) -> Option<Option<Layer>> {
    match b {
        0 => Some(None),
        1 => Some(Some(Layer::Quarter)),
        2 => Some(Some(Layer::Half)),
        3 => Some(Some(Layer::Full)),
        _ => None,
    }
}

/// The parsed identifying body of one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body {
    pub kind: Kind,
    pub layer: Option<Layer>,
    /// Per-stream packet counter, from 0.
    pub counter: u64,
    /// [`participant_hash`] of the sender.
    pub sender: [u8; 8],
    /// Send time in microseconds since the UNIX epoch.
    pub sent_micros: u64,
}

/// Stable 8-byte digest of a participant id (FNV-1a 64), so a receiver can tell whose
/// payload it holds without any shared state.
pub fn participant_hash(participant: &str) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in participant.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_be_bytes()
}

/// 64-bit hash of a whole RTP payload; deterministic within a process, which is all that
/// matching sent against received payloads needs.
pub fn payload_hash(payload: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}

/// Microseconds since the UNIX epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Appends a body of exactly `max(size, BODY_HEADER_LEN)` bytes to `out`.
pub fn write_body(out: &mut Vec<u8>, body: &Body, size: usize) {
    let start = out.len();
    out.push(MAGIC);
    out.push(body.kind.to_byte());
    out.push(layer_to_byte(body.layer));
    out.extend_from_slice(&body.counter.to_be_bytes());
    out.extend_from_slice(&body.sender);
    out.extend_from_slice(&body.sent_micros.to_be_bytes());
    // Filler: a cheap deterministic function of the counter and position, so equal
    // bodies are byte-identical and different packets differ throughout.
    let seed = body.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut i: u64 = 0;
    while out.len() - start < size {
        let x = seed ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        out.push((x >> 29) as u8 ^ (x as u8));
        i += 1;
    }
}

/// A body as its own buffer.
pub fn build_body(body: &Body, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(BODY_HEADER_LEN));
    write_body(&mut out, body, size);
    out
}

/// Reads a body starting at `bytes[0]`.
fn read_body(bytes: &[u8]) -> Option<Body> {
    if bytes.len() < BODY_HEADER_LEN || bytes[0] != MAGIC {
        return None;
    }
    let kind = Kind::from_byte(bytes[1])?;
    let layer = layer_from_byte(bytes[2])?;
    let u64_at = |at: usize| -> Option<u64> {
        let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_be_bytes(b))
    };
    let sender: [u8; 8] = bytes.get(11..19)?.try_into().ok()?;
    Some(Body {
        kind,
        layer,
        counter: u64_at(3)?,
        sender,
        sent_micros: u64_at(19)?,
    })
}

/// Finds and parses the body of an RTP payload this crate sent: an Opus-shaped payload
/// starts with the body; a VP8 payload has the payload descriptor first and, on the first
/// packet of a frame, the clear VP8 payload header (10 bytes for a key frame, 3 for a
/// delta frame). Returns `None` for anything else.
pub fn parse_body(payload: &[u8]) -> Option<Body> {
    if payload.first() == Some(&MAGIC) && payload.get(1) == Some(&Kind::Audio.to_byte()) {
        return read_body(payload);
    }
    let descriptor = vp8_descriptor_len(payload)?;
    let header = if vp8_starts_frame(payload) {
        let tag = *payload.get(descriptor)?;
        if tag & 0x01 == 0 {
            VP8_KEY_HEADER_LEN
        } else {
            VP8_DELTA_HEADER_LEN
        }
    } else {
        0
    };
    let body = read_body(payload.get(descriptor + header..)?)?;
    (body.kind != Kind::Audio).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: Kind, layer: Option<Layer>, counter: u64) -> Body {
        Body {
            kind,
            layer,
            counter,
            sender: participant_hash("alice"),
            sent_micros: 1_700_000_000_123_456,
        }
    }

    #[test]
    fn audio_body_round_trips() {
        let b = body(Kind::Audio, None, 42);
        let bytes = build_body(&b, 100);
        assert_eq!(bytes.len(), 100);
        assert_eq!(parse_body(&bytes), Some(b));
    }

    #[test]
    fn body_is_never_shorter_than_its_header() {
        let b = body(Kind::Audio, None, 1);
        assert_eq!(build_body(&b, 3).len(), BODY_HEADER_LEN);
        assert_eq!(parse_body(&build_body(&b, 0)), Some(b));
    }

    #[test]
    fn every_kind_and_layer_round_trips_behind_vp8_headers() {
        for kind in [Kind::Video, Kind::Screen] {
            for layer in [
                None,
                Some(Layer::Quarter),
                Some(Layer::Half),
                Some(Layer::Full),
            ] {
                for (start, header) in [
                    (
                        true,
                        vec![0x10u8, 0, 0, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01],
                    ),
                    (true, vec![0x11u8, 0, 0]),
                    (false, vec![]),
                ] {
                    let b = body(kind, layer, u64::MAX - 3);
                    let mut p = veil_sfu::keyframe::vp8_descriptor(start, 77);
                    p.extend_from_slice(&header);
                    write_body(&mut p, &b, 200);
                    assert_eq!(parse_body(&p), Some(b), "{kind:?} {layer:?} {start}");
                }
            }
        }
    }

    #[test]
    fn garbage_is_not_a_body() {
        assert_eq!(parse_body(&[]), None);
        assert_eq!(parse_body(&[MAGIC]), None);
        assert_eq!(
            parse_body(&[0x90, 0x80, 0x80, 0x01, 0x11, 0, 0, 1, 2, 3]),
            None
        );
        let mut bad_kind = build_body(&body(Kind::Audio, None, 1), 50);
        bad_kind[1] = 9;
        assert_eq!(parse_body(&bad_kind), None);
        let mut bad_layer = build_body(&body(Kind::Audio, None, 1), 50);
        bad_layer[2] = 4;
        assert_eq!(parse_body(&bad_layer), None);
        // A video body sent bare (without a descriptor) is not accepted as audio.
        let video = build_body(&body(Kind::Video, None, 1), 50);
        assert_eq!(parse_body(&video), None);
    }

    #[test]
    fn different_packets_hash_differently() {
        let a = build_body(&body(Kind::Audio, None, 1), 100);
        let b = build_body(&body(Kind::Audio, None, 2), 100);
        assert_ne!(a, b);
        assert_ne!(payload_hash(&a), payload_hash(&b));
        assert_eq!(payload_hash(&a), payload_hash(&a.clone()));
    }

    #[test]
    fn participant_hash_is_stable() {
        // FNV-1a 64 of the empty string is its offset basis.
        assert_eq!(participant_hash(""), 0xcbf2_9ce4_8422_2325u64.to_be_bytes());
        assert_ne!(participant_hash("alice"), participant_hash("bob"));
    }
}
