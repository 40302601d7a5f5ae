//! Synthetic media a headless participant publishes: Opus-shaped audio packets and
//! VP8-shaped video frames with a correct payload descriptor and clear payload header,
//! split into RTP-sized packets. Pure functions: no sockets, no clock reads.

use veil_sfu::Layer;
use veil_sfu::keyframe::vp8_descriptor;

use crate::payload::{BODY_HEADER_LEN, Body, Kind, write_body};

/// Largest RTP payload this participant sends (fits a 1200-byte MTU with headers).
pub const MAX_PAYLOAD: usize = 1100;
/// Opus at about 32 kbit/s in 20 ms packets.
pub const AUDIO_PAYLOAD: usize = 80;
/// Audio packets per second (20 ms frames).
pub const AUDIO_PACKETS_PER_SECOND: u32 = 50;
/// Opus RTP clock.
pub const AUDIO_CLOCK: u32 = 48_000;
/// Video RTP clock.
pub const VIDEO_CLOCK: u32 = 90_000;

/// Frame size in pixels of each simulcast layer (and of a single-layer stream: full).
pub fn layer_dimensions(layer: Option<Layer>) -> (u16, u16) {
    match layer {
        Some(Layer::Quarter) => (320, 180),
        Some(Layer::Half) => (640, 360),
        Some(Layer::Full) | None => (1280, 720),
    }
}

/// Share of the configured bitrate a layer gets: full, a quarter, a sixteenth (the
/// pixel ratios of the three layers).
pub fn layer_bitrate(bitrate_bps: u64, layer: Option<Layer>) -> u64 {
    match layer {
        Some(Layer::Quarter) => bitrate_bps / 16,
        Some(Layer::Half) => bitrate_bps / 4,
        Some(Layer::Full) | None => bitrate_bps,
    }
}

/// The clear VP8 payload header at the start of a frame: a key frame carries the
/// 3-byte frame tag, the start code and the dimensions (10 bytes, RFC 6386 §9.1); a
/// delta frame only the frame tag (3 bytes). Everything after it stands where SFrame
/// ciphertext would be.
pub fn vp8_frame_header(key: bool, (width, height): (u16, u16)) -> Vec<u8> {
    if key {
        // Frame tag: P = 0 (key frame), version 0, show_frame = 1.
        let mut h = vec![0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a];
        h.extend_from_slice(&(width & 0x3fff).to_le_bytes());
        h.extend_from_slice(&(height & 0x3fff).to_le_bytes());
        h
    } else {
        vec![0x11, 0x00, 0x00]
    }
}

/// One video frame to packetize.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub kind: Kind,
    pub layer: Option<Layer>,
    pub key: bool,
    /// Total payload bytes the frame should occupy across its packets.
    pub bytes: usize,
    pub picture_id: u16,
    pub sender: [u8; 8],
    pub sent_micros: u64,
}

/// Splits a frame into RTP payloads. `counter` is the stream's packet counter; it is
/// advanced once per payload, and each payload's body carries its value.
pub fn packetize(frame: &Frame, counter: &mut u64) -> Vec<Vec<u8>> {
    let header = vp8_frame_header(frame.key, layer_dimensions(frame.layer));
    let per_packet_overhead = 4;
    let min_body = BODY_HEADER_LEN;
    let mut remaining = frame
        .bytes
        .max(header.len() + min_body + per_packet_overhead);
    let mut out = Vec::new();
    let mut first = true;
    while remaining > 0 {
        let mut p = vp8_descriptor(first, frame.picture_id);
        if first {
            p.extend_from_slice(&header);
        }
        let room = MAX_PAYLOAD.saturating_sub(p.len());
        let body_len = remaining.saturating_sub(p.len()).clamp(min_body, room);
        let body = Body {
            kind: frame.kind,
            layer: frame.layer,
            counter: *counter,
            sender: frame.sender,
            sent_micros: frame.sent_micros,
        };
        write_body(&mut p, &body, body_len);
        *counter += 1;
        remaining = remaining.saturating_sub(p.len());
        out.push(p);
        first = false;
    }
    out
}

/// One Opus-shaped audio payload: the body alone (Opus keeps nothing in the clear).
pub fn audio_payload(counter: u64, sender: [u8; 8], sent_micros: u64) -> Vec<u8> {
    crate::payload::build_body(&audio_body(counter, sender, sent_micros), AUDIO_PAYLOAD)
}

fn audio_body(counter: u64, sender: [u8; 8], sent_micros: u64) -> Body {
    Body {
        kind: Kind::Audio,
        layer: None,
        counter,
        sender,
        sent_micros,
    }
}

/// A whole VP8-shaped frame as an end-to-end encrypting sender hands it to SFrame: the
/// clear payload header, then one body filling the frame's size. SFrame encrypts frames,
/// not packets, so the frame is built first and split by [`split_frame`] afterwards.
pub fn vp8_frame(frame: &Frame, counter: u64) -> Vec<u8> {
    let mut out = vp8_frame_header(frame.key, layer_dimensions(frame.layer));
    let body = Body {
        kind: frame.kind,
        layer: frame.layer,
        counter,
        sender: frame.sender,
        sent_micros: frame.sent_micros,
    };
    let size = frame.bytes.saturating_sub(out.len());
    write_body(&mut out, &body, size);
    out
}

