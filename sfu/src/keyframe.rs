//! Key frame detection on RTP payloads that may be end-to-end encrypted.
//!
//! SFrame encrypts the frame after the VP8 payload descriptor but leaves the
//! first byte of the VP8 payload header in the clear, so detection reads only
//! the descriptor (RFC 7741) and that one byte (RFC 6386 §9.1). H.264 (RFC
//! 6184) is read from the NAL unit headers. Also builds VP8 descriptors for
//! senders.

// RFC 7741 §4.2, first octet.
const VP8_X: u8 = 0x80;
const VP8_S: u8 = 0x10;
const VP8_PID_MASK: u8 = 0x07;
// Extension octet.
const VP8_I: u8 = 0x80;
const VP8_L: u8 = 0x40;
const VP8_T: u8 = 0x20;
const VP8_K: u8 = 0x10;
// PictureID: M set means a 15-bit id over two octets.
const VP8_M: u8 = 0x80;
// RFC 6386 §9.1: the frame tag's lowest bit is 0 for a key frame.
const VP8_INTER_FRAME: u8 = 0x01;

const H264_TYPE_MASK: u8 = 0x1f;
const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;
const H264_FU_START: u8 = 0x80;

/// RFC 7741 §4.2 VP8 payload descriptor length, or None if the payload is
/// too short/invalid. A descriptor with no payload byte after it counts as
/// too short: every VP8 RTP packet carries at least one byte of the frame.
pub fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    let mut len = 1;
    if first & VP8_X != 0 {
        let ext = *payload.get(1)?;
        len = 2;
        if ext & VP8_I != 0 {
            let picture_id = *payload.get(len)?;
            len += if picture_id & VP8_M != 0 { 2 } else { 1 };
        }
        if ext & VP8_L != 0 {
            len += 1;
        }
        if ext & (VP8_T | VP8_K) != 0 {
            len += 1;
        }
    }
    // `<` rather than `<=`: at least one payload byte must follow.
    (len < payload.len()).then_some(len)
}

/// True when this RTP payload starts a VP8 key frame: descriptor S bit set
/// and partition index 0, and the first byte after the descriptor has its P
/// bit (lowest bit) == 0 (RFC 6386 §9.1 frame tag, inverse key frame flag).
pub fn vp8_is_keyframe(payload: &[u8]) -> bool {
    let Some(len) = vp8_descriptor_len(payload) else {
        return false;
    };
    let first = payload[0];
    // Only the first packet of partition 0 holds the payload header; in any
    // other packet that byte is frame data and means nothing.
    if first & VP8_S == 0 || first & VP8_PID_MASK != 0 {
        return false;
    }
    payload
        .get(len)
        .is_some_and(|tag| tag & VP8_INTER_FRAME == 0)
}

/// H.264 (RFC 6184): single NAL unit type 5 (IDR) or 7 (SPS); STAP-A (24)
/// containing type 5 or 7; FU-A (28) with start bit and type 5 or 7.
pub fn h264_is_keyframe(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    let is_key = |nal_header: u8| matches!(nal_header & H264_TYPE_MASK, H264_IDR | H264_SPS);
    match header & H264_TYPE_MASK {
        1..=23 => is_key(header),
        H264_STAP_A => {
            // Aggregation units: 16-bit size, then the NAL unit.
            let mut rest = &payload[1..];
            while let [hi, lo, tail @ ..] = rest {
                let size = usize::from(u16::from_be_bytes([*hi, *lo]));
                if size == 0 || size > tail.len() {
                    return false;
                }
                if is_key(tail[0]) {
                    return true;
                }
                rest = &tail[size..];
            }
            false
        }
        H264_FU_A => payload
            .get(1)
            .is_some_and(|&fu| fu & H264_FU_START != 0 && is_key(fu)),
        _ => false,
    }
}

