//! The WebSocket protocol end to end: presence, the opaque E2EE relay confined to one
//! room, and bad input (invalid JSON, unknown types, oversized blobs, floods) answered
//! with typed errors while the connection and the room stay healthy.

mod common;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use veil_bench::participant::Participant;
use veil_signaling::message::MediaState;

use common::ws::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_e2ee_relay_stay_in_the_room() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let elsewhere = new_room(&veil);
    let ann = Participant::join(participant(&veil, &room, "Ann"))
        .await
        .expect("join");
    let bo = Participant::join(participant(&veil, &room, "Bo"))
        .await
        .expect("join");
    assert_eq!(
        bo.peers().get(&ann.id).map(|p| p.display_name.as_str()),
        Some("Ann")
    );
    wait_until("Ann hears Bo joined", secs(5), || {
        ann.peers()
            .get(&bo.id)
            .is_some_and(|p| p.display_name == "Bo")
    })
    .await;

    ann.send_e2ee(Some(&bo.id), "b3BhcXVlLWtleS1tZXNzYWdl");
    bo.send_e2ee(None, "dG8tZXZlcnlvbmU");
    wait_until("blobs relayed as sent", secs(5), || {
        bo.e2ee_received() == vec![(ann.id.clone(), "b3BhcXVlLWtleS1tZXNzYWdl".into())]
            && ann.e2ee_received() == vec![(bo.id.clone(), "dG8tZXZlcnlvbmU".into())]
    })
    .await;

    // Someone in another room cannot address Bo, nor reach Ann by broadcast.
    let (mut outsider, _) = raw_member(&veil, &elsewhere, "Eve").await;
    send_text(
        &mut outsider,
        json!({"type": "e2ee", "to": bo.id, "blob": "aW5qZWN0"}).to_string(),
    )
    .await;
    let err = next_of(&mut outsider, "error").await;
    assert_eq!(err["code"], "unknown_participant");
    send_text(
        &mut outsider,
        json!({"type": "e2ee", "blob": "aW5qZWN0"}).to_string(),
    )
    .await;
    // An oversized blob is refused.
    send_text(
        &mut outsider,
        json!({"type": "e2ee", "blob": "A".repeat(17 * 1024)}).to_string(),
    )
    .await;
    let err = next_of(&mut outsider, "error").await;
    assert_eq!(err["code"], "blob_too_large");

    let muted = MediaState {
        audio_muted: true,
        hand_raised: true,
        ..MediaState::default()
    };
    ann.set_state(muted);
    wait_until("Bo sees Ann muted", secs(5), || {
        bo.peers().get(&ann.id).is_some_and(|p| p.state == muted)
    })
    .await;
    assert_eq!(
        bo.e2ee_received().len(),
        1,
        "outsider's blobs reached the room"
    );
    assert_eq!(ann.e2ee_received().len(), 1);

    let bo_id = bo.id.clone();
    bo.leave().await;
    wait_until("Ann hears Bo left", secs(5), || {
        !ann.peers().contains_key(&bo_id)
    })
    .await;
    ann.leave().await;
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_typed_errors_and_the_room_stays_healthy() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let ann = Participant::join(participant(&veil, &room, "Ann"))
        .await
        .expect("join");
    let bo = Participant::join(participant(&veil, &room, "Bo"))
        .await
        .expect("join");
    wait_until("media flows", secs(15), || {
        receives_av_from(&ann, &bo.id, 20) && receives_av_from(&bo, &ann.id, 20)
    })
    .await;

    let (mut ws, _) = raw_member(&veil, &room, "Mallory").await;
    for (input, code) in [
        ("{not json".to_string(), "malformed_message"),
        (json!({"type": "explode"}).to_string(), "malformed_message"),
        (json!({"type": "offer"}).to_string(), "malformed_message"),
        (
            json!({"type": "join", "grant": "v1.a.b"}).to_string(),
            "already_joined",
        ),
        (
            json!({"type": "set_max_layer", "track": "nope", "layer": "q"}).to_string(),
            "unknown_track",
        ),
    ] {
        send_text(&mut ws, input.clone()).await;
        let err = next_of(&mut ws, "error").await;
        assert_eq!(err["code"], code, "for {input}");
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(next_of(&mut ws, "error").await["code"], "malformed_message");

    // A flood: far past the burst, answered with one rate_limited reply, then silence.
    for _ in 0..400 {
        send_text(&mut ws, json!({"type": "state", "state": {}}).to_string()).await;
    }
    assert_eq!(next_of(&mut ws, "error").await["code"], "rate_limited");
    let text = veil.metrics.render();
    assert!(text.contains(r#"veil_errors_total{reason="rate_limited"}"#));
    assert!(text.contains(r#"veil_errors_total{reason="malformed_message"} 4"#));

    // The flooding connection is still usable once it slows down.
    tokio::time::sleep(secs(2)).await;
    send_text(&mut ws, "{not json".to_string()).await;
    assert_eq!(next_of(&mut ws, "error").await["code"], "malformed_message");

    // And the room kept flowing throughout.
    let before = packets_from(&bo, &ann.id);
    wait_until("media still flows", secs(5), || {
        packets_from(&bo, &ann.id) > before + 50
    })
    .await;
    assert!(ann.errors().is_empty() && bo.errors().is_empty());

    // An oversized message gets a typed error; the connection stays usable.
    send_text(
        &mut ws,
        "x".repeat(veil_signaling::message::MAX_MESSAGE_BYTES + 1024),
    )
    .await;
    assert_eq!(next_of(&mut ws, "error").await["code"], "message_too_large");
    send_text(&mut ws, "{not json".to_string()).await;
    assert_eq!(next_of(&mut ws, "error").await["code"], "malformed_message");

    // A frame past the WebSocket layer's cap ends only that connection.
    let _ = ws
        .send(Message::Text(
            "x".repeat(veil_signaling::message::MAX_FRAME_BYTES + 1024)
                .into(),
        ))
        .await;
    let ended = within("oversized frame closes the socket", secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended);
    let before = packets_from(&bo, &ann.id);
    wait_until("media still flows", secs(5), || {
        packets_from(&bo, &ann.id) > before + 50
    })
    .await;
    ann.leave().await;
    bo.leave().await;
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_as_the_same_participant_without_a_leave() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let ann = Participant::join(participant(&veil, &room, "Ann"))
        .await
        .expect("join");
    let bo = Participant::join(participant(&veil, &room, "Bo"))
        .await
        .expect("join");
    wait_until("media flows", secs(15), || {
        receives_av_from(&ann, &bo.id, 20) && receives_av_from(&bo, &ann.id, 20)
    })
    .await;

    bo.drop_connection();
    wait_until("Bo resumed", secs(10), || bo.resumes() == 1).await;
    assert!(bo.peers().contains_key(&ann.id));
    // Same identity: blobs addressed to Bo's id reach the resumed socket, and Bo's
    // own messages still come from Bo.
    ann.send_e2ee(Some(&bo.id), "YWZ0ZXItcmVzdW1l");
    bo.send_e2ee(Some(&ann.id), "ZnJvbS1ibw");
    wait_until("blobs both ways after the resume", secs(5), || {
        bo.e2ee_received() == vec![(ann.id.clone(), "YWZ0ZXItcmVzdW1l".to_string())]
            && ann.e2ee_received() == vec![(bo.id.clone(), "ZnJvbS1ibw".to_string())]
    })
    .await;
    // Media kept flowing both ways through the drop.
    let before = (packets_from(&ann, &bo.id), packets_from(&bo, &ann.id));
    wait_until("media still flows", secs(5), || {
        packets_from(&ann, &bo.id) > before.0 + 50 && packets_from(&bo, &ann.id) > before.1 + 50
    })
    .await;
    assert!(
        ann.presence_log().iter().all(|e| !e.starts_with("left:")),
        "Ann saw a leave: {:?}",
        ann.presence_log()
    );
    assert_eq!(veil.sfu.stats().sessions, 2);

    // A token that is not parked resumes nothing.
    match veil_bench::participant::resume_socket(&veil.base_url(), "bogus-token").await {
        Err(veil_bench::participant::ParticipantError::Refused { code, .. }) => {
            assert_eq!(code, "resume_expired")
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("resumed with a bogus token"),
    }
    ann.leave().await;
    bo.leave().await;
    wait_until("both gone", secs(5), || veil.sfu.stats().sessions == 0).await;
    assert!(veil.signaling.resumes.is_empty());
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_removes_a_participant_and_ends_the_meeting() {
    let veil = start_veil().await;
    let outbox = veil.accounts.outbox().expect("outbox");
    let cookie = host_cookie(&veil.base_url(), &outbox, "host@example.org").await;
    let created: Value = reqwest::Client::new()
        .post(format!("{}/api/rooms", veil.base_url()))
        .header("cookie", cookie)
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let room = created["room"].as_str().expect("room").to_string();
    let host_key = created["host_key"].as_str().expect("host key").to_string();
    let mut wrong = participant(&veil, &room, "Mallory");
    wrong.host_key = Some("not-the-key".into());
    match Participant::join(wrong).await {
        Err(veil_bench::participant::ParticipantError::Refused { code, .. }) => {
            assert_eq!(code, "not_host")
        }
        _ => panic!("a wrong host key was accepted"),
    }
    let mut host = participant(&veil, &room, "Host");
    host.host_key = Some(host_key);
    let host = Participant::join(host).await.expect("join");
    let ann = Participant::join(participant(&veil, &room, "Ann"))
        .await
        .expect("join");
    let bo = Participant::join(participant(&veil, &room, "Bo"))
        .await
        .expect("join");
    wait_until("all present", secs(5), || {
        host.peers().len() == 2 && ann.peers().len() == 2
    })
    .await;

    // Not the host: refused, nothing happens.
    ann.remove(&bo.id);
    ann.end_meeting();
    wait_until("two refusals", secs(5), || {
        ann.errors().iter().filter(|c| *c == "not_host").count() == 2
    })
    .await;
    assert!(bo.closed().is_none());

    host.remove(&bo.id);
    wait_until("Bo removed", secs(5), || {
        bo.closed().as_deref() == Some("Removed")
            && ann.presence_log().contains(&format!("left:{}", bo.id))
    })
    .await;
    wait_until("Bo's media session closed", secs(5), || {
        veil.sfu.stats().sessions == 2
    })
    .await;

    host.end_meeting();
    wait_until("everyone closed", secs(5), || {
        ann.closed().as_deref() == Some("MeetingEnded")
            && host.closed().as_deref() == Some("MeetingEnded")
    })
    .await;
    wait_until("no sessions left", secs(5), || {
        veil.sfu.stats().sessions == 0
    })
    .await;
    match Participant::join(participant(&veil, &room, "Late")).await {
        Err(veil_bench::participant::ParticipantError::Refused { code, .. }) => {
            assert_eq!(code, "not_found")
        }
        _ => panic!("joined an ended meeting"),
    }
    veil.stop().await.expect("stop");
}

/// `rejoin` while the media session is up replaces it (what a page does when its peer
/// connection never connects or fails): a new session, the same participant, and no leave
/// seen by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_replaces_a_live_media_session_without_a_leave() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let (mut ann, ann_id) = raw_member(&veil, &room, "Ann").await;
    let (mut bo, _) = raw_member(&veil, &room, "Bo").await;
    next_of(&mut ann, "participant_joined").await;
    assert_eq!(veil.sfu.stats().sessions, 2);
    let started = veil.metrics.sessions_started.get();

    send_text(&mut ann, json!({"type": "rejoin"}).to_string()).await;
    let joined = next_of(&mut ann, "joined").await;
    assert_eq!(joined["participant"], ann_id.as_str());
    // A new session was admitted and the old one closed: still two.
    assert_eq!(veil.metrics.sessions_started.get(), started + 1);
    wait_until("the old session is closed", secs(5), || {
        veil.sfu.stats().sessions == 2
    })
    .await;
    assert_eq!(veil.signaling.rooms.peers(&room, "nobody").len(), 2);

    // Bo hears Ann's state change, and no leave came before it.
    let state = json!({"type": "state", "state": {"audio_muted": true}}).to_string();
    send_text(&mut ann, state).await;
    let heard = within("Bo hears Ann", secs(5), async {
        loop {
            let frame = bo.next().await.expect("open").expect("frame");
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                assert_ne!(v["type"], "participant_left", "Bo saw Ann leave: {v}");
                if v["type"] == "participant_state" {
                    return v;
                }
            }
        }
    })
    .await;
    assert_eq!(heard["participant"], ann_id.as_str());
    veil.stop().await.expect("stop");
}
