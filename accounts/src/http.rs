//! The accounts API (DESIGN.md "Public surface"), mounted by signaling. Small typed
//! handlers: bodies as JSON or HTML form fields, every error as `{"error": code,
//! "message": text}` with its status (429 with `Retry-After`), each request counted by
//! route and status class. Client addresses reach only the in-memory rate limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::header::{
    CONTENT_DISPOSITION, CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER, SET_COOKIE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::closure::Reopen;
use crate::profile::ProfileChange;
use crate::ratelimit::Action;
use crate::session::Session;
use crate::signup::{SignUp, clean_email};
use crate::{AccountError, Accounts};

/// Route names, the only values of the `route` label these handlers count under.
pub const ROUTES: &[&str] = &[
    "sign_up",
    "verify",
    "resend_verification",
    "password_reset",
    "password_reset_confirm",
    "log_in",
    "log_out",
    "log_out_everywhere",
    "account",
    "account_change",
    "account_export",
    "account_close",
    "account_reopen",
];

/// Bodies are small: a password is at most 1 KiB.
const BODY_LIMIT: usize = 16 * 1024;

/// Every accounts route.
pub fn router(accounts: Arc<Accounts>) -> Router {
    Router::new()
        .route("/api/accounts", post(sign_up))
        .route("/api/accounts/verify", post(verify))
        .route("/api/accounts/verify/resend", post(resend_verification))
        .route("/api/accounts/password-reset", post(password_reset))
        .route(
            "/api/accounts/password-reset/confirm",
            post(password_reset_confirm),
        )
        .route("/api/session", post(log_in).delete(log_out))
        .route("/api/sessions", axum::routing::delete(log_out_everywhere))
        .route("/api/account", get(account).patch(account_change))
        .route("/api/account/export", get(account_export))
        .route("/api/account/close", post(account_close))
        .route("/api/account/reopen", post(account_reopen))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            accounts.clone(),
            same_origin,
        ))
        .with_state(accounts)
}

/// An error answered as JSON, counted under its route.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let status = match &e {
            AccountError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AccountError::EmailTaken | AccountError::ReopenTooLate => StatusCode::CONFLICT,
            AccountError::InvalidCredentials | AccountError::Unauthenticated => {
                StatusCode::UNAUTHORIZED
            }
            AccountError::NotVerified | AccountError::Closed | AccountError::TrialEnded => {
                StatusCode::FORBIDDEN
            }
            AccountError::InvalidToken => StatusCode::BAD_REQUEST,
            AccountError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AccountError::Mail => StatusCode::BAD_GATEWAY,
            AccountError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            AccountError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if let AccountError::Database(db) = &e {
            // The error names tables or constraints, never values.
            tracing::error!(error = %db, "accounts database error");
        }
        let retry_after = match e {
            AccountError::RateLimited { retry_after_secs } => Some(retry_after_secs),
            _ => None,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Counts a finished request and its refusal reason.
fn counted(
    accounts: &Accounts,
    route: &'static str,
    result: Result<Response, ApiError>,
) -> Response {
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            accounts.metrics.error(e.code);
            e.into_response()
        }
    };
    let class = match response.status().as_u16() {
        100..=399 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    accounts
        .metrics
        .http_requests
        .with_label_values(&[route, class])
        .inc();
    response
}

/// The client's address, for the in-memory limits only.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            // Served without connection info (in-process tests): one shared bucket.
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(ClientIp(ip))
    }
}

/// A body as JSON, or as HTML form fields.
fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parsed = if form {
        serde_urlencoded_from(body)
    } else {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|detail| {
        // serde's message names the field at fault, never its value.
        let detail = detail.split(" at line").next().unwrap_or("").to_string();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the request body is not what this endpoint expects: {detail}"),
        )
    })
}

