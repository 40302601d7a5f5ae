//! Encoded frames back out of received RTP payloads, and the codec checks a receiver
//! can make on a frame it decrypted.
//!
//! Owns: VP8 reassembly per RFC 7741 (strip each payload descriptor, a frame starts at
//! the packet with S = 1 and partition index 0 and ends at the RTP marker bit; a gap in
//! the sequence numbers or a timestamp change discards the frame being built, because
//! SFrame authenticates whole frames and one missing byte fails them); the validity rules
//! for a decrypted VP8 key frame header (RFC 6386 §9.1) and for an Opus packet's TOC byte
//! and framing (RFC 6716 §3.4, R1–R7). Opus needs no reassembly: one frame per packet.
//!
//! Pure: no sockets, no clock, no keys. It never looks past what a codec header says, so
//! it works on ciphertext (reassembly) and plaintext (checks) alike.

use thiserror::Error;
use veil_sfu::keyframe::vp8_descriptor_len;

pub use crate::payload::VP8_KEY_HEADER_LEN;
use crate::payload::vp8_starts_frame;

/// The VP8 key frame start code (RFC 6386 §9.1), bytes 3..6 of a key frame.
pub const VP8_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];

/// One VP8 frame at a time, rebuilt from the packets of one RTP stream in order.
#[derive(Debug, Default)]
pub struct Vp8Assembler {
    frame: Vec<u8>,
    /// The RTP timestamp of the frame being built; `None` while waiting for a start.
    building: Option<u32>,
    next_sequence: Option<u16>,
    /// Frames thrown away because a packet was lost, malformed or out of place.
    pub discarded: u64,
}

impl Vp8Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next received packet; returns a frame when this packet completed one.
    pub fn push(
        &mut self,
        sequence: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let in_order = self.next_sequence.is_none_or(|next| next == sequence);
        self.next_sequence = Some(sequence.wrapping_add(1));
        if !in_order {
            // Lost (or reordered) packets: the frame under construction has a hole.
            self.discard();
        }
        let Some(descriptor) = vp8_descriptor_len(payload) else {
            self.discard();
            return None;
        };
        if vp8_starts_frame(payload) {
            // A start before the previous frame's marker: that frame lost its end.
            self.discard();
            self.building = Some(timestamp);
        } else if self.building != Some(timestamp) {
            // Mid-frame data without its start (or of another frame): unusable.
            self.discard();
            return None;
        }
        self.frame.extend_from_slice(&payload[descriptor..]);
        if !marker {
            return None;
        }
        self.building = None;
        Some(std::mem::take(&mut self.frame))
    }

    fn discard(&mut self) {
        if self.building.take().is_some() {
            self.discarded += 1;
        }
        self.frame.clear();
    }
}

/// Whether a VP8 frame (ciphertext or plaintext: the first byte is always clear) is a key
/// frame: bit 0 of the frame tag is the inverse key frame flag.
pub fn vp8_is_key_frame(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Vp8Error {
    #[error("not a key frame")]
    NotKeyFrame,
    #[error("shorter than a key frame header")]
    TooShort,
    #[error("unknown VP8 version {0}")]
    Version(u8),
    #[error("no start code 9d 01 2a")]
    StartCode,
    #[error("first partition longer than the frame")]
    PartitionSize,
    #[error("zero width or height")]
    Dimensions,
}

/// A decrypted VP8 key frame's header (RFC 6386 §9.1): the frame tag says key frame,
/// version ≤ 3 and a first partition that fits; the start code follows; then width and
/// height (14 bits each), neither zero. Returns (width, height).
pub fn vp8_key_frame_header(frame: &[u8]) -> Result<(u16, u16), Vp8Error> {
    if !vp8_is_key_frame(frame) {
        return Err(Vp8Error::NotKeyFrame);
    }
    if frame.len() < VP8_KEY_HEADER_LEN {
        return Err(Vp8Error::TooShort);
    }
    let version = (frame[0] >> 1) & 0x07;
    if version > 3 {
        return Err(Vp8Error::Version(version));
    }
    if frame[3..6] != VP8_START_CODE {
        return Err(Vp8Error::StartCode);
    }
    let first_partition =
        (usize::from(frame[0]) >> 5) | (usize::from(frame[1]) << 3) | (usize::from(frame[2]) << 11);
    if first_partition > frame.len() - VP8_KEY_HEADER_LEN {
        return Err(Vp8Error::PartitionSize);
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    if width == 0 || height == 0 {
        return Err(Vp8Error::Dimensions);
    }
    Ok((width, height))
}

/// Which of RFC 6716 §3.4's rules an Opus packet breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OpusError {
    #[error("R1: empty packet")]
    Empty,
    #[error("R2: a frame longer than 1275 bytes")]
    FrameTooLong,
    #[error("R3: a code 1 packet with an odd payload")]
    OddCode1,
    #[error("R4: a code 2 packet whose first frame does not fit")]
    Code2Length,
    #[error("R5: a code 3 packet with no frame or over 120 ms")]
    Code3Count,
    #[error("R6: a CBR code 3 packet whose size is not a multiple of its frames")]
    Code3Cbr,
    #[error("R7: a VBR code 3 packet too short for its lengths and padding")]
    Code3Vbr,
}

/// What an Opus packet's TOC byte and framing say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusPacket {
    /// TOC config 0–31 (mode, bandwidth and frame duration).
    pub config: u8,
    pub stereo: bool,
    /// Frames in the packet.
    pub frames: usize,
}

