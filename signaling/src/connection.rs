//! One browser's WebSocket: the join handshake, then relaying typed messages between
//! the client and its media session until either side ends it.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;
use veil_sfu::{SessionId, SessionRequest, SfuSignal};

use crate::Signaling;
use crate::message::{ClientMessage, MAX_BLOB_BYTES, MAX_MESSAGE_BYTES, ServerMessage};
use crate::quota::{MessageQuota, Verdict};
use crate::room::RoomError;

/// `GET /ws`
pub async fn upgrade(State(state): State<Arc<Signaling>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| run(socket, state))
}

struct Joined {
    session: SessionId,
    room: String,
    participant: String,
    events: mpsc::Receiver<SfuSignal>,
}

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
    let mut quota = MessageQuota::new(std::time::Instant::now());
    // Presence and E2EE messages from the room for this participant.
    let (room_tx, mut room_rx) = mpsc::unbounded_channel::<ServerMessage>();
    loop {
        let next_event = async {
            match joined.as_mut() {
                Some(j) => j.events.recv().await,
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
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
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
                match handle(&state, &mut sink, &mut joined, &room_tx, text.as_str()).await {
                    Ok(Next::Continue) => {}
                    Ok(Next::Close) | Err(()) => break,
                }
            }
            Some(msg) = room_rx.recv() => {
                if send(&mut sink, &state, &msg).await.is_err() {
                    break;
                }
            }
            event = next_event => {
                let Some(event) = event else {
                    closed_by_sfu = true;
                    break;
                };
                let is_closed = matches!(event, SfuSignal::Closed { .. });
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
    if let Some(j) = joined {
        if !closed_by_sfu {
            state.sfu.close_session(j.session).await;
        }
        state.rooms.leave(&j.room, &j.participant);
    }
    let _ = sink.send(Message::Close(None)).await;
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
    sink.send(Message::Text(json.into())).await.map_err(|_| ())
}

async fn handle<S>(
    state: &Arc<Signaling>,
    sink: &mut S,
    joined: &mut Option<Joined>,
    room_tx: &mpsc::UnboundedSender<ServerMessage>,
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
                state.metrics.error("already_joined");
                send(
                    sink,
                    state,
                    &ServerMessage::error("already_joined", "this connection already joined"),
                )
                .await?;
                return Ok(Next::Continue);
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
                    let reply = ServerMessage::Joined {
                        participant: opened.participant.clone(),
                        room: opened.room.clone(),
                        participants,
                    };
                    *joined = Some(Joined {
                        session: opened.session,
                        room: opened.room,
                        participant: opened.participant,
                        events: opened.events,
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
        ClientMessage::Leave {} => {
            match joined.as_ref() {
                // The session answers with Closed, which ends the loop.
                Some(j) => state.sfu.close_session(j.session).await,
                None => return Ok(Next::Close),
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
            if let Some(signal) = other.into_signal()
                && let Err(e) = state.sfu.signal(j.session, signal).await
            {
                state.metrics.error("signal_refused");
                send(sink, state, &ServerMessage::error(e.code(), e.to_string())).await?;
            }
            Ok(Next::Continue)
        }
    }
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
