//! One browser's WebSocket: the join handshake, then relaying typed messages between
//! the client and its media session until either side ends it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;
use veil_accounts::http::ClientIp;
use veil_metrics::ConnectionRecord;
use veil_sfu::grant::Grant;
use veil_sfu::{CloseReason, SessionId, SessionRequest, SfuSignal, unix_now};

use crate::Signaling;
use crate::message::{
    ClientMessage, MAX_BLOB_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, ServerMessage,
};
use crate::quota::{MessageQuota, Verdict};
use crate::room::{ROOM_QUEUE, RoomError};

/// `GET /ws`
pub async fn upgrade(
    State(state): State<Arc<Signaling>>,
    ClientIp(ip): ClientIp,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = state.sockets.try_open(ip) else {
        state.metrics.error("too_many_connections");
        let refusal = crate::api::ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "this address has too many connections open; close some and try again",
        );
        let mut response = refusal.into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("10"),
        );
        return response;
    };
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            run(socket, state).await;
            drop(permit);
        })
}

pub struct Joined {
    room: String,
    participant: String,
    /// Lets a new socket carry on as this participant after this one drops.
    resume: String,
    /// The media session and its events; `None` after its SFU node was lost, until
    /// the client asks to `rejoin`.
    media: Option<(SessionId, mpsc::Receiver<SfuSignal>)>,
}

impl Joined {
    fn session(&self) -> Option<SessionId> {
        self.media.as_ref().map(|(s, _)| *s)
    }
}

/// How long a dropped connection's participant stays (present, media session kept)
/// waiting for a `resume`.
pub const RESUME_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// Participants whose socket dropped, by resume token, until they resume or the
/// window closes.
#[derive(Default)]
pub struct Resumes {
    parked: std::sync::Mutex<std::collections::HashMap<String, Joined>>,
}

impl Resumes {
    fn parked(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Joined>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, token: &str) -> Option<Joined> {
        self.parked().remove(token)
    }

    pub fn len(&self) -> usize {
        self.parked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked().is_empty()
    }
}

fn new_resume_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// Keeps a dropped participant for [`RESUME_WINDOW`], then lets it go.
fn park(state: &Arc<Signaling>, joined: Joined) {
    let token = joined.resume.clone();
    state.resumes.parked().insert(token.clone(), joined);
    let state = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(RESUME_WINDOW).await;
        if let Some(j) = state.resumes.take(&token) {
            end(&state, j).await;
        }
    });
}

/// The participant is gone for good: its media session closes, the others hear it left.
async fn end(state: &Signaling, j: Joined) {
    if let Some(media) = j.media {
        close_media(state, &j.room, &j.participant, media).await;
    }
    state.rooms.leave(&j.room, &j.participant);
}