/// Parses `body` exactly as the route named `route` (one of [`ROUTES`]) does, then runs
/// the checks that need no database (e-mail, display name, password policy). Routes that
/// take no body accept only an empty one. For the fuzz targets and their corpus replay
/// (`fuzz/`): the same code the handlers run, without I/O.
pub fn check_body(route: &str, form: bool, body: &[u8]) -> Result<(), ApiError> {
    let mut headers = HeaderMap::new();
    if form {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    }
    let body = Bytes::copy_from_slice(body);
    let bad = |e: AccountError| ApiError::from(e);
    let password = |p: &str| {
        crate::password::check(p).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, e.code(), "the password is refused")
        })
    };
    match route {
        "sign_up" => {
            let s: SignUp = parse(&headers, &body)?;
            clean_email(&s.email).map_err(bad)?;
            crate::profile::clean_display_name(&s.display_name).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_display_name", "bad name")
            })?;
            password(&s.password)
        }
        "verify" => parse::<TokenBody>(&headers, &body).map(drop),
        "resend_verification" | "password_reset" => {
            let e: EmailBody = parse(&headers, &body)?;
            clean_email(&e.email).map(drop).map_err(bad)
        }
        "password_reset_confirm" => {
            let r: ResetBody = parse(&headers, &body)?;
            password(&r.password)
        }
        "log_in" => {
            let l: LogIn = parse(&headers, &body)?;
            clean_email(&l.email).map(drop).map_err(bad)
        }
        "account_change" => {
            let c: ProfileChange = parse(&headers, &body)?;
            if let Some(e) = &c.email {
                clean_email(e).map_err(bad)?;
            }
            if let Some(p) = &c.new_password {
                password(p)?;
            }
            Ok(())
        }
        "account_reopen" => {
            let r: Reopen = parse(&headers, &body)?;
            clean_email(&r.email).map(drop).map_err(bad)
        }
        _ if body.is_empty() => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "this endpoint takes no body",
        )),
    }
}

fn serde_urlencoded_from<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
}