/// Longest Opus frame (RFC 6716 §3.2.1).
const OPUS_MAX_FRAME: usize = 1275;
/// At most 120 ms of audio per packet, counted in tenths of a millisecond.
const OPUS_MAX_TENTHS_MS: usize = 1200;

/// Frame duration of a TOC config in tenths of a millisecond (RFC 6716 §3.1, Table 2).
fn opus_frame_tenths_ms(config: u8) -> usize {
    match config {
        0..=11 => [100, 200, 400, 600][usize::from(config % 4)],
        12..=15 => [100, 200][usize::from(config % 2)],
        _ => [25, 50, 100, 200][usize::from(config % 4)],
    }
}

/// A frame length (RFC 6716 §3.2.1): one byte below 252, else two. Returns (length,
/// bytes used), or `None` when the bytes run out.
fn opus_frame_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let first = usize::from(*bytes.first()?);
    if first < 252 {
        return Some((first, 1));
    }
    let second = usize::from(*bytes.get(1)?);
    Some((first + 4 * second, 2))
}

/// Checks an Opus packet against RFC 6716 §3.4's rules R1–R7.
pub fn opus_packet(packet: &[u8]) -> Result<OpusPacket, OpusError> {
    let toc = *packet.first().ok_or(OpusError::Empty)?;
    let config = toc >> 3;
    let stereo = toc & 0x04 != 0;
    let rest = &packet[1..];
    let frames = match toc & 0x03 {
        0 => {
            if rest.len() > OPUS_MAX_FRAME {
                return Err(OpusError::FrameTooLong);
            }
            1
        }
        1 => {
            if !rest.len().is_multiple_of(2) {
                return Err(OpusError::OddCode1);
            }
            if rest.len() / 2 > OPUS_MAX_FRAME {
                return Err(OpusError::FrameTooLong);
            }
            2
        }
        2 => {
            let (first, used) = opus_frame_length(rest).ok_or(OpusError::Code2Length)?;
            let remaining = rest.len() - used;
            if first > remaining {
                return Err(OpusError::Code2Length);
            }
            if remaining - first > OPUS_MAX_FRAME {
                return Err(OpusError::FrameTooLong);
            }
            2
        }
        _ => opus_code3(config, rest)?,
    };
    Ok(OpusPacket {
        config,
        stereo,
        frames,
    })
}

