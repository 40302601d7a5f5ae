//! Abuse: connection floods, clients that never read, huge messages, expired grants,
//! password guessing and sign-up floods are each answered with the documented limit
//! (docs/security.md, "Abuse"), while a well-behaved pair of members in the same Veil
//! keeps getting answers.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use veil_bench::participant::{open_socket, request_grant};
use veil_sfu::grant::Grant;

use common::ws::*;
use common::*;

/// Two joined members: the well-behaved client whose round trips must keep working.
struct Pair {
    a: Ws,
    b: Ws,
    a_id: String,
    raised: bool,
}

impl Pair {
    async fn join(veil: &veil::Running, room: &str) -> Pair {
        let (a, a_id) = raw_member(veil, room, "Ann").await;
        let (b, _) = raw_member(veil, room, "Bo").await;
        Pair {
            a,
            b,
            a_id,
            raised: false,
        }
    }

    /// Ann changes her state and Bo hears it: one round trip through signaling.
    async fn round_trip(&mut self, what: &str) {
        self.raised = !self.raised;
        let msg = json!({"type": "state", "state": {"audio_muted": false,
            "video_muted": false, "screen_sharing": false, "hand_raised": self.raised}});
        send_text(&mut self.a, msg.to_string()).await;
        let seen = next_of(&mut self.b, "participant_state").await;
        assert_eq!(seen["participant"], self.a_id.as_str(), "{what}");
        assert_eq!(seen["state"]["hand_raised"], self.raised, "{what}");
    }
}

fn ws_url(veil: &veil::Running) -> String {
    format!("{}/ws", veil.base_url().replacen("http://", "ws://", 1))
}

