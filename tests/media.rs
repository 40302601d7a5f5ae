//! The SFU media path end to end: real peer connections over loopback (the headless
//! participant on the `webrtc` crate), joined through the public HTTP API and
//! WebSocket, against an all-in-one Veil.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use veil_bench::participant::{Participant, VideoConfig};
use veil_bench::payload::{Kind, participant_hash};
use veil_sfu::Layer;

fn forwarded_packets(veil: &veil::Running) -> u64 {
    ["audio", "video"]
        .iter()
        .map(|k| {
            veil.metrics
                .rtp_forwarded_packets
                .with_label_values(&[k])
                .get()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_each_receive_the_other_two_untouched() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let mut people = Vec::new();
    for name in ["Ann", "Bo", "Cy"] {
        let mut config = participant(&veil, &room, name);
        if name == "Ann" {
            // Ann also shares her screen: a second video track from one participant.
            config.screen = Some(VideoConfig {
                fps: 5,
                bitrate_bps: 300_000,
                ..VideoConfig::default()
            });
        }
        people.push(Participant::join(config).await.expect("join"));
    }
    let ids: Vec<String> = people.iter().map(|p| p.id.clone()).collect();
    wait_until(
        "everyone receives audio and video from both others",
        secs(15),
        || {
            people.iter().all(|p| {
                ids.iter()
                    .filter(|id| **id != p.id)
                    .all(|other| receives_av_from(p, other, 20))
            })
        },
    )
    .await;
    wait_until("Bo and Cy receive Ann's screen", secs(10), || {
        people[1..].iter().all(|p| {
            tracks_from(p, &ids[0])
                .iter()
                .any(|t| t.kind == Some(Kind::Screen) && t.packets > 5)
        })
    })
    .await;
    let first_packet: Vec<Duration> = people
        .iter()
        .filter_map(|p| {
            let first = p.received().iter().filter_map(|t| t.first_packet).min()?;
            Some(first.duration_since(p.joined_at))
        })
        .collect();

    // Steady state: count what the SFU forwards over a fixed window.
    let before = forwarded_packets(&veil);
    let window = Instant::now();
    tokio::time::sleep(secs(3)).await;
    let forwarded = forwarded_packets(&veil) - before;
    let rate = forwarded as f64 / window.elapsed().as_secs_f64();
    println!(
        "three-party: join → first packet {:?}; SFU forwarded {forwarded} packets in the window ({rate:.0} packets/s)",
        first_packet
    );

    for p in &people {
        // Received first: anything sent after this snapshot cannot be in it.
        let received = p.received_hashes();
        let others_sent: HashSet<u64> = people
            .iter()
            .filter(|o| o.id != p.id)
            .flat_map(|o| o.sent_hashes())
            .collect();
        assert!(!received.is_empty());
        let unknown = received.difference(&others_sent).count();
        assert_eq!(
            unknown, 0,
            "{} payloads not byte-identical to any sent",
            unknown
        );
        let own: HashSet<u64> = p.sent_hashes();
        assert!(received.is_disjoint(&own), "received its own media");
        for track in p.received() {
            assert_eq!(track.foreign_payloads, 0);
            assert_ne!(track.publisher, p.id);
            for ((sender, _), range) in &track.counters {
                assert_eq!(*sender, participant_hash(&track.publisher));
                assert!(
                    range.delivery() >= 0.99,
                    "track {} delivered {:.3}",
                    track.track,
                    range.delivery()
                );
            }
        }
        assert!(p.errors().is_empty(), "errors: {:?}", p.errors());
    }
    for p in people {
        p.leave().await;
    }
    wait_until("sessions gone", secs(5), || veil.sfu.stats().sessions == 0).await;
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_in_another_room_receives_nothing() {
    let veil = start_veil().await;
    let room_a = new_room(&veil);
    let room_b = new_room(&veil);
    let a1 = Participant::join(participant(&veil, &room_a, "A1"))
        .await
        .expect("join");
    let a2 = Participant::join(participant(&veil, &room_a, "A2"))
        .await
        .expect("join");
    let b = Participant::join(participant(&veil, &room_b, "B"))
        .await
        .expect("join");
    wait_until("room A flows both ways", secs(15), || {
        receives_av_from(&a1, &a2.id, 50) && receives_av_from(&a2, &a1.id, 50)
    })
    .await;
    assert!(b.received().is_empty(), "B received {:?}", b.received());
    assert!(b.received_hashes().is_empty());
    assert!(b.published_tracks().is_empty());
    assert!(a1.received().iter().all(|t| t.publisher != b.id));
    assert!(a2.received().iter().all(|t| t.publisher != b.id));
    for p in [a1, a2, b] {
        p.leave().await;
    }
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grants_are_refused_before_any_peer_connection() {
    use veil_bench::participant::{ParticipantError, open_socket};
    use veil_sfu::grant::{Grant, GrantSigner};

    let veil = start_veil().await;
    let room = new_room(&veil);
    let other_room = new_room(&veil);
    let url = veil.base_url();
    let grant = |room: &str, expires: u64| Grant {
        room: room.to_string(),
        participant: "participant-1".into(),
        can_publish: true,
        can_subscribe: true,
        expires,
    };
    let now = veil_sfu::unix_now();
    let signer = &veil.signaling.signer;
    let forger = GrantSigner::generate().expect("key");
    let valid = signer.sign(&grant(&room, now + 60));
    let mut tampered = valid.clone();
    tampered.replace_range(5..6, if &valid[5..6] == "A" { "B" } else { "A" });
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "grant_missing"),
        (
            "malformed",
            Some("v1.not-a-grant".into()),
            "grant_malformed",
        ),
        ("garbage", Some("hello".into()), "grant_malformed"),
        (
            "expired",
            Some(signer.sign(&grant(&room, now - 1))),
            "grant_expired",
        ),
        (
            "forged",
            Some(forger.sign(&grant(&room, now + 60))),
            "grant_forged",
        ),
        ("tampered", Some(tampered), "grant_forged"),
    ];
    for (what, token, code) in cases {
        match open_socket(&url, "/ws", token.as_deref()).await {
            Err(ParticipantError::Refused { code: got, .. }) => {
                assert_eq!(got, code, "{what}")
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: grant accepted"),
        }
        let stats = veil.sfu.stats();
        assert_eq!((stats.sessions, stats.mux_connections), (0, 0), "{what}");
    }

    // A valid grant presented for another room than the one asked for.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws", url.replacen("http://", "ws://", 1)))
            .await
            .expect("ws");
    use futures::{SinkExt, StreamExt};
    let join = serde_json::json!({"type": "join", "grant": valid, "room": other_room});
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        join.to_string().into(),
    ))
    .await
    .expect("send");
    let reply = within("error reply", secs(5), ws.next())
        .await
        .expect("a reply")
        .expect("a frame");
    let reply: serde_json::Value =
        serde_json::from_str(reply.to_text().expect("text")).expect("json");
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "grant_wrong_room");
    assert_eq!(veil.sfu.stats().sessions, 0);
    assert_eq!(veil.sfu.stats().mux_connections, 0);
    assert_eq!(veil.sfu.stats().rooms, 0);

    let refused = veil.metrics.render();
    for code in [
        "grant_missing",
        "grant_malformed",
        "grant_expired",
        "grant_forged",
        "grant_wrong_room",
    ] {
        assert!(
            refused.contains(&format!("veil_errors_total{{reason=\"{code}\"}}")),
            "{code} not counted"
        );
    }
    veil.stop().await.expect("stop");
}