/// Code 3 (RFC 6716 §3.2.5): frame count byte `v p M(6)`, optional padding length
/// bytes, then CBR frames of equal size or VBR frames with M−1 lengths.
fn opus_code3(config: u8, rest: &[u8]) -> Result<usize, OpusError> {
    // R6 also needs the frame count byte: a code 3 packet has at least two bytes.
    let count_byte = *rest.first().ok_or(OpusError::Code3Cbr)?;
    let vbr = count_byte & 0x80 != 0;
    let padded = count_byte & 0x40 != 0;
    let m = usize::from(count_byte & 0x3f);
    if m == 0 || m * opus_frame_tenths_ms(config) > OPUS_MAX_TENTHS_MS {
        return Err(OpusError::Code3Count);
    }
    let too_short = if vbr {
        OpusError::Code3Vbr
    } else {
        OpusError::Code3Cbr
    };
    let mut at = 1;
    let mut padding = 0;
    if padded {
        // Each 255 adds 254 padding bytes and another length byte follows.
        loop {
            let b = usize::from(*rest.get(at).ok_or(too_short)?);
            at += 1;
            if b == 255 {
                padding += 254;
            } else {
                padding += b;
                break;
            }
        }
    }
    let available = rest.len().checked_sub(at + padding).ok_or(too_short)?;
    if vbr {
        let mut lengths = 0;
        for _ in 1..m {
            let (len, used) = opus_frame_length(&rest[at..]).ok_or(OpusError::Code3Vbr)?;
            if len > OPUS_MAX_FRAME {
                return Err(OpusError::FrameTooLong);
            }
            at += used;
            lengths += len;
        }
        let last = rest
            .len()
            .checked_sub(at + padding + lengths)
            .ok_or(OpusError::Code3Vbr)?;
        if last > OPUS_MAX_FRAME {
            return Err(OpusError::FrameTooLong);
        }
    } else {
        if !available.is_multiple_of(m) {
            return Err(OpusError::Code3Cbr);
        }
        if available / m > OPUS_MAX_FRAME {
            return Err(OpusError::FrameTooLong);
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptor with X and a 15-bit picture id, as Chromium and `media.rs` send.
    fn vp8(start: bool, pid: u8, body: &[u8]) -> Vec<u8> {
        let first = 0x80 | if start { 0x10 } else { 0 } | pid;
        let mut p = vec![first, 0x80, 0x80 | 0x12, 0x34];
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn vp8_frames_are_the_packets_after_their_descriptors_up_to_the_marker() {
        let mut a = Vp8Assembler::new();
        assert_eq!(a.push(10, 900, false, &vp8(true, 0, &[1, 2])), None);
        assert_eq!(a.push(11, 900, false, &vp8(false, 0, &[3])), None);
        assert_eq!(
            a.push(12, 900, true, &vp8(false, 0, &[4, 5])),
            Some(vec![1, 2, 3, 4, 5])
        );
        // A one-packet frame, with the shortest descriptor (no X).
        assert_eq!(a.push(13, 1800, true, &[0x10, 9, 9]), Some(vec![9, 9]));
        assert_eq!(a.discarded, 0);
    }

    #[test]
    fn vp8_descriptor_extensions_are_stripped() {
        // X with I (7-bit picture id), L (TL0PICIDX) and T/K: 1 + 1 + 1 + 1 + 1 bytes.
        let payload = [0x90, 0x80 | 0x40 | 0x20, 0x05, 0x07, 0x40, 0xaa, 0xbb];
        let mut a = Vp8Assembler::new();
        assert_eq!(a.push(0, 0, true, &payload), Some(vec![0xaa, 0xbb]));
    }

    #[test]
    fn a_lost_packet_discards_its_frame_and_the_next_frame_still_assembles() {
        let mut a = Vp8Assembler::new();
        a.push(100, 1, false, &vp8(true, 0, &[1]));
        // 101 is lost.
        assert_eq!(a.push(102, 1, true, &vp8(false, 0, &[3])), None);
        assert_eq!(a.discarded, 1);
        assert_eq!(a.push(103, 2, true, &vp8(true, 0, &[7])), Some(vec![7]));
        // A lost marker packet: the next start discards the unfinished frame.
        a.push(104, 3, false, &vp8(true, 0, &[1]));
        assert_eq!(a.push(106, 4, true, &vp8(true, 0, &[8])), Some(vec![8]));
        assert_eq!(a.discarded, 2);
    }

    #[test]
    fn vp8_sequence_numbers_wrap_and_later_partitions_do_not_start_frames() {
        let mut a = Vp8Assembler::new();
        a.push(u16::MAX, 5, false, &vp8(true, 0, &[1]));
        // S set on partition 1: continues the frame, does not start one.
        assert_eq!(a.push(0, 5, true, &vp8(true, 1, &[2])), Some(vec![1, 2]));
        // Mid-frame packets without a start, another timestamp, or malformed: dropped.
        assert_eq!(a.push(1, 6, true, &vp8(false, 0, &[3])), None);
        assert_eq!(a.push(2, 7, false, &vp8(true, 0, &[4])), None);
        assert_eq!(a.push(3, 8, true, &vp8(false, 0, &[5])), None);
        a.push(4, 9, false, &vp8(true, 0, &[6]));
        assert_eq!(a.push(5, 9, true, &[0x80]), None);
        assert_eq!(a.discarded, 2);
    }

    fn key_frame(width: u16, height: u16, partition: usize) -> Vec<u8> {
        let tag = (partition << 5) as u32 | 0x10;
        let mut f = vec![
            tag as u8,
            (tag >> 8) as u8,
            (tag >> 16) as u8,
            0x9d,
            0x01,
            0x2a,
        ];
        f.extend_from_slice(&width.to_le_bytes());
        f.extend_from_slice(&height.to_le_bytes());
        f.extend(std::iter::repeat_n(0u8, partition + 5));
        f
    }

    #[test]
    fn vp8_key_frame_headers_are_checked() {
        assert_eq!(
            vp8_key_frame_header(&key_frame(640, 480, 300)),
            Ok((640, 480))
        );
        // media.rs's synthetic header is a valid (if empty) key frame header.
        let synthetic = crate::media::vp8_frame_header(true, (1280, 720));
        assert_eq!(vp8_key_frame_header(&synthetic), Ok((1280, 720)));
        let mut bad = key_frame(640, 480, 10);
        bad[4] = 0;
        assert_eq!(vp8_key_frame_header(&bad), Err(Vp8Error::StartCode));
        assert_eq!(
            vp8_key_frame_header(&[0x11, 0, 0]),
            Err(Vp8Error::NotKeyFrame)
        );
        assert_eq!(
            vp8_key_frame_header(&[0x10, 0, 0, 0x9d]),
            Err(Vp8Error::TooShort)
        );
        let mut long = key_frame(640, 480, 10);
        long.truncate(15);
        assert_eq!(vp8_key_frame_header(&long), Err(Vp8Error::PartitionSize));
        assert_eq!(
            vp8_key_frame_header(&key_frame(0, 480, 1)),
            Err(Vp8Error::Dimensions)
        );
        let mut version = key_frame(640, 480, 1);
        version[0] |= 0x0e;
        assert_eq!(vp8_key_frame_header(&version), Err(Vp8Error::Version(7)));
    }

    #[test]
    fn opus_codes_0_to_2() {
        // Config 15 (hybrid FB 20 ms), mono, code 0: what Chromium sends.
        let p = opus_packet(&[0x78, 1, 2, 3]).unwrap();
        assert_eq!((p.config, p.stereo, p.frames), (15, false, 1));
        assert_eq!(opus_packet(&[0x78]).unwrap().frames, 1); // DTX: a 0-byte frame
        assert_eq!(opus_packet(&[]), Err(OpusError::Empty));
        let mut long = vec![0x78];
        long.extend(std::iter::repeat_n(0u8, 1276));
        assert_eq!(opus_packet(&long), Err(OpusError::FrameTooLong));
        assert_eq!(opus_packet(&[0x79, 1, 2]).unwrap().frames, 2);
        assert_eq!(opus_packet(&[0x79, 1, 2, 3]), Err(OpusError::OddCode1));
        assert_eq!(
            opus_packet(&[0x7e, 2, 1, 2, 3]).unwrap(),
            OpusPacket {
                config: 15,
                stereo: true,
                frames: 2
            }
        );
        assert_eq!(opus_packet(&[0x7a, 5, 1, 2]), Err(OpusError::Code2Length));
        assert_eq!(opus_packet(&[0x7a, 252]), Err(OpusError::Code2Length));
    }

    #[test]
    fn opus_code_3() {
        // CBR, 3 frames of 2 bytes (config 15: 20 ms each, 60 ms).
        assert_eq!(opus_packet(&[0x7b, 3, 1, 1, 2, 2, 3, 3]).unwrap().frames, 3);
        assert_eq!(
            opus_packet(&[0x7b, 3, 1, 1, 2, 2, 3]),
            Err(OpusError::Code3Cbr)
        );
        assert_eq!(opus_packet(&[0x7b]), Err(OpusError::Code3Cbr));
        // No frames, or 7 × 20 ms = 140 ms.
        assert_eq!(opus_packet(&[0x7b, 0]), Err(OpusError::Code3Count));
        assert_eq!(opus_packet(&[0x7b, 7]), Err(OpusError::Code3Count));
        // Padded CBR: 2 padding bytes, 2 frames of 1 byte.
        assert_eq!(opus_packet(&[0x7b, 0x42, 2, 1, 1, 0, 0]).unwrap().frames, 2);
        assert_eq!(
            opus_packet(&[0x7b, 0x42, 9, 1, 1]),
            Err(OpusError::Code3Cbr)
        );
        // VBR: 2 frames, the first 2 bytes long, the last 1.
        assert_eq!(opus_packet(&[0x7b, 0x82, 2, 1, 1, 1]).unwrap().frames, 2);
        assert_eq!(opus_packet(&[0x7b, 0x82, 9, 1]), Err(OpusError::Code3Vbr));
        assert_eq!(
            opus_packet(&[0x7b, 0xc2, 200, 2, 1, 1]),
            Err(OpusError::Code3Vbr)
        );
        // CELT 2.5 ms frames: 48 of them make 120 ms, which is allowed.
        let mut celt = vec![0x83, 48];
        celt.extend(std::iter::repeat_n(1u8, 48));
        assert_eq!(opus_packet(&celt).unwrap().frames, 48);
    }
}