/// Closes one media session and keeps its metadata record, which follows the close
/// (bounded wait: a lost node sends nothing).
async fn close_media(
    state: &Signaling,
    room: &str,
    participant: &str,
    (session, mut events): (SessionId, mpsc::Receiver<SfuSignal>),
) {
    state.sfu.close_session(session).await;
    let record = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(event) = events.recv().await {
            if let SfuSignal::Closed { record, .. } = event {
                return record;
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    keep_usage(state, room, participant, record);
}

/// Adds an ended session's metadata record to the participant's account, if logged in.
fn keep_usage(state: &Signaling, room: &str, participant: &str, record: Option<ConnectionRecord>) {
    let (Some(record), Some(account)) = (record, state.rooms.account_of(room, participant)) else {
        return;
    };
    let accounts = state.accounts.clone();
    tokio::spawn(async move {
        if let Err(e) = accounts.record_usage(&account, &record).await {
            tracing::warn!(error = %e, "usage record not stored");
        }
    });
}

/// How long one frame may wait for the client's socket to take it. A client that
/// reads nothing for this long is disconnected (`slow_client`) instead of having its
/// messages buffered without bound.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do after handling one client message.
enum Next {
    Continue,
    Close,
}

async fn run(socket: WebSocket, state: Arc<Signaling>) {
    state.metrics.ws_connections.inc();
    let (mut sink, mut stream) = socket.split();
    let mut joined: Option<Joined> = None;
    let mut closed_by_sfu = false;
    // Only a socket that broke (no close frame, no `leave`) may be resumed.
    let mut dropped = false;
    let mut quota = MessageQuota::new(std::time::Instant::now());
    // Presence and E2EE messages from the room for this participant.
    let (room_tx, mut room_rx) = mpsc::channel::<ServerMessage>(ROOM_QUEUE);
    let join_deadline =
        tokio::time::Instant::now() + Duration::from_secs(state.config.join_timeout_secs);
    loop {
        if room_tx.capacity() == 0 {
            // The room's messages for this client piled up: it is not reading.
            state.metrics.error("slow_client");
            break;
        }
        let waiting_for_join = joined.is_none();
        let join_timeout = async move {
            if !waiting_for_join {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep_until(join_deadline).await;
        };
        let next_event = async {
            match joined.as_mut().and_then(|j| j.media.as_mut()) {
                Some((_, events)) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            incoming = stream.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        state.metrics.error("malformed_message");
                        let msg = ServerMessage::error("malformed_message", "messages are JSON text frames");
                        if send(&mut sink, &state, &msg).await.is_err() { break; }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) => break,
                    None => {
                        dropped = true;
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        dropped = true;
                        // Oversized frames end the connection inside the WebSocket layer.
                        let reason = if e.to_string().contains("too long") || e.to_string().contains("size") {
                            "message_too_large"
                        } else {
                            "malformed_message"
                        };
                        state.metrics.error(reason);
                        break;
                    }
                };
                match quota.check(std::time::Instant::now()) {
                    Verdict::Allow => {}
                    Verdict::Refuse => {
                        state.metrics.error("rate_limited");
                        continue;
                    }
                    Verdict::RefuseAndReply => {
                        state.metrics.error("rate_limited");
                        let msg = ServerMessage::error("rate_limited", "too many messages; slow down");
                        if send(&mut sink, &state, &msg).await.is_err() { break; }
                        continue;
                    }
                }
                if text.len() > MAX_MESSAGE_BYTES {
                    state.metrics.error("message_too_large");
                    let msg = ServerMessage::error(
                        "message_too_large",
                        format!("a message is at most {MAX_MESSAGE_BYTES} bytes"),
                    );
                    if send(&mut sink, &state, &msg).await.is_err() { break; }
                    continue;
                }
                match handle(&state, &mut sink, &mut joined, &room_tx, text.as_str()).await {
                    Ok(Next::Continue) => {}
                    Ok(Next::Close) | Err(()) => break,
                }
            }
            () = join_timeout => {
                state.metrics.error("join_timeout");
                let msg = ServerMessage::error(
                    "join_timeout",
                    format!("join within {} s of connecting", state.config.join_timeout_secs),
                );
                let _ = send(&mut sink, &state, &msg).await;
                break;
            }
            Some(msg) = room_rx.recv() => {
                // Removed by the host, or the meeting ended: tell the client and go.
                let ends = matches!(msg, ServerMessage::Closed { .. });
                if send(&mut sink, &state, &msg).await.is_err() || ends {
                    break;
                }
            }
            event = next_event => {
                let Some(event) = event else {
                    closed_by_sfu = true;
                    break;
                };
                if let SfuSignal::Closed { reason: CloseReason::NodeLost, .. } = event {
                    // The node is gone, not the participant: keep the socket and its
                    // presence; the client rebuilds its media and asks to rejoin.
                    if let Some(j) = joined.as_mut() {
                        j.media = None;
                    }
                    let msg = ServerMessage::MediaReset { reason: CloseReason::NodeLost };
                    if send(&mut sink, &state, &msg).await.is_err() {
                        break;
                    }
                    continue;
                }
                let is_closed = matches!(event, SfuSignal::Closed { .. });
                if let (SfuSignal::Closed { record, .. }, Some(j)) = (&event, joined.as_ref()) {
                    keep_usage(&state, &j.room, &j.participant, *record);
                }
                if send(&mut sink, &state, &ServerMessage::from(event)).await.is_err() {
                    break;
                }
                if is_closed {
                    closed_by_sfu = true;
                    break;
                }
            }
        }
    }
    if let Some(mut j) = joined {
        if closed_by_sfu {
            j.media = None;
        }
        if dropped && !closed_by_sfu {
            park(&state, j);
        } else {
            end(&state, j).await;
        }
    }
    // Bounded: a client that reads nothing would otherwise hold this task forever.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
    state.metrics.ws_connections.dec();
}

async fn send<S>(sink: &mut S, state: &Signaling, msg: &ServerMessage) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    let json = serde_json::to_string(msg).map_err(|_| ())?;
    state
        .metrics
        .ws_messages
        .with_label_values(&["out", msg.kind()])
        .inc();
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(json.into()))).await {
        Ok(sent) => sent.map_err(|_| ()),
        Err(_) => {
            state.metrics.error("slow_client");
            Err(())
        }
    }
}