/// Splits an encoded (here: encrypted) VP8 frame into RTP payloads, each behind a payload
/// descriptor; the first starts the partition (RFC 7741).
pub fn split_frame(frame: &[u8], picture_id: u16) -> Vec<Vec<u8>> {
    let room = MAX_PAYLOAD - vp8_descriptor(true, picture_id).len();
    frame
        .chunks(room)
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = vp8_descriptor(i == 0, picture_id);
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

/// TOC byte of the Opus-shaped frames an encrypting sender makes: config 15 (hybrid,
/// fullband, 20 ms), mono, code 0 (one frame), as Chromium sends.
pub const OPUS_TOC: u8 = 0x78;

/// An Opus-shaped audio frame for end-to-end encryption: a valid TOC byte, then the body,
/// so a receiver that decrypts it finds a well-formed Opus packet (RFC 6716 §3.4).
pub fn opus_frame(counter: u64, sender: [u8; 8], sent_micros: u64) -> Vec<u8> {
    let mut out = vec![OPUS_TOC];
    write_body(
        &mut out,
        &audio_body(counter, sender, sent_micros),
        AUDIO_PAYLOAD - 1,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::parse_body;
    use veil_sfu::keyframe::vp8_is_keyframe;

    fn frame(key: bool, bytes: usize) -> Frame {
        Frame {
            kind: Kind::Video,
            layer: Some(Layer::Half),
            key,
            bytes,
            picture_id: 9,
            sender: crate::payload::participant_hash("p"),
            sent_micros: 5,
        }
    }

    #[test]
    fn key_frames_are_detected_by_the_sfu_only_on_their_first_packet() {
        let mut counter = 100;
        let packets = packetize(&frame(true, 3000), &mut counter);
        assert!(packets.len() >= 3);
        assert!(vp8_is_keyframe(&packets[0]));
        assert!(packets[1..].iter().all(|p| !vp8_is_keyframe(p)));
        assert!(packets.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let total: usize = packets.iter().map(Vec::len).sum();
        assert!((3000..3000 + MAX_PAYLOAD).contains(&total), "{total}");
        // Start code after the 4-byte descriptor and 3-byte frame tag.
        assert_eq!(&packets[0][7..10], &[0x9d, 0x01, 0x2a]);
        assert_eq!(counter, 100 + packets.len() as u64);
    }

    #[test]
    fn every_packet_carries_a_parsable_body_in_order() {
        for key in [true, false] {
            let mut counter = 0;
            let packets = packetize(&frame(key, 2500), &mut counter);
            for (i, p) in packets.iter().enumerate() {
                let body = parse_body(p).expect("body");
                assert_eq!(body.counter, i as u64);
                assert_eq!(body.layer, Some(Layer::Half));
                assert_eq!(body.kind, Kind::Video);
            }
            assert!(!vp8_is_keyframe(
                &packetize(&frame(false, 10), &mut counter)[0]
            ));
        }
    }

    #[test]
    fn tiny_frames_still_make_one_valid_packet() {
        let mut counter = 0;
        let packets = packetize(&frame(true, 1), &mut counter);
        assert_eq!(packets.len(), 1);
        assert!(parse_body(&packets[0]).is_some());
    }

    #[test]
    fn audio_payloads_parse() {
        let p = audio_payload(7, [1; 8], 9);
        assert_eq!(p.len(), AUDIO_PAYLOAD);
        let body = parse_body(&p).expect("body");
        assert_eq!(
            (body.kind, body.counter, body.sent_micros),
            (Kind::Audio, 7, 9)
        );
    }

    #[test]
    fn whole_frames_split_into_packets_that_reassemble() {
        use crate::depacketize::{Vp8Assembler, opus_packet, vp8_key_frame_header};
        let plain = vp8_frame(&frame(true, 3000), 4);
        assert_eq!(plain.len(), 3000);
        assert_eq!(vp8_key_frame_header(&plain), Ok((640, 360)));
        let packets = split_frame(&plain, 9);
        assert!(packets.len() == 3 && packets.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert!(vp8_is_keyframe(&packets[0]));
        let mut assembler = Vp8Assembler::new();
        let last = packets.len() - 1;
        let rebuilt: Vec<Vec<u8>> = packets
            .iter()
            .enumerate()
            .filter_map(|(i, p)| assembler.push(i as u16, 7, i == last, p))
            .collect();
        assert_eq!(rebuilt, vec![plain]);
        let audio = opus_frame(1, [2; 8], 3);
        assert_eq!(audio.len(), AUDIO_PAYLOAD);
        assert_eq!(opus_packet(&audio).map(|p| p.frames), Ok(1));
    }

    #[test]
    fn layers_scale_down() {
        assert_eq!(layer_bitrate(1600, Some(Layer::Quarter)), 100);
        assert_eq!(layer_bitrate(1600, None), 1600);
        assert_eq!(layer_dimensions(Some(Layer::Half)), (640, 360));
    }
}
