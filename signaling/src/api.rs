//! The HTTP API: small typed handlers that answer every error as
//! `{"error": code, "message": text}` with a fitting status, and count it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use veil_sfu::grant::{Grant, valid_id};

use crate::Signaling;
use crate::room::{RoomError, clean_display_name};

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

fn count(state: &Signaling, route: &str, status: StatusCode, error: Option<&str>) {
    let class = match status.as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state
        .metrics
        .http_requests
        .with_label_values(&[route, class])
        .inc();
    if let Some(reason) = error {
        state.metrics.error(reason);
    }
}

fn from_room_error(e: RoomError) -> ApiError {
    match e {
        RoomError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such room"),
        RoomError::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rooms_full",
            "too many rooms are open; try again later",
        ),
        RoomError::RoomFull => ApiError::new(
            StatusCode::CONFLICT,
            "room_full",
            "the meeting has reached its participant limit",
        ),
        RoomError::UnknownParticipant => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such participant")
        }
        RoomError::NotHost => ApiError::new(
            StatusCode::FORBIDDEN,
            "not_host",
            "the host key is not this meeting's",
        ),
        // Only the WebSocket join uses grants; the HTTP API never sees this.
        RoomError::GrantUsed => ApiError::new(
            StatusCode::CONFLICT,
            "grant_used",
            "this join grant was already used",
        ),
    }
}

#[derive(Serialize, Deserialize)]
pub struct RoomCreated {
    pub room: String,
    /// Whoever joins with this key is the meeting's host (may remove participants and
    /// end the meeting). Shown once, to the creator only.
    pub host_key: String,
}

/// `POST /api/rooms` — for a logged-in account whose trial is active.
pub async fn create_room(
    State(state): State<Arc<Signaling>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let host = async {
        let session = state.accounts.session(&headers).await?;
        state.accounts.may_host(&session).await?;
        Ok::<_, veil_accounts::AccountError>(session.account_id)
    }
    .await;
    let account = match host {
        Ok(account) => account,
        Err(e) => {
            let err = ApiError::new(
                match e {
                    veil_accounts::AccountError::TrialEnded => StatusCode::FORBIDDEN,
                    veil_accounts::AccountError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::UNAUTHORIZED,
                },
                e.code(),
                match e {
                    veil_accounts::AccountError::Unauthenticated => {
                        "log in to create a meeting (anyone with a link can join one)".to_string()
                    }
                    other => other.to_string(),
                },
            );
            count(&state, "create_room", err.status, Some(err.code));
            return Err(err);
        }
    };
    match state.rooms.create(Instant::now(), Some(&account)) {
        Ok(created) => {
            // Stored before it is handed out, so a restart cannot lose a meeting
            // someone already has the link to.
            let ttl = Duration::from_secs(state.config.room_ttl_secs);
            if let Err(e) = state
                .accounts
                .record_hosted_room(&created.room, &created.host_key, &account, ttl)
                .await
            {
                state.rooms.forget(&created.room);
                let err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.code(),
                    "the meeting could not be stored; try again later",
                );
                count(&state, "create_room", err.status, Some(err.code));
                return Err(err);
            }
            state.metrics.rooms_created.inc();
            count(&state, "create_room", StatusCode::CREATED, None);
            let body = RoomCreated {
                room: created.room,
                host_key: created.host_key,
            };
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err(e) => {
            let err = from_room_error(e);
            count(&state, "create_room", err.status, Some("rooms_full"));
            Err(err)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub display_name: String,
    /// The host key from room creation, to join as the host.
    #[serde(default)]
    pub host_key: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct JoinResponse {
    pub participant: String,
    pub grant: String,
    /// Path of the WebSocket to present the grant on.
    pub ws: String,
}

/// `POST /api/rooms/{room}/join` `{display_name}` → a short-lived grant. Guests join
/// as they are; a logged-in account's media sessions go into its usage record.
pub async fn join_room(
    State(state): State<Arc<Signaling>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<JoinResponse>, ApiError> {
    let account = state
        .accounts
        .session(&headers)
        .await
        .ok()
        .map(|s| s.account_id);
    let result = join(&state, &room, account.as_deref(), &body).await;
    match &result {
        Ok(_) => count(&state, "join_room", StatusCode::OK, None),
        Err(e) => {
            let reason = match e.status {
                StatusCode::NOT_FOUND => "not_found",
                StatusCode::FORBIDDEN => "not_host",
                StatusCode::SERVICE_UNAVAILABLE => e.code,
                _ => "bad_request",
            };
            count(&state, "join_room", e.status, Some(reason));
        }
    }
    result.map(Json)
}

/// Brings back a room the database still holds (this process started after it was
/// created); whether there was one.
async fn restore(state: &Signaling, room: &str) -> Result<bool, ApiError> {
    let stored = state.accounts.hosted_room(room).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.code(),
            "meetings cannot be looked up right now; try again later",
        )
    })?;
    let Some(stored) = stored else {
        return Ok(false);
    };
    // The room's age in this process's monotonic clock, for its TTL.
    let age = state.accounts.now().duration_since(stored.created_at);
    let age = if age.is_negative() {
        Duration::ZERO
    } else {
        age.unsigned_abs()
    };
    let created = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    state
        .rooms
        .restore(
            room,
            stored.host_key_hash,
            Some(&stored.account_id),
            created,
        )
        .map_err(from_room_error)?;
    Ok(true)
}

async fn join(
    state: &Signaling,
    room: &str,
    account: Option<&str>,
    body: &[u8],
) -> Result<JoinResponse, ApiError> {
    if !valid_id(room) {
        return Err(from_room_error(RoomError::NotFound));
    }
    let request: JoinRequest = serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected a JSON object {\"display_name\": string, \"host_key\"?: string}",
        )
    })?;
    let name = clean_display_name(&request.display_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_display_name",
            "a display name is 1 to 64 characters without control characters",
        )
    })?;
    let admit = || {
        state.rooms.join(
            room,
            &name,
            request.host_key.as_deref(),
            account,
            Instant::now(),
        )
    };
    let participant = match admit() {
        Err(RoomError::NotFound) if restore(state, room).await? => admit(),
        other => other,
    }
    .map_err(from_room_error)?;
    let grant = state.signer.sign(&Grant {
        room: room.to_string(),
        participant: participant.clone(),
        can_publish: true,
        can_subscribe: true,
        expires: veil_sfu::unix_now() + state.config.grant_ttl_secs,
    });
    Ok(JoinResponse {
        participant,
        grant,
        ws: "/ws".into(),
    })
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    sessions: usize,
    rooms: usize,
    /// SFU nodes in a split deployment (absent when the SFU runs in-process).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<veil_sfu::wire::NodeStatus>,
}

/// `GET /healthz`
pub async fn healthz(State(state): State<Arc<Signaling>>) -> Json<impl Serialize> {
    Json(Health {
        status: "ok",
        sessions: state.sfu.live_sessions(),
        rooms: state.rooms.len(),
        nodes: state.sfu.nodes(),
    })
}

/// `GET /metrics`
pub async fn metrics(State(state): State<Arc<Signaling>>) -> Response {
    // Directory gauges are read when scraped rather than tracked at every change.
    state.metrics.rooms_open.set(state.rooms.len() as i64);
    state.metrics.participants.set(state.rooms.present() as i64);
    (
        [(header::CONTENT_TYPE, veil_metrics::Metrics::content_type())],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /api/openapi.json`: the HTTP API's description.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found(State(state): State<Arc<Signaling>>) -> ApiError {
    count(&state, "other", StatusCode::NOT_FOUND, Some("not_found"));
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
}
