//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through every target:
//! inputs found by `cargo fuzz` — including any that once crashed — stay tests. Each
//! target must have a corpus, so a new target cannot be added without one.

use std::path::Path;

#[test]
fn every_target_survives_its_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in veil_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no corpus for {name} at {}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "the corpus of {name} is empty");
        for input in &inputs {
            let data = std::fs::read(input).expect("read corpus input");
            // A panic here names the input: `cargo fuzz run <target> <file>` reproduces it.
            eprintln!("{name}: {}", input.display());
            target(&data);
        }
        println!("{name}: {} inputs", inputs.len());
    }
}

/// The seeds reach past the parsers: a corpus of inputs that all fail at the first
/// byte would fuzz nothing but the error paths.
#[test]
fn seeds_are_accepted_where_they_should_be() {
    for (name, inputs) in seeds() {
        for (i, data) in inputs.iter().enumerate() {
            let accepted = match name {
                "signaling_message" => {
                    serde_json::from_slice::<veil_signaling::message::ClientMessage>(data).is_ok()
                }
                "sframe_frame" => veil_fuzz::sframe_key_ring()
                    .expect("key ring")
                    .decrypt_frame(veil_fuzz::sframe_codec(data[0]), &data[1..])
                    .is_ok(),
                "accounts_body" => {
                    let (route, form) = veil_fuzz::accounts_route(data[0]);
                    veil_accounts::http::check_body(route, form, &data[1..]).is_ok()
                }
                "sdp_offer" => webrtc::peer_connection::RTCSessionDescription::offer(
                    String::from_utf8_lossy(data).into_owned(),
                )
                .is_ok(),
                _ => true,
            };
            assert!(accepted, "{name} seed {i} is refused");
        }
    }
}