/// The count of `veil_errors_total` for `reason`.
fn errors(veil: &veil::Running, reason: &str) -> u64 {
    let prefix = format!("veil_errors_total{{reason=\"{reason}\"}} ");
    veil.metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The next error code on `ws`, or `None` when it closes first.
async fn next_error_or_close(ws: &mut Ws) -> Option<String> {
    within("an error or a close", secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json");
                    if v["type"] == "error" {
                        return v["code"].as_str().map(str::to_string);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
}

/// True once `ws` is closed by the server (after any messages still queued).
async fn closes(ws: &mut Ws) -> bool {
    within("the socket to close", secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
}

const FLOOD: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_that_never_join_are_closed_after_the_join_timeout() {
    let mut config = test_config();
    config.signaling.join_timeout_secs = 2;
    // The join timeout alone; the per-address cap has a test of its own.
    config.signaling.max_sockets_per_address = 0;
    let veil = veil::start(&config).await.expect("start veil");
    let room = new_room(&veil);
    let mut pair = Pair::join(&veil, &room).await;

    // A flood of sockets opened and held without a word.
    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(&veil).as_str())
            .await
            .expect("connect");
        idle.push(ws);
    }
    pair.round_trip("while the idle sockets are open").await;

    // Each is told why and closed; the joined members are not.
    for ws in &mut idle {
        assert_eq!(
            next_error_or_close(ws).await.as_deref(),
            Some("join_timeout")
        );
        assert!(closes(ws).await);
    }
    assert_eq!(errors(&veil, "join_timeout"), FLOOD as u64);
    pair.round_trip("after the idle sockets were closed").await;
    wait_until("the idle connections to be gone", secs(10), || {
        veil.metrics.render().contains("veil_ws_connections 2\n")
    })
    .await;
    veil.stop().await.expect("stop");
}

/// A WebSocket opened from `from` (any 127.0.0.0/8 address is this machine).
async fn socket_from(
    veil: &veil::Running,
    from: Ipv4Addr,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    tokio_tungstenite::tungstenite::Error,
> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind");
    let stream = socket.connect(veil.http_addr).await.expect("connect");
    tokio_tungstenite::client_async(ws_url(veil).as_str(), stream)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_no_more_sockets_than_its_cap() {
    const CAP: usize = 20;
    let mut config = test_config();
    config.signaling.max_sockets_per_address = CAP;
    let veil = veil::start(&config).await.expect("start veil");
    let room = new_room(&veil);
    let mut pair = Pair::join(&veil, &room).await;
    let attacker = Ipv4Addr::new(127, 0, 0, 66);

    let mut held = Vec::with_capacity(CAP);
    for _ in 0..CAP {
        held.push(socket_from(&veil, attacker).await.expect("within the cap"));
    }
    // One more is refused before the upgrade, with the API's typed error.
    match socket_from(&veil, attacker).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("json error");
            assert_eq!(body["error"], "too_many_connections");
        }
        other => panic!("expected 429, got {:?}", other.map(|_| "a socket")),
    }
    assert_eq!(errors(&veil, "too_many_connections"), 1);
    // Everyone else is unaffected: the pair (another address) keeps its round trips
    // and a newcomer from yet another address joins.
    pair.round_trip("while one address holds its cap").await;
    let mut newcomer = socket_from(&veil, Ipv4Addr::new(127, 0, 0, 67))
        .await
        .expect("another address");
    let (participant, grant, _) = request_grant(&participant(&veil, &room, "Cy"))
        .await
        .expect("grant");
    newcomer
        .send(Message::text(
            json!({"type": "join", "grant": grant}).to_string(),
        ))
        .await
        .expect("send join");
    let joined = within("the newcomer joins", secs(10), async {
        loop {
            if let Some(Ok(Message::Text(t))) = newcomer.next().await {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["type"] == "joined" {
                    return v;
                }
            }
        }
    })
    .await;
    assert_eq!(joined["participant"], participant.as_str());
    // A socket closed gives its place back.
    drop(held.pop());
    wait_until("the closed socket's place to be free", secs(10), || {
        veil.signaling.sockets.open_from(IpAddr::V4(attacker)) == CAP - 1
    })
    .await;
    held.push(socket_from(&veil, attacker).await.expect("a place again"));
    drop(held);
    wait_until("the address to be forgotten", secs(10), || {
        veil.signaling.sockets.open_from(IpAddr::V4(attacker)) == 0
    })
    .await;
    veil.stop().await.expect("stop");
}

/// A member joins and never reads again; eight others send it `per_sender` blobs of
/// the largest size each (within their message burst). It must be let go, counted as
/// `slow_client`, while the pair keeps its round trips.
async fn stalled_member_is_let_go(per_sender: usize) {
    let mut config = test_config();
    // Raw members never connect media: keep their sessions past the send timeout.
    config.sfu.connect_timeout = secs(60);
    let veil = veil::start(&config).await.expect("start veil");
    let room = new_room(&veil);
    let mut pair = Pair::join(&veil, &room).await;
    // Joined, then never reads another frame.
    let (_stalled, stalled_id) = raw_member(&veil, &room, "Stall").await;
    let _ = next_of(&mut pair.a, "participant_joined").await;

    let blob = "A".repeat(veil_signaling::message::MAX_BLOB_BYTES);
    let msg = json!({"type": "e2ee", "to": stalled_id, "blob": blob}).to_string();
    let mut senders = Vec::new();
    for n in 0..8 {
        let (ws, _) = raw_member(&veil, &room, &format!("Sender{n}")).await;
        senders.push(ws);
    }
    for ws in &mut senders {
        for _ in 0..per_sender {
            send_text(ws, msg.clone()).await;
        }
    }
    pair.round_trip("while a member is not reading").await;

    // The stalled member is let go and the room hears it left.
    within("the stalled member to be let go", secs(30), async {
        loop {
            let left = next_of_within(&mut pair.a, "participant_left", secs(30)).await;
            if left["participant"] == stalled_id.as_str() {
                break;
            }
        }
    })
    .await;
    assert!(errors(&veil, "slow_client") >= 1);
    pair.round_trip("after the stalled member was let go").await;
    veil.stop().await.expect("stop");
}

/// More than its queue holds: let go as soon as the queue is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_queue_fills_is_disconnected_instead_of_buffered() {
    const { assert!(8 * 150 > veil_signaling::room::ROOM_QUEUE) };
    stalled_member_is_let_go(150).await;
}