/// Refuses state-changing requests from another site's pages (the SameSite cookie
/// already stops most; this covers the rest).
async fn same_origin(
    State(accounts): State<Arc<Accounts>>,
    request: Request,
    next: Next,
) -> Response {
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if changes {
        let headers = request.headers();
        if let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
            let host = headers
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
            if authority != host {
                accounts.metrics.error("cross_origin");
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    "requests that change an account must come from Veil's own pages",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

async fn session(accounts: &Accounts, headers: &HeaderMap) -> Result<Session, ApiError> {
    Ok(accounts.session(headers).await?)
}

fn with_cookie(mut response: Response, cookie: String) -> Response {
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

#[derive(Serialize, Deserialize)]
pub struct SignedUp {
    pub account: String,
    /// Where the verification link went (always the address given).
    pub verification: String,
}

async fn sign_up(
    State(accounts): State<Arc<Accounts>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let request: SignUp = parse(&headers, &body)?;
        accounts.limit(Action::SignUp, ip, Some(&request.email))?;
        let account = accounts.sign_up(request).await?;
        Ok((
            StatusCode::CREATED,
            Json(SignedUp {
                account,
                verification: "sent".into(),
            }),
        )
            .into_response())
    }
    .await;
    counted(&accounts, "sign_up", result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

async fn verify(
    State(accounts): State<Arc<Accounts>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let request: TokenBody = parse(&headers, &body)?;
        accounts.limit(Action::Verify, ip, None)?;
        accounts.verify(&request.token).await?;
        Ok(Json(serde_json::json!({"verified": true})).into_response())
    }
    .await;
    counted(&accounts, "verify", result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    email: String,
}

async fn resend_verification(
    State(accounts): State<Arc<Accounts>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let request: EmailBody = parse(&headers, &body)?;
        accounts.limit(Action::Verify, ip, Some(&request.email))?;
        accounts.resend_verification(&request.email).await?;
        Ok(StatusCode::ACCEPTED.into_response())
    }
    .await;
    counted(&accounts, "resend_verification", result)
}

async fn password_reset(
    State(accounts): State<Arc<Accounts>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let request: EmailBody = parse(&headers, &body)?;
        accounts.limit(Action::PasswordReset, ip, Some(&request.email))?;
        accounts.request_password_reset(&request.email).await?;
        Ok(StatusCode::ACCEPTED.into_response())
    }
    .await;
    counted(&accounts, "password_reset", result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    token: String,
    password: String,
}

async fn password_reset_confirm(
    State(accounts): State<Arc<Accounts>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let request: ResetBody = parse(&headers, &body)?;
        accounts.limit(Action::PasswordReset, ip, None)?;
        accounts
            .reset_password(&request.token, &request.password)
            .await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    counted(&accounts, "password_reset_confirm", result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogIn {
    email: String,
    password: String,
}

async fn log_in(
    State(accounts): State<Arc<Accounts>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let request: LogIn = parse(&headers, &body)?;
        let logins = &accounts.metrics.account_logins;
        if let Err(e) = accounts.limit(Action::LogIn, ip, Some(&request.email)) {
            logins.with_label_values(&["limited"]).inc();
            return Err(e.into());
        }
        let previous = accounts.cookie.read(&headers);
        match accounts
            .log_in(&request.email, &request.password, previous)
            .await
        {
            Ok(done) => {
                logins.with_label_values(&["ok"]).inc();
                let profile = accounts.profile(&done.account_id).await?;
                Ok(with_cookie(
                    Json(profile).into_response(),
                    accounts.cookie.set(&done.cookie_value),
                ))
            }
            Err(e) => {
                logins.with_label_values(&["failed"]).inc();
                Err(e.into())
            }
        }
    }
    .await;
    counted(&accounts, "log_in", result)
}

async fn log_out(State(accounts): State<Arc<Accounts>>, headers: HeaderMap) -> Response {
    let result = async {
        let session = session(&accounts, &headers).await?;
        accounts.log_out(&session).await?;
        Ok(with_cookie(
            StatusCode::NO_CONTENT.into_response(),
            accounts.cookie.clear(),
        ))
    }
    .await;
    counted(&accounts, "log_out", result)
}

async fn log_out_everywhere(State(accounts): State<Arc<Accounts>>, headers: HeaderMap) -> Response {
    let result = async {
        let session = session(&accounts, &headers).await?;
        let ended = accounts.log_out_everywhere(&session).await?;
        Ok(with_cookie(
            Json(serde_json::json!({"sessions_ended": ended})).into_response(),
            accounts.cookie.clear(),
        ))
    }
    .await;
    counted(&accounts, "log_out_everywhere", result)
}

async fn account(State(accounts): State<Arc<Accounts>>, headers: HeaderMap) -> Response {
    let result = async {
        let session = session(&accounts, &headers).await?;
        Ok(Json(accounts.profile(&session.account_id).await?).into_response())
    }
    .await;
    counted(&accounts, "account", result)
}

async fn account_change(
    State(accounts): State<Arc<Accounts>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let session = session(&accounts, &headers).await?;
        let change: ProfileChange = parse(&headers, &body)?;
        Ok(Json(accounts.change_profile(&session, change).await?).into_response())
    }
    .await;
    counted(&accounts, "account_change", result)
}

async fn account_export(State(accounts): State<Arc<Accounts>>, headers: HeaderMap) -> Response {
    let result = async {
        let session = session(&accounts, &headers).await?;
        let export = accounts.export(&session).await?;
        let mut response = Json(export).into_response();
        response.headers_mut().insert(
            CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"veil-account-export.json\""),
        );
        Ok(response)
    }
    .await;
    counted(&accounts, "account_export", result)
}

async fn account_close(State(accounts): State<Arc<Accounts>>, headers: HeaderMap) -> Response {
    let result = async {
        let session = session(&accounts, &headers).await?;
        let closed = accounts.close(&session).await?;
        Ok(with_cookie(
            Json(closed).into_response(),
            accounts.cookie.clear(),
        ))
    }
    .await;
    counted(&accounts, "account_close", result)
}

async fn account_reopen(
    State(accounts): State<Arc<Accounts>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let request: Reopen = parse(&headers, &body)?;
        accounts.limit(Action::LogIn, ip, Some(&request.email))?;
        accounts.reopen(request).await?;
        Ok(Json(serde_json::json!({"reopened": true})).into_response())
    }
    .await;
    counted(&accounts, "account_reopen", result)
}