async fn handle<S>(
    state: &Arc<Signaling>,
    sink: &mut S,
    joined: &mut Option<Joined>,
    room_tx: &mpsc::Sender<ServerMessage>,
    text: &str,
) -> Result<Next, ()>
where
    S: SinkExt<Message> + Unpin,
{
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            state
                .metrics
                .ws_messages
                .with_label_values(&["in", "invalid"])
                .inc();
            state.metrics.error("malformed_message");
            // serde's message names the offending field or type, never echoes values
            // beyond the type tag, so it is safe and useful to return.
            let msg =
                ServerMessage::error("malformed_message", format!("not a valid message: {e}"));
            send(sink, state, &msg).await?;
            return Ok(Next::Continue);
        }
    };
    state
        .metrics
        .ws_messages
        .with_label_values(&["in", message.kind()])
        .inc();
    match message {
        ClientMessage::Join { grant, room } => {
            if joined.is_some() {
                return already_joined(state, sink).await;
            }
            // A grant admits once: presented again (replayed, or copied) it would take
            // over the participant's media session. Checked here only to learn whom it
            // names; the SFU verifies it again and answers its other faults as before.
            let named =
                state
                    .signer
                    .verifier()
                    .verify(grant.as_deref(), room.as_deref(), unix_now());
            if let Ok(named) = named
                && state.rooms.use_grant(&named.room, &named.participant)
                    == Err(RoomError::GrantUsed)
            {
                state.metrics.error("grant_used");
                let msg = ServerMessage::error("grant_used", RoomError::GrantUsed.to_string());
                send(sink, state, &msg).await?;
                return Ok(Next::Close);
            }
            match state.sfu.open_session(SessionRequest { room, grant }).await {
                Ok(opened) => {
                    let participants =
                        match state
                            .rooms
                            .attach(&opened.room, &opened.participant, room_tx.clone())
                        {
                            Ok(peers) => peers,
                            Err(_) => {
                                // A valid grant for a room or participant signaling no
                                // longer knows (expired): nothing to join.
                                state.sfu.close_session(opened.session).await;
                                state.metrics.error("not_found");
                                let msg = ServerMessage::error(
                                    "not_found",
                                    "the meeting or participant no longer exists",
                                );
                                send(sink, state, &msg).await?;
                                return Ok(Next::Close);
                            }
                        };
                    let resume = new_resume_token();
                    let reply = ServerMessage::Joined {
                        participant: opened.participant.clone(),
                        room: opened.room.clone(),
                        participants,
                        resume: Some(resume.clone()),
                    };
                    *joined = Some(Joined {
                        room: opened.room,
                        participant: opened.participant,
                        resume,
                        media: Some((opened.session, opened.events)),
                    });
                    send(sink, state, &reply).await?;
                    Ok(Next::Continue)
                }
                Err(e) => {
                    debug!(code = e.code(), "join refused");
                    send(sink, state, &ServerMessage::error(e.code(), e.to_string())).await?;
                    // A refused join ends the connection: the client needs a new grant.
                    Ok(Next::Close)
                }
            }
        }
        ClientMessage::Resume { token } => {
            if joined.is_some() {
                return already_joined(state, sink).await;
            }
            let Some(j) = state.resumes.take(&token) else {
                state.metrics.error("resume_expired");
                let msg = ServerMessage::error(
                    "resume_expired",
                    "nothing to resume: join again with a new grant",
                );
                send(sink, state, &msg).await?;
                return Ok(Next::Close);
            };
            let participants = match state
                .rooms
                .reattach(&j.room, &j.participant, room_tx.clone())
            {
                Ok(peers) => peers,
                Err(_) => {
                    end(state, j).await;
                    state.metrics.error("resume_expired");
                    let msg = ServerMessage::error("resume_expired", "the meeting is over");
                    send(sink, state, &msg).await?;
                    return Ok(Next::Close);
                }
            };
            let reply = ServerMessage::Joined {
                participant: j.participant.clone(),
                room: j.room.clone(),
                participants,
                resume: Some(j.resume.clone()),
            };
            *joined = Some(j);
            send(sink, state, &reply).await?;
            Ok(Next::Continue)
        }
        ClientMessage::Remove { participant } => {
            let Some(j) = joined.as_ref() else {
                return not_joined(state, sink).await;
            };
            if let Err(e) = state.rooms.remove(&j.room, &j.participant, &participant) {
                host_refusal(state, sink, e).await?;
            }
            Ok(Next::Continue)
        }
        ClientMessage::EndMeeting {} => {
            let Some(j) = joined.as_ref() else {
                return not_joined(state, sink).await;
            };
            let ended = match state.rooms.check_host(&j.room, &j.participant) {
                Ok(()) => {
                    // Forgotten in the database first, so that a join arriving meanwhile
                    // cannot bring the room back from there. Should this fail, the stored
                    // room still expires with its TTL.
                    if let Err(e) = state.accounts.forget_hosted_room(&j.room).await {
                        tracing::warn!(error = e.code(), "could not forget an ended meeting");
                    }
                    state.rooms.end_meeting(&j.room, &j.participant)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = ended {
                host_refusal(state, sink, e).await?;
            }
            // The host's own connection hears `closed` through its room channel too.
            Ok(Next::Continue)
        }
        ClientMessage::Leave {} => {
            match joined.as_ref().and_then(Joined::session) {
                // The session answers with Closed, which ends the loop.
                Some(session) => state.sfu.close_session(session).await,
                None => return Ok(Next::Close),
            }
            Ok(Next::Continue)
        }
        ClientMessage::Rejoin {} => {
            let Some(j) = joined.as_mut() else {
                return not_joined(state, sink).await;
            };
            // A client whose peer connection never came up (or failed) starts over with
            // a new media session; presence stays, so the others see no leave.
            if let Some(media) = j.media.take() {
                close_media(state, &j.room, &j.participant, media).await;
            }
            // Signaling vouches for the participant it already admitted.
            let grant = state.signer.sign(&Grant {
                room: j.room.clone(),
                participant: j.participant.clone(),
                can_publish: true,
                can_subscribe: true,
                expires: veil_sfu::unix_now() + state.config.grant_ttl_secs,
            });
            let request = SessionRequest {
                room: Some(j.room.clone()),
                grant: Some(grant),
            };
            match state.sfu.open_session(request).await {
                Ok(opened) => {
                    j.media = Some((opened.session, opened.events));
                    let reply = ServerMessage::Joined {
                        participant: j.participant.clone(),
                        room: j.room.clone(),
                        participants: state.rooms.peers(&j.room, &j.participant),
                        resume: Some(j.resume.clone()),
                    };
                    send(sink, state, &reply).await?;
                }
                Err(e) => {
                    send(sink, state, &ServerMessage::error(e.code(), e.to_string())).await?;
                }
            }
            Ok(Next::Continue)
        }
        ClientMessage::E2ee { to, blob } => {
            let Some(j) = joined.as_ref() else {
                return not_joined(state, sink).await;
            };
            if blob.len() > MAX_BLOB_BYTES {
                state.metrics.error("blob_too_large");
                let msg = ServerMessage::error(
                    "blob_too_large",
                    format!("an e2ee blob is at most {MAX_BLOB_BYTES} bytes"),
                );
                send(sink, state, &msg).await?;
                return Ok(Next::Continue);
            }
            if let Err(e) = state
                .rooms
                .relay_e2ee(&j.room, &j.participant, to.as_deref(), blob)
            {
                let code = match e {
                    RoomError::UnknownParticipant => "unknown_participant",
                    _ => "not_found",
                };
                state.metrics.error(code);
                send(sink, state, &ServerMessage::error(code, e.to_string())).await?;
            }
            Ok(Next::Continue)
        }
        ClientMessage::State { state: media } => {
            let Some(j) = joined.as_ref() else {
                return not_joined(state, sink).await;
            };
            if let Err(e) = state.rooms.set_state(&j.room, &j.participant, media) {
                state.metrics.error("not_found");
                send(
                    sink,
                    state,
                    &ServerMessage::error("not_found", e.to_string()),
                )
                .await?;
            }
            Ok(Next::Continue)
        }
        other => {
            let Some(j) = joined.as_ref() else {
                return not_joined(state, sink).await;
            };
            let Some(session) = j.session() else {
                // Between a lost node and the rejoin there is nothing to signal to.
                state.metrics.error("signal_refused");
                let msg =
                    ServerMessage::error("media_lost", "rejoin first: the media session was lost");
                send(sink, state, &msg).await?;
                return Ok(Next::Continue);
            };
            if let Some(signal) = other.into_signal()
                && let Err(e) = state.sfu.signal(session, signal).await
            {
                state.metrics.error("signal_refused");
                send(sink, state, &ServerMessage::error(e.code(), e.to_string())).await?;
            }
            Ok(Next::Continue)
        }
    }
}

async fn host_refusal<S>(state: &Arc<Signaling>, sink: &mut S, e: RoomError) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    let code = match e {
        RoomError::NotHost => "not_host",
        RoomError::UnknownParticipant => "unknown_participant",
        _ => "not_found",
    };
    state.metrics.error(code);
    send(sink, state, &ServerMessage::error(code, e.to_string())).await
}

async fn already_joined<S>(state: &Arc<Signaling>, sink: &mut S) -> Result<Next, ()>
where
    S: SinkExt<Message> + Unpin,
{
    state.metrics.error("already_joined");
    let msg = ServerMessage::error("already_joined", "this connection already joined");
    send(sink, state, &msg).await?;
    Ok(Next::Continue)
}

async fn not_joined<S>(state: &Arc<Signaling>, sink: &mut S) -> Result<Next, ()>
where
    S: SinkExt<Message> + Unpin,
{
    state.metrics.error("not_joined");
    send(
        sink,
        state,
        &ServerMessage::error("not_joined", "send a join message first"),
    )
    .await?;
    Ok(Next::Continue)
}