/// Less than its queue holds but more than its socket takes: let go when a frame has
/// waited `SEND_TIMEOUT` for the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_socket_stops_taking_frames_is_disconnected() {
    const { assert!(8 * 100 < veil_signaling::room::ROOM_QUEUE) };
    stalled_member_is_let_go(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_messages_get_a_typed_error_or_a_close_and_others_are_unaffected() {
    use veil_signaling::message::{MAX_FRAME_BYTES, MAX_MESSAGE_BYTES};
    let veil = start_veil().await;
    let room = new_room(&veil);
    let mut pair = Pair::join(&veil, &room).await;
    let (mut big, _) = raw_member(&veil, &room, "Big").await;

    // Over the message limit, within the frame limit: a typed error, still connected.
    send_text(&mut big, "x".repeat(MAX_MESSAGE_BYTES + 1)).await;
    assert_eq!(
        next_error_or_close(&mut big).await.as_deref(),
        Some("message_too_large")
    );
    pair.round_trip("after an oversized message").await;
    send_text(&mut big, r#"{"type":"nonsense"}"#.into()).await;
    assert_eq!(
        next_error_or_close(&mut big).await.as_deref(),
        Some("malformed_message")
    );

    // Over the frame limit: the connection is closed.
    let _ = futures::SinkExt::send(
        &mut big,
        Message::Text("x".repeat(MAX_FRAME_BYTES + 1).into()),
    )
    .await;
    assert!(closes(&mut big).await);
    pair.round_trip("after an oversized frame").await;
    assert!(errors(&veil, "message_too_large") >= 2);
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_replayed_after_expiry_is_refused_with_grant_expired() {
    let mut config = test_config();
    config.signaling.grant_ttl_secs = 1;
    let veil = veil::start(&config).await.expect("start veil");
    let room = new_room(&veil);

    // A real grant, used after its lifetime.
    let mut cfg = participant(&veil, &room, "Late");
    cfg.audio = false;
    cfg.video = None;
    let (_, grant, ws_path) = request_grant(&cfg).await.expect("grant");
    tokio::time::sleep(secs(2)).await;
    let refused = open_socket(&veil.base_url(), &ws_path, Some(&grant)).await;
    let err = refused.err().expect("an expired grant is refused");
    assert!(err.to_string().contains("grant_expired"), "{err}");

    // A signed grant whose expiry has passed, on a raw socket: the typed error, then a close.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&veil).as_str())
        .await
        .expect("connect");
    let token = veil.signaling.signer.sign(&Grant {
        room: room.clone(),
        participant: "replayed".into(),
        can_publish: true,
        can_subscribe: true,
        expires: veil_sfu::unix_now() - 1,
    });
    send_text(&mut ws, json!({"type": "join", "grant": token}).to_string()).await;
    assert_eq!(
        next_error_or_close(&mut ws).await.as_deref(),
        Some("grant_expired")
    );
    assert!(closes(&mut ws).await);
    assert!(errors(&veil, "grant_expired") >= 1);
    veil.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_presented_twice_admits_once() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let mut pair = Pair::join(&veil, &room).await;
    let mut cfg = participant(&veil, &room, "Cy");
    cfg.audio = false;
    cfg.video = None;
    let (cy, grant, ws_path) = request_grant(&cfg).await.expect("grant");
    let first = open_socket(&veil.base_url(), &ws_path, Some(&grant))
        .await
        .expect("the first presentation joins");
    assert_eq!(first.participant, cy);
    let _ = next_of(&mut pair.a, "participant_joined").await;

    // The same grant again, within its lifetime, on another socket.
    let (mut replay, _) = tokio_tungstenite::connect_async(ws_url(&veil).as_str())
        .await
        .expect("connect");
    send_text(
        &mut replay,
        json!({"type": "join", "grant": grant}).to_string(),
    )
    .await;
    assert_eq!(
        next_error_or_close(&mut replay).await.as_deref(),
        Some("grant_used")
    );
    assert!(closes(&mut replay).await);
    assert_eq!(errors(&veil, "grant_used"), 1);
    // The participant it names is untouched: still present, still reached.
    let mut first = first.ws;
    pair.round_trip("after the replay").await;
    let msg = json!({"type": "e2ee", "to": cy, "blob": "still-here"});
    send_text(&mut pair.a, msg.to_string()).await;
    let relayed = next_of(&mut first, "e2ee").await;
    assert_eq!(relayed["blob"], "still-here");
    veil.stop().await.expect("stop");
}

/// Sign-ups through a proxy at 127.0.0.1 that reports each client in `X-Forwarded-For`;
/// the statuses, in order.
async fn sign_ups_via_proxy(veil: &veil::Running, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let res = reqwest::Client::new()
            .post(format!("{}/api/accounts", veil.base_url()))
            .header("x-forwarded-for", format!("203.0.113.{}", i + 1))
            .json(&json!({"email": format!("proxied{i}@example.org"), "display_name": "P",
                "password": "a long enough passphrase", "age_confirmed": true, "accept_policy": true}))
            .send()
            .await
            .expect("sign up");
        statuses.push(res.status().as_u16());
    }
    statuses
}

/// A WebSocket through the proxy for the client `client`.
async fn socket_via_proxy(veil: &veil::Running, client: &str) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = ws_url(veil).into_client_request().expect("request");
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_limits_count_clients_not_the_proxy() {
    // Trusted: each client its own budget (the limit is 5 sign-ups per address).
    let mut config = test_config();
    config.signaling.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    config.signaling.max_sockets_per_address = 2;
    let veil = veil::start(&config).await.expect("start veil");
    assert!(sign_ups_via_proxy(&veil, 8).await.iter().all(|s| *s == 201));
    let _a1 = socket_via_proxy(&veil, "203.0.113.50").await.expect("a1");
    let _a2 = socket_via_proxy(&veil, "203.0.113.50").await.expect("a2");
    assert_eq!(
        socket_via_proxy(&veil, "203.0.113.50").await.err(),
        Some(429)
    );
    let _b = socket_via_proxy(&veil, "203.0.113.51")
        .await
        .expect("another client");
    veil.stop().await.expect("stop");

    // Not trusted: the header is anyone's to write, so it is ignored.
    let mut config = test_config();
    config.signaling.max_sockets_per_address = 2;
    let veil = veil::start(&config).await.expect("start veil");
    let statuses = sign_ups_via_proxy(&veil, 6).await;
    assert_eq!(statuses[..5], [201; 5]);
    assert_eq!(statuses[5], 429, "{statuses:?}");
    let _a1 = socket_via_proxy(&veil, "203.0.113.50").await.expect("a1");
    let _a2 = socket_via_proxy(&veil, "203.0.113.51").await.expect("a2");
    assert_eq!(
        socket_via_proxy(&veil, "203.0.113.52").await.err(),
        Some(429)
    );
    veil.stop().await.expect("stop");
}

/// An HTTP client whose requests come from `127.0.0.n`.
fn client_from(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
        .build()
        .expect("client")
}

async fn log_in(client: &reqwest::Client, base: &str, email: &str, password: &str) -> StatusCode {
    let r = client
        .post(format!("{base}/api/session"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("log in");
    let status = r.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry: u64 = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After in seconds");
        assert!(retry >= 1);
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_and_sign_up_floods_get_429_while_others_log_in() {
    use veil_accounts::ratelimit::Action;
    let config = test_config();
    let veil = veil::start(&config).await.expect("start veil");
    let base = veil.base_url();
    // A real account that must keep working (signed up and logged in from 127.0.0.1).
    let _ = host_cookie(&base, &config.accounts.mail.outbox_dir, "ok@example.org").await;
    let password = "a long enough passphrase";

    // One address guessing many people's passwords: cut off after its burst.
    let (per_address, per_email) = Action::LogIn.budgets();
    let guesser = client_from(2);
    for n in 0..per_address.burst {
        let email = format!("person{n}@example.org");
        let status = log_in(&guesser, &base, &email, "guess guess guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {n}");
    }
    let status = log_in(&guesser, &base, "person-x@example.org", "guess guess guess").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Many addresses guessing one person's password: cut off after the e-mail's burst.
    for n in 0..per_email.burst {
        let status = log_in(
            &client_from(10 + n as u8),
            &base,
            "victim@example.org",
            "guess guess guess",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {n}");
    }
    let status = log_in(
        &client_from(60),
        &base,
        "victim@example.org",
        "guess guess guess",
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Another account still logs in meanwhile, from an address of its own.
    let status = log_in(&client_from(61), &base, "ok@example.org", password).await;
    assert_eq!(status, StatusCode::OK);

    // A sign-up flood from one address.
    let (per_address, _) = Action::SignUp.budgets();
    let flooder = client_from(3);
    let mut statuses = Vec::new();
    for n in 0..=per_address.burst {
        let r = flooder
            .post(format!("{base}/api/accounts"))
            .json(
                &json!({"email": format!("flood{n}@example.org"), "display_name": "F",
                "password": password, "age_confirmed": true, "accept_policy": true}),
            )
            .send()
            .await
            .expect("sign up");
        statuses.push(r.status());
    }
    let (last, first) = statuses.split_last().expect("attempts");
    assert!(first.iter().all(StatusCode::is_success), "{statuses:?}");
    assert_eq!(*last, StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    veil.stop().await.expect("stop");
}
