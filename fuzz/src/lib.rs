//! Fuzz targets: every boundary where bytes from outside reach Veil's code — signaling
//! messages, SDP offers, RTP and RTCP packets on their way to the forwarder, SFrame
//! frames and key-management blobs, join grants, and the accounts API's bodies.
//!
//! Owns: one function per target taking arbitrary bytes. The same functions run under
//! libFuzzer (`fuzz/libfuzzer`, `cargo fuzz`) and over the committed corpus in the test
//! suite (`tests/corpus.rs`), so a crash found once stays a failing test.
//!
//! Must never: hide a panic (a target returns nothing and unwinds on a bug), touch the
//! network, the disk or a clock, or keep state between calls that would make a crash
//! depend on what ran before it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rtc::shared::marshal::{Marshal, Unmarshal};

use veil_bench::e2ee::E2ee;
use veil_bench::sframe::{Codec, Header, KeyRing};
use veil_sfu::forwarder::ForwardState;
use veil_sfu::grant::GrantVerifier;
use veil_sfu::keyframe;
use veil_sfu::signal::Layer;
use veil_signaling::message::ClientMessage;

/// A target: its name (the corpus folder under `fuzz/corpus/`) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("signaling_message", signaling_message),
    ("sdp_offer", sdp_offer),
    ("rtp_forwarder", rtp_forwarder),
    ("rtcp_feedback", rtcp_feedback),
    ("sframe_frame", sframe_frame),
    ("e2ee_blob", e2ee_blob),
    ("join_grant", join_grant),
    ("accounts_body", accounts_body),
];

/// A WebSocket text message from a client, parsed as signaling parses it; what is
/// accepted is taken apart as the connection does (its metrics kind, the SFU signal it
/// carries).
pub fn signaling_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(message) = serde_json::from_str::<ClientMessage>(text) else {
        return;
    };
    let _ = message.kind();
    let _ = message.into_signal();
}

/// An SDP offer as the SFU receives it from a client.
pub fn sdp_offer(data: &[u8]) {
    let sdp = String::from_utf8_lossy(data).into_owned();
    let _ = webrtc::peer_connection::RTCSessionDescription::offer(sdp);
}

/// A run of RTP packets for one track: the first byte says whether it is video and
/// which simulcast layers exist; then packets, each preceded by its length (one byte).
/// Each is parsed, checked for a key frame and passed through one subscriber's forwarding
/// state, and what is forwarded is written back to the wire.
pub fn rtp_forwarder(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let is_video = flags & 1 == 1;
    let available: Vec<Layer> = Layer::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (2 << i) != 0)
        .map(|(_, l)| *l)
        .collect();
    let start = Instant::now();
    let mut forward =
        ForwardState::new(0x5eed, if is_video { 90_000 } else { 48_000 }, Layer::Full);
    let mut n = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (raw, next) = tail.split_at(len);
        rest = next;
        n += 1;
        let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut &raw[..]) else {
            continue;
        };
        let payload = &packet.payload[..];
        let key =
            is_video && (keyframe::vp8_is_keyframe(payload) || keyframe::h264_is_keyframe(payload));
        let _ = keyframe::vp8_descriptor_len(payload);
        let layer = available
            .get(usize::from(packet.header.payload_type) % 4)
            .copied();
        let now = start + Duration::from_millis(n * 20);
        if let Some(r) = forward.on_packet(
            layer,
            key,
            is_video,
            &available,
            packet.header.ssrc,
            packet.header.sequence_number,
            packet.header.timestamp,
            now,
        ) {
            let mut out = packet.clone();
            out.header.ssrc = r.ssrc;
            out.header.sequence_number = r.sequence_number;
            out.header.timestamp = r.timestamp;
            let _ = out.marshal();
        }
        let _ = forward.selector.wants_keyframe(&available);
    }
}

/// A compound RTCP packet from a participant, parsed and looked at as the SFU's
/// feedback handling does.
pub fn rtcp_feedback(data: &[u8]) {
    let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &data[..]) else {
        return;
    };
    for packet in &packets {
        let _ = veil_sfu::feedback::is_keyframe_request(packet.as_ref());
        let _ = packet.destination_ssrc();
        let _ = packet.marshal();
    }
}

/// A received media frame: the SFrame header alone, then decryption with a key ring
/// holding keys 0–3 (the first byte picks VP8 or Opus).
pub fn sframe_frame(data: &[u8]) {
    let _ = Header::decode(data);
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let Some(mut ring) = sframe_key_ring() else {
        return;
    };
    let _ = ring.decrypt_frame(sframe_codec(pick), frame);
}

/// The key ring `sframe_frame` decrypts with: key ids 0–3, each key 16 bytes of its id.
pub fn sframe_key_ring() -> Option<KeyRing> {
    let mut ring = KeyRing::new();
    for kid in 0..4u64 {
        ring.insert(kid, &[kid as u8; 16]).ok()?;
    }
    Some(ring)
}

/// The codec the first byte of an `sframe_frame` input picks.
pub fn sframe_codec(pick: u8) -> Codec {
    if pick & 1 == 0 {
        Codec::Vp8
    } else {
        Codec::Opus
    }
}

/// A key-management blob from another member, as a full member handles it: from a
/// peer it has never heard of, and from one whose announcement it verified.
pub fn e2ee_blob(data: &[u8]) {
    let Ok(blob) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut me) = E2ee::new(SECRET, "fuzz-room", "me") else {
        return;
    };
    let _ = me.handle("stranger", blob);
    let _ = me.peer_left("stranger");
}

/// The room secret the e2ee target's member holds (22 base64url characters: 16 bytes).
const SECRET: &str = "AAECAwQFBgcICQoLDA0ODw";

/// A join grant as the SFU verifies it. Half the inputs are taken as whole tokens; the
/// other half as the JSON payload of a grant signed with the test key, so that what the
/// signature normally shields from outsiders is fuzzed too.
pub fn join_grant(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = test_key();
    let Ok(verifier) = GrantVerifier::new(key.public_key().as_ref()) else {
        return;
    };
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let signed = format!("v1.{}", URL_SAFE_NO_PAD.encode(rest));
        let signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    };
    let room = (mode & 2 == 2).then_some("room-1");
    let _ = verifier.verify(Some(&token), room, 1_700_000_000);
}

fn test_key() -> &'static Ed25519KeyPair {
    static KEY: OnceLock<Ed25519KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        // A fixed seed: the same key in every run, so a corpus entry means the same thing.
        match Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]) {
            Ok(key) => key,
            Err(_) => unreachable!("a 32-byte seed is always a valid Ed25519 seed"),
        }
    })
}

/// A request body for one of the accounts routes (the first byte picks the route and
/// JSON or form encoding), parsed and checked as the route does before any storage.
pub fn accounts_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (route, form) = accounts_route(pick);
    let _ = veil_accounts::http::check_body(route, form, body);
}

/// The route and encoding (form when true) the first byte of an `accounts_body` input
/// picks: the high seven bits choose the route, the low bit the encoding.
pub fn accounts_route(pick: u8) -> (&'static str, bool) {
    let routes = veil_accounts::http::ROUTES;
    (routes[usize::from(pick >> 1) % routes.len()], pick & 1 == 1)
}
