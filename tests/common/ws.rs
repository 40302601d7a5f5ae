//! Raw WebSocket members (no peer connection), for protocol-level checks.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use veil_bench::participant::{open_socket, request_grant};

use super::{participant, secs, within};

pub use veil_bench::participant::WsStream as Ws;

/// A joined raw socket (no peer connection), for protocol-level checks.
pub async fn raw_member(veil: &veil::Running, room: &str, name: &str) -> (Ws, String) {
    let mut config = participant(veil, room, name);
    config.audio = false;
    config.video = None;
    let (_, grant, ws_path) = request_grant(&config).await.expect("grant");
    let joined = open_socket(&veil.base_url(), &ws_path, Some(&grant))
        .await
        .expect("join");
    (joined.ws, joined.participant)
}

pub async fn send_text(ws: &mut Ws, text: String) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

/// Next JSON message of the given type, skipping others.
pub async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    next_of_within(ws, kind, secs(5)).await
}

/// Next JSON message of the given type within `limit`, skipping others.
pub async fn next_of_within(ws: &mut Ws, kind: &str, limit: std::time::Duration) -> Value {
    within(&format!("a {kind} message"), limit, async {
        loop {
            let frame = ws.next().await.expect("open").expect("frame");
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["type"] == kind {
                    return v;
                }
            }
        }
    })
    .await
}