/// Writes the starting corpus from Veil's own encoders and documented shapes:
/// `cargo test -p veil-fuzz -- --ignored write_seed_corpus`. Run once per new target;
/// `cargo fuzz` grows the corpus from there.
#[test]
#[ignore = "writes files under fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, inputs) in seeds() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (i, data) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), data).expect("write seed");
        }
    }
}

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    use veil_bench::sframe::{Codec, Encryptor};
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect();

    let signaling = text(&[
        r#"{"type":"join","grant":"v1.eyJyb29tIjoiciJ9.c2ln","room":"room-1"}"#,
        r#"{"type":"resume","token":"abc"}"#,
        r#"{"type":"offer","sdp":"v=0\r\n"}"#,
        r#"{"type":"answer","sdp":"v=0\r\n"}"#,
        r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        r#"{"type":"set_max_layer","track":"t1","layer":"h"}"#,
        r#"{"type":"e2ee","to":"p2","blob":"AAEC"}"#,
        r#"{"type":"e2ee","blob":"AAEC"}"#,
        r#"{"type":"state","state":{"audio_muted":true,"hand_raised":true}}"#,
        r#"{"type":"rejoin"}"#,
        r#"{"type":"remove","participant":"p2"}"#,
        r#"{"type":"end_meeting"}"#,
        r#"{"type":"leave"}"#,
    ]);

    let sdp = vec![
        concat!(
            "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
            "a=group:BUNDLE 0 1\r\na=msid-semantic: WMS\r\n",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
            "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n",
            "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n",
            "a=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n",
            "a=sendrecv\r\na=msid:- a1\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n",
            "a=ssrc:1001 cname:x\r\n",
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
            "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n",
            "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n",
            "a=setup:actpass\r\na=mid:1\r\na=sendrecv\r\na=rtcp-mux\r\na=rtcp-rsize\r\n",
            "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 ccm fir\r\n",
            "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
        )
        .as_bytes()
        .to_vec(),
        b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n".to_vec(),
    ];

    // RTP: a VP8 key frame, a VP8 delta frame, an Opus packet (12-byte headers).
    let rtp = |pt: u8, marker: bool, seq: u16, payload: &[u8]| {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&3000u32.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    };
    let vp8_key = [
        0x10, 0x50, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00,
    ];
    let vp8_delta = [0x10, 0x01, 0x00, 0x00, 0xaa];
    let run = |flags: u8, packets: &[Vec<u8>]| {
        let mut out = vec![flags];
        for p in packets {
            out.push(p.len() as u8);
            out.extend_from_slice(p);
        }
        out
    };
    let rtp_seeds = vec![
        run(
            0b1111,
            &[
                rtp(96, true, 1, &vp8_key),
                rtp(97, true, 2, &vp8_delta),
                rtp(96, false, 3, &vp8_delta),
            ],
        ),
        run(
            0,
            &[
                rtp(111, true, 7, &[0x78, 0x01, 0x02]),
                rtp(111, true, 8, &[0xfc]),
            ],
        ),
        run(
            1,
            &[rtp(96, true, 65535, &vp8_key), rtp(96, true, 0, &vp8_delta)],
        ),
    ];

    // RTCP: receiver report, PLI, FIR, generic NACK, and a compound SR + RR.
    let rr = vec![
        0x81, 201, 0, 7, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78, 5, 0, 0, 3, 0, 0, 1, 0, 0, 0, 0, 9, 0,
        0, 0, 0, 0, 0, 0, 0,
    ];
    let pli = vec![0x81, 206, 0, 2, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78];
    let fir = vec![
        0x84, 206, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 1, 0, 0, 0,
    ];
    let nack = vec![
        0x81, 205, 0, 3, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78, 0, 10, 0, 5,
    ];
    let sr = vec![
        0x80, 200, 0, 6, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0,
        0, 0, 5,
    ];
    let compound = [sr.clone(), rr.clone()].concat();
    let rtcp_seeds = vec![rr, pli, fir, nack, sr, compound];

    // SFrame: frames encrypted under keys 0 and 3, as the target's key ring holds them.
    let mut sframe_seeds = Vec::new();
    for (kid, codec, frame) in [
        // Whole VP8 frames (no RTP descriptor): a key frame's 10-byte header, a delta's 3.
        (
            0u64,
            Codec::Vp8,
            vec![
                0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 1, 2, 3,
            ],
        ),
        (3, Codec::Vp8, vec![0x51, 0x00, 0x00, 0xaa, 0xbb, 0xcc]),
        (1, Codec::Opus, vec![0x78, 1, 2, 3]),
    ] {
        let encryptor = Encryptor::new(kid, &[kid as u8; 16]).expect("encryptor");
        let sealed = encryptor.encrypt_frame(codec, &frame).expect("encrypt");
        let pick = if matches!(codec, Codec::Vp8) { 0 } else { 1 };
        sframe_seeds.push([vec![pick], sealed].concat());
    }

    // Key management: announcements from members that know the room secret.
    let peer = veil_bench::e2ee::E2ee::new("AAECAwQFBgcICQoLDA0ODw", "fuzz-room", "stranger")
        .expect("member");
    let e2ee_seeds: Vec<Vec<u8>> = peer
        .start()
        .into_iter()
        .map(|o| o.blob.into_bytes())
        .collect();

    // Grants: a whole token, and payloads the target signs itself.
    let payload = br#"{"room":"room-1","participant":"p-1","can_publish":true,"can_subscribe":true,"expires":1800000000}"#;
    let grant_seeds = vec![
        [&[0u8][..], b"v1.eyJyb29tIjoicm9vbS0xIn0.AAAA"].concat(),
        [&[1u8][..], payload].concat(),
        [&[3u8][..], payload].concat(),
    ];

    let routes = veil_accounts::http::ROUTES;
    let route = |name: &str| (routes.iter().position(|r| *r == name).expect("route") as u8) << 1;
    let accounts_seeds = vec![
        [&[route("sign_up")][..], br#"{"email":"a@example.org","display_name":"A","password":"a long enough passphrase","age_confirmed":true,"accept_policy":true}"#].concat(),
        [&[route("sign_up") | 1][..], b"email=a%40example.org&display_name=A&password=a+long+enough+passphrase&age_confirmed=on&accept_policy=on"].concat(),
        [&[route("log_in")][..], br#"{"email":"a@example.org","password":"x"}"#].concat(),
        [&[route("verify")][..], br#"{"token":"abc"}"#].concat(),
        [&[route("password_reset_confirm")][..], br#"{"token":"abc","password":"a brand new passphrase"}"#].concat(),
        [&[route("account_change")][..], br#"{"display_name":"B","email":"b@example.org","new_password":"another passphrase","current_password":"x","survey_opt_in":false}"#].concat(),
        [&[route("account_reopen")][..], br#"{"email":"a@example.org","password":"x","accept_policy":true}"#].concat(),
        [&[route("account_close")][..], b""].concat(),
    ];

    vec![
        ("signaling_message", signaling),
        ("sdp_offer", sdp),
        ("rtp_forwarder", rtp_seeds),
        ("rtcp_feedback", rtcp_seeds),
        ("sframe_frame", sframe_seeds),
        ("e2ee_blob", e2ee_seeds),
        ("join_grant", grant_seeds),
        ("accounts_body", accounts_seeds),
    ]
}