/// Builds a minimal VP8 payload descriptor for a sender (used by the headless
/// test participant): X=1 with I=1 and a 15-bit PictureID (M=1), S =
/// start_of_partition, PID = 0. Returns the bytes. `picture_id` is taken
/// modulo 2^15, as the field wraps.
pub fn vp8_descriptor(start_of_partition: bool, picture_id: u16) -> Vec<u8> {
    let first = if start_of_partition {
        VP8_X | VP8_S
    } else {
        VP8_X
    };
    let [hi, lo] = (picture_id & 0x7fff).to_be_bytes();
    vec![first, VP8_I, VP8_M | hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_TAG: u8 = 0x10; // P bit 0 (plus arbitrary version/show bits)
    const DELTA_TAG: u8 = 0x11; // P bit 1

    fn packet(descriptor: &[u8], tag: u8) -> Vec<u8> {
        let mut p = descriptor.to_vec();
        // Tag byte, then bytes standing in for SFrame ciphertext.
        p.extend_from_slice(&[tag, 0x9d, 0x01, 0x2a, 0xff]);
        p
    }

    /// Descriptors of every shape, all with S=1 and PID=0, with their lengths.
    fn shapes() -> Vec<(Vec<u8>, usize)> {
        vec![
            (vec![0x10], 1),                               // no X
            (vec![0x90, 0x00], 2),                         // X, no extensions
            (vec![0x90, 0x80, 0x05], 3),                   // I, 7-bit PictureID
            (vec![0x90, 0x80, 0x81, 0x23], 4),             // I, 15-bit PictureID
            (vec![0x90, 0x40, 0x07], 3),                   // L
            (vec![0x90, 0x20, 0x40], 3),                   // T
            (vec![0x90, 0x10, 0x03], 3),                   // K
            (vec![0x90, 0x30, 0x43], 3),                   // T and K share one octet
            (vec![0x90, 0xc0, 0x05, 0x07], 4),             // I 7-bit + L
            (vec![0x90, 0xf0, 0xff, 0xff, 0x07, 0x40], 6), // everything, 15-bit
            (vec![0xb0, 0xf0, 0x80, 0x01, 0x07, 0x40], 6), // N bit set too
        ]
    }

    #[test]
    fn descriptor_lengths() {
        for (descriptor, len) in shapes() {
            let p = packet(&descriptor, KEY_TAG);
            assert_eq!(vp8_descriptor_len(&p), Some(len), "{descriptor:02x?}");
        }
    }

    #[test]
    fn key_and_delta_frames_for_every_shape() {
        for (descriptor, _) in shapes() {
            assert!(
                vp8_is_keyframe(&packet(&descriptor, KEY_TAG)),
                "key {descriptor:02x?}"
            );
            assert!(
                !vp8_is_keyframe(&packet(&descriptor, DELTA_TAG)),
                "delta {descriptor:02x?}"
            );
        }
    }

    #[test]
    fn tag_is_read_right_after_the_descriptor() {
        // With a 15-bit PictureID whose low byte is odd, reading one byte too
        // early would see P=1; one byte too late would see the key tag.
        let p = [0x90, 0x80, 0x80, 0x01, DELTA_TAG, KEY_TAG];
        assert!(!vp8_is_keyframe(&p));
        let p = [0x90, 0x80, 0x80, 0x01, KEY_TAG, DELTA_TAG];
        assert!(vp8_is_keyframe(&p));
    }

    #[test]
    fn continuation_packets_are_never_key_frames() {
        for (descriptor, _) in shapes() {
            let mut d = descriptor.clone();
            d[0] &= !VP8_S;
            assert!(!vp8_is_keyframe(&packet(&d, KEY_TAG)), "{d:02x?}");
        }
    }

    #[test]
    fn nonzero_partition_is_not_a_key_frame() {
        for pid in 1..=7u8 {
            let p = packet(&[0x10 | pid], KEY_TAG);
            assert_eq!(vp8_descriptor_len(&p), Some(1));
            assert!(!vp8_is_keyframe(&p), "pid {pid}");
        }
    }

    #[test]
    fn truncated_vp8() {
        assert_eq!(vp8_descriptor_len(&[]), None);
        assert!(!vp8_is_keyframe(&[]));
        for (descriptor, len) in shapes() {
            // Every prefix up to and including the bare descriptor is too short.
            let p = packet(&descriptor, KEY_TAG);
            for cut in 0..=len {
                assert_eq!(vp8_descriptor_len(&p[..cut]), None, "{:02x?}", &p[..cut]);
                assert!(!vp8_is_keyframe(&p[..cut]));
            }
            assert!(vp8_is_keyframe(&p[..len + 1]));
        }
    }

    #[test]
    fn built_descriptor_parses_back() {
        for (start, picture_id) in [(true, 0), (false, 1), (true, 0x7fff), (false, 0x1234)] {
            let d = vp8_descriptor(start, picture_id);
            assert_eq!(d.len(), 4);
            assert_eq!(d[0] & VP8_PID_MASK, 0);
            assert_eq!(d[0] & VP8_S != 0, start);
            let id = u16::from_be_bytes([d[2] & 0x7f, d[3]]);
            assert_eq!(id, picture_id);
            let p = packet(&d, KEY_TAG);
            assert_eq!(vp8_descriptor_len(&p), Some(4));
            assert_eq!(vp8_is_keyframe(&p), start);
            assert!(!vp8_is_keyframe(&packet(&d, DELTA_TAG)));
        }
        // PictureID wraps at 15 bits rather than spilling into the M bit.
        assert_eq!(vp8_descriptor(true, 0x8001), vp8_descriptor(true, 1));
    }

    #[test]
    fn h264_single_nal() {
        assert!(h264_is_keyframe(&[0x65, 0x88])); // IDR, nri 3
        assert!(h264_is_keyframe(&[0x67, 0x42])); // SPS
        assert!(h264_is_keyframe(&[0x05]));
        assert!(!h264_is_keyframe(&[0x41, 0x9a])); // non-IDR slice
        assert!(!h264_is_keyframe(&[0x68, 0xce])); // PPS alone
        assert!(!h264_is_keyframe(&[0x06])); // SEI
        assert!(!h264_is_keyframe(&[]));
    }

    #[test]
    fn h264_stap_a() {
        // SPS + PPS
        let stap = [0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce];
        assert!(h264_is_keyframe(&stap));
        // PPS then IDR: the key unit is the second one.
        let stap = [0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x65, 0x88];
        assert!(h264_is_keyframe(&stap));
        // SEI + non-IDR slice
        let stap = [0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x02, 0x41, 0x9a];
        assert!(!h264_is_keyframe(&stap));
        // Size runs past the end before any key unit.
        let stap = [0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x09, 0x65, 0x88];
        assert!(!h264_is_keyframe(&stap));
        // Zero size is invalid.
        assert!(!h264_is_keyframe(&[0x78, 0x00, 0x00, 0x65]));
        assert!(!h264_is_keyframe(&[0x78]));
        assert!(!h264_is_keyframe(&[0x78, 0x00]));
    }

    #[test]
    fn h264_fu_a() {
        assert!(h264_is_keyframe(&[0x7c, 0x85, 0xb8])); // start, IDR
        assert!(!h264_is_keyframe(&[0x7c, 0x05, 0xb8])); // middle of IDR
        assert!(!h264_is_keyframe(&[0x7c, 0x45, 0xb8])); // end of IDR
        assert!(!h264_is_keyframe(&[0x7c, 0x81, 0xb8])); // start, non-IDR
        assert!(!h264_is_keyframe(&[0x7c])); // truncated
        // FU-B and other types are not handled as key frames.
        assert!(!h264_is_keyframe(&[0x7d, 0x85, 0x00, 0x01]));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Deterministic xorshift, so failures reproduce.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        };
        for len in 0..=12usize {
            for round in 0..2000 {
                let mut buf: Vec<u8> = (0..len).map(|_| next()).collect();
                // Force every first-byte value to be covered at each length.
                if let Some(b) = buf.first_mut() {
                    *b = (round % 256) as u8;
                }
                let dlen = vp8_descriptor_len(&buf);
                if let Some(d) = dlen {
                    assert!((1..=6).contains(&d) && d < len, "{buf:02x?}");
                }
                if vp8_is_keyframe(&buf) {
                    assert!(dlen.is_some());
                    assert_eq!(buf[0] & (VP8_S | VP8_PID_MASK), VP8_S);
                }
                if h264_is_keyframe(&buf) {
                    assert!(matches!(buf[0] & 0x1f, 5 | 7 | 24 | 28));
                }
            }
        }
    }
}