/// Key frames only when asked: the first one a late joiner sees is the one the SFU
/// requested for it.
fn on_request_only() -> VideoConfig {
    VideoConfig {
        keyframe_interval: Duration::from_secs(3600),
        ..VideoConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_a_key_frame_and_leavers_are_renegotiated_away() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let mut ann = participant(&veil, &room, "Ann");
    ann.video = Some(on_request_only());
    let ann = Participant::join(ann).await.expect("join");
    let mut bo = participant(&veil, &room, "Bo");
    bo.video = Some(on_request_only());
    let bo = Participant::join(bo).await.expect("join");
    wait_until("Ann and Bo exchange media", secs(15), || {
        receives_av_from(&ann, &bo.id, 20) && receives_av_from(&bo, &ann.id, 20)
    })
    .await;
    // Well past the first key frame of each publisher.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cy = Participant::join(participant(&veil, &room, "Cy"))
        .await
        .expect("join");
    let joined = cy.joined_at;
    wait_until("Cy receives a key frame from Ann and Bo", secs(3), || {
        [&ann.id, &bo.id].iter().all(|id| {
            tracks_from(&cy, id)
                .iter()
                .any(|t| t.kind == Some(Kind::Video) && t.first_keyframe.is_some())
        })
    })
    .await;
    for t in cy.received() {
        if t.kind == Some(Kind::Video) {
            // Nothing undecodable before the key frame: the first packet is its start.
            assert_eq!(t.first_packet, t.first_keyframe, "track {}", t.track);
            println!(
                "late joiner: first key frame {:?} after joining",
                t.first_keyframe.map(|k| k.duration_since(joined))
            );
        }
    }
    assert!(
        ann.sent()
            .get(&(Kind::Video, None))
            .is_some_and(|s| s.keyframe_requests > 0)
    );

    // Ann leaves: her tracks disappear at Bo and Cy, who keep receiving each other.
    let ann_id = ann.id.clone();
    ann.leave().await;
    wait_until("Ann's tracks are renegotiated away", secs(5), || {
        [&bo, &cy].iter().all(|p| {
            p.published_tracks()
                .values()
                .all(|t| t.participant != ann_id)
                && tracks_from(p, &ann_id).iter().all(|t| t.ended)
        })
    })
    .await;
    let bo_before = packets_from(&cy, &bo.id);
    let cy_before = packets_from(&bo, &cy.id);
    wait_until("Bo and Cy keep receiving each other", secs(5), || {
        packets_from(&cy, &bo.id) > bo_before + 50 && packets_from(&bo, &cy.id) > cy_before + 50
    })
    .await;
    assert_eq!(bo.published_tracks().len(), 2);
    assert_eq!(cy.published_tracks().len(), 2);
    for p in [bo, cy] {
        assert!(p.errors().is_empty(), "errors: {:?}", p.errors());
        p.leave().await;
    }
    wait_until("all sessions closed", secs(5), || {
        veil.sfu.stats().sessions == 0
    })
    .await;
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_forwards_one_capped_layer_and_switches_at_key_frames() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let mut publisher = participant(&veil, &room, "Pub");
    publisher.audio = false;
    publisher.video = Some(VideoConfig {
        simulcast: true,
        ..on_request_only()
    });
    let publisher = Participant::join(publisher).await.expect("join");
    let mut viewer = participant(&veil, &room, "View");
    viewer.audio = false;
    viewer.video = None;
    let viewer = Participant::join(viewer).await.expect("join");

    wait_until("the viewer receives the simulcast track", secs(15), || {
        packets_from(&viewer, &publisher.id) > 30
    })
    .await;
    let track = viewer
        .published_tracks()
        .into_values()
        .find(|t| t.participant == publisher.id)
        .expect("announced");
    assert_eq!(track.layers, vec![Layer::Quarter, Layer::Half, Layer::Full]);
    let layer_now = || {
        viewer.received_track(&track.track).and_then(|t| {
            t.layer_switches
                .last()
                .map(|s| s.0)
                .or(t.layers.keys().next().copied())
        })
    };
    wait_until("uncapped, the full layer", secs(5), || {
        layer_now() == Some(Some(Layer::Full))
    })
    .await;

    viewer.set_max_layer(&track.track, Layer::Quarter);
    wait_until("capped at q", secs(5), || {
        layer_now() == Some(Some(Layer::Quarter))
    })
    .await;
    let at_cap = viewer.received_track(&track.track).expect("track");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = viewer.received_track(&track.track).expect("track");
    assert!(later.layers[&Some(Layer::Quarter)] > at_cap.layers[&Some(Layer::Quarter)] + 10);
    for layer in [Layer::Half, Layer::Full] {
        assert_eq!(
            later.layers.get(&Some(layer)),
            at_cap.layers.get(&Some(layer)),
            "{layer:?} still forwarded under a q cap"
        );
    }

    viewer.set_max_layer(&track.track, Layer::Full);
    wait_until("raised back to f", secs(5), || {
        layer_now() == Some(Some(Layer::Full))
    })
    .await;
    let stats = viewer.received_track(&track.track).expect("track");
    assert!(
        stats.layer_switches.len() >= 2,
        "{:?}",
        stats.layer_switches
    );
    for (layer, at_keyframe) in &stats.layer_switches {
        assert!(at_keyframe, "switch to {layer:?} not at a key frame");
    }
    assert_eq!(
        stats.sequence_gaps, 0,
        "forwarded sequence numbers not contiguous"
    );
    assert_eq!(stats.sequence_reorders, 0);
    println!(
        "simulcast: switches {:?}; packets per layer {:?}",
        stats.layer_switches, stats.layers
    );
    publisher.leave().await;
    viewer.leave().await;
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_cycles_leave_nothing_behind() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    // A resident publisher, so every cycle subscribes, negotiates and tears down.
    let mut resident = participant(&veil, &room, "Resident");
    resident.video = None;
    let resident = Participant::join(resident).await.expect("join");
    let runtime = tokio::runtime::Handle::current();

    let cycle = |i: usize| {
        let mut config = participant(&veil, &room, "Visitor");
        config.video = None;
        config.record_payloads = false;
        let resident_id = resident.id.clone();
        async move {
            let p = Participant::join(config).await.expect("join");
            wait_until(
                &format!("visitor {i} connected and receiving"),
                secs(10),
                || p.is_connected() && packets_from(&p, &resident_id) > 0,
            )
            .await;
            // Every fourth visitor vanishes without `leave`, as a crashed tab would.
            if i % 4 == 3 {
                p.vanish().await;
            } else {
                p.leave().await;
            }
        }
    };
    // Warm up, then take the baseline.
    for i in 0..5 {
        cycle(i).await;
    }
    wait_until("warm-up sessions closed", secs(15), || {
        veil.sfu.stats().sessions == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline_tasks = runtime.metrics().num_alive_tasks();
    let baseline_fds = open_fds();

    let started = Instant::now();
    const CYCLES: usize = 300;
    for i in 0..CYCLES {
        cycle(i).await;
    }
    println!("{CYCLES} join/leave cycles in {:?}", started.elapsed());
    wait_until("only the resident's session is left", secs(20), || {
        let s = veil.sfu.stats();
        s.sessions == 1 && s.rooms == 1 && s.mux_connections == 1
    })
    .await;
    // A leak per session would add hundreds of tasks; allow a few for pooled HTTP
    // connections and timers that come and go independently of sessions.
    const SLACK: usize = 4;
    let settle = Instant::now();
    while runtime.metrics().num_alive_tasks() > baseline_tasks + SLACK
        && settle.elapsed() < secs(20)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tasks = runtime.metrics().num_alive_tasks();
    println!("tasks: {baseline_tasks} before, {tasks} after {CYCLES} cycles");
    assert!(
        tasks <= baseline_tasks + SLACK,
        "tasks grew from {baseline_tasks} to {tasks} over {CYCLES} cycles"
    );
    // The same for file descriptors (sockets of every session and of the participants
    // in this process): one leaked per session would add hundreds.
    let fds = open_fds();
    println!("file descriptors: {baseline_fds} before, {fds} after {CYCLES} cycles");
    assert!(
        fds <= baseline_fds + 2 * SLACK,
        "file descriptors grew from {baseline_fds} to {fds} over {CYCLES} cycles"
    );
    resident.leave().await;
    wait_until("everything gone", secs(10), || {
        let s = veil.sfu.stats();
        (s.sessions, s.rooms, s.mux_connections, s.mux_addresses) == (0, 0, 0, 0)
    })
    .await;
    veil.stop().await.expect("stop");
}

/// This process's open file descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_connects_times_out_and_is_torn_down() {
    use futures::StreamExt;
    use veil_bench::participant::{open_socket, request_grant};

    let mut config = veil::Config::default();
    config.signaling.http_addr = "127.0.0.1:0".parse().expect("addr");
    config.sfu.media_addr = "127.0.0.1:0".parse().expect("addr");
    config.sfu.connect_timeout = Duration::from_secs(1);
    let veil = veil::start(&config).await.expect("start");
    let room = new_room(&veil);
    let (_, grant, ws_path) = request_grant(&participant(&veil, &room, "Silent"))
        .await
        .expect("grant");
    // Joined, but never offers: no ICE, no DTLS.
    let mut ws = open_socket(&veil.base_url(), &ws_path, Some(&grant))
        .await
        .expect("joined")
        .ws;
    assert_eq!(veil.sfu.stats().sessions, 1);
    let closed = within("the session to time out", secs(10), async {
        while let Some(Ok(frame)) = ws.next().await {
            if let Ok(text) = frame.to_text()
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
                && v["type"] == "closed"
            {
                return v["reason"].as_str().map(str::to_string);
            }
        }
        None
    })
    .await;
    assert_eq!(closed.as_deref(), Some("timeout"));
    wait_until("nothing left", secs(5), || {
        let s = veil.sfu.stats();
        (s.sessions, s.rooms, s.mux_connections) == (0, 0, 0)
    })
    .await;
    veil.stop().await.expect("stop");
}
