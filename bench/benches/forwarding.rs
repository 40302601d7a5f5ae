//! Microbenchmarks of the SFU's per-packet hot path: what is Veil's own (RTP header
//! rewrite, key-frame detection, the per-packet forwarding decision, grant
//! verification) and what the `webrtc`/`rtc` dependency does to every forwarded packet
//! (RTP parse/serialise, SRTP protect/unprotect). Figures go to docs/performance.md.
//!
//! SFrame encrypt/decrypt is not here yet: `bench/src/sframe.rs` has not landed.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rtc::crypto::providers::RingCrypto;
use rtc::rtp;
use rtc::shared::marshal::{Marshal, Unmarshal};
use rtc::srtp::context::Context;
use rtc::srtp::option::{srtcp_no_replay_protection, srtp_no_replay_protection};
use rtc::srtp::protection_profile::ProtectionProfile;
use veil_bench::media::{Frame, audio_payload, packetize};
use veil_bench::payload::{Kind, participant_hash};
use veil_sfu::Layer;
use veil_sfu::forwarder::ForwardState;
use veil_sfu::grant::{Grant, GrantSigner};
use veil_sfu::keyframe::vp8_is_keyframe;
use veil_sfu::sequence::SequenceRewriter;

fn video_packets(key: bool) -> Vec<Vec<u8>> {
    let frame = Frame {
        kind: Kind::Video,
        layer: None,
        key,
        bytes: 3000,
        picture_id: 1,
        sender: participant_hash("bench"),
        sent_micros: 1,
    };
    let mut counter = 0;
    packetize(&frame, &mut counter)
}

fn header_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp_header_rewrite");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    g.bench_function("same_source", |b| {
        let mut r = SequenceRewriter::new(1234, 90_000);
        let (mut seq, mut ts) = (0u16, 0u32);
        b.iter(|| {
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(3000);
            black_box(r.rewrite(black_box(42), seq, ts, now))
        });
    });
    g.bench_function("layer_switch_every_packet", |b| {
        let mut r = SequenceRewriter::new(1234, 90_000);
        let (mut seq, mut ts, mut ssrc) = (0u16, 0u32, 0u32);
        b.iter(|| {
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(3000);
            ssrc = (ssrc + 1) % 3;
            black_box(r.rewrite(black_box(ssrc), seq, ts, now))
        });
    });
    g.finish();
}

fn keyframe_detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("keyframe_detection");
    g.throughput(Throughput::Elements(1));
    let key = video_packets(true).remove(0);
    let delta = video_packets(false).remove(0);
    g.bench_function("vp8_key", |b| b.iter(|| vp8_is_keyframe(black_box(&key))));
    g.bench_function("vp8_delta", |b| {
        b.iter(|| vp8_is_keyframe(black_box(&delta)))
    });
    g.finish();
}

fn forwarding_decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("forwarding_decision");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    g.bench_function("single_layer_video", |b| {
        let mut f = ForwardState::new(99, 90_000, Layer::Full);
        let _ = f.on_packet(None, true, true, &[], 7, 0, 0, now);
        let mut seq = 0u16;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            black_box(f.on_packet(None, false, true, &[], 7, seq, u32::from(seq), now))
        });
    });
    g.bench_function("simulcast_three_layers_subscriber_on_half", |b| {
        let mut f = ForwardState::new(99, 90_000, Layer::Half);
        let _ = f.on_packet(Some(Layer::Half), true, true, &Layer::ALL, 2, 0, 0, now);
        let mut seq = 0u16;
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % 3;
            seq = seq.wrapping_add(1);
            let layer = Layer::ALL[i];
            black_box(f.on_packet(
                Some(layer),
                false,
                true,
                &Layer::ALL,
                i as u32 + 1,
                seq,
                u32::from(seq),
                now,
            ))
        });
    });
    g.finish();
}

fn grant_verification(c: &mut Criterion) {
    let Ok(signer) = GrantSigner::generate() else {
        return;
    };
    let grant = Grant {
        room: "bench-room".into(),
        participant: "bench-participant".into(),
        can_publish: true,
        can_subscribe: true,
        expires: u64::MAX / 2,
    };
    let token = signer.sign(&grant);
    let verifier = signer.verifier();
    c.bench_function("grant_verify_ed25519", |b| {
        b.iter(|| black_box(verifier.verify(Some(black_box(&token)), Some("bench-room"), 1)))
    });
}

/// What the dependency does to every packet: parse and serialise the RTP packet.
fn rtp_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp_packet");
    g.throughput(Throughput::Elements(1));
    let payload = video_packets(false).remove(0);
    let packet = rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: 1,
            timestamp: 2,
            ssrc: 3,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    };
    let Ok(wire) = packet.marshal() else {
        return;
    };
    let wire = wire.freeze();
    g.bench_function("unmarshal_1100B", |b| {
        b.iter(|| {
            let mut buf = wire.clone();
            black_box(rtp::Packet::unmarshal(&mut buf).ok())
        })
    });
    g.bench_function("marshal_1100B", |b| {
        b.iter(|| black_box(packet.marshal().ok()))
    });
    g.finish();
}

fn srtp_context(profile: ProtectionProfile) -> Option<Context> {
    let key = vec![7u8; profile.key_len()];
    let salt = vec![9u8; profile.salt_len()];
    Context::new(
        &key,
        &salt,
        profile,
        Some(srtp_no_replay_protection()),
        Some(srtcp_no_replay_protection()),
        &RingCrypto,
    )
    .ok()
}

/// SRTP protect/unprotect of one packet: done once in and once per subscriber out.
fn srtp(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp");
    g.throughput(Throughput::Elements(1));
    for (name, payload) in [
        ("video_1100B", video_packets(false).remove(0)),
        ("audio_80B", audio_payload(1, [1; 8], 1)),
    ] {
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: 1,
                timestamp: 2,
                ssrc: 3,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        };
        let Ok(plain) = packet.marshal() else {
            continue;
        };
        for (profile_name, profile) in [
            ("aes128cm_sha1_80", ProtectionProfile::Aes128CmHmacSha1_80),
            ("aead_aes128gcm", ProtectionProfile::AeadAes128Gcm),
        ] {
            let (Some(mut enc), Some(mut dec)) = (srtp_context(profile), srtp_context(profile))
            else {
                continue;
            };
            let Ok(cipher) = enc.encrypt_rtp(&plain) else {
                continue;
            };
            g.bench_function(format!("encrypt_{profile_name}_{name}"), |b| {
                b.iter(|| black_box(enc.encrypt_rtp(black_box(&plain)).ok()))
            });
            g.bench_function(format!("decrypt_{profile_name}_{name}"), |b| {
                b.iter(|| black_box(dec.decrypt_rtp(black_box(&cipher)).ok()))
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    header_rewrite,
    keyframe_detection,
    forwarding_decision,
    grant_verification,
    rtp_codec,
    srtp
);
criterion_main!(benches);
