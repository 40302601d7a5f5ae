//! The browser client: the static files of `web/`, embedded in the binary at build time,
//! served with strict security headers.
//!
//! Owns: `GET /` (landing), `GET /r/{room}` (meeting page), `GET /assets/{file}` (scripts
//! and style) and their headers: a Content-Security-Policy that allows only this origin
//! (no inline script, no third party), no referrer, no MIME sniffing.
//!
//! Must never: read files from disk at run time, serve anything but the embedded list,
//! load or point to another origin (P8, P9), or see the room secret (it lives in the URL
//! fragment, which browsers never send).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const MEETING_HTML: &str = include_str!("../../web/meeting.html");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Files under `/assets/`, by name: content type and bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.js", JS, include_str!("../../web/index.js")),
    ("meeting.js", JS, include_str!("../../web/meeting.js")),
    ("sframe.js", JS, include_str!("../../web/sframe.js")),
    ("keys.js", JS, include_str!("../../web/keys.js")),
    ("sdp.js", JS, include_str!("../../web/sdp.js")),
    (
        "e2ee-worker.js",
        JS,
        include_str!("../../web/e2ee-worker.js"),
    ),
    ("style.css", CSS, include_str!("../../web/style.css")),
];

/// The embedded asset called `name`: its content type and text.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, body)| (*ct, *body))
}

/// The Content-Security-Policy for a page served to `host` (the request's Host header).
/// `'self'` already covers same-host WebSockets in current browsers; the explicit ws:/wss:
/// sources are for older ones, added only for a host that is a plain host[:port] so the
/// header cannot be used to inject other sources.
pub fn content_security_policy(host: Option<&str>) -> String {
    let mut connect = String::from("'self'");
    if let Some(h) = host.filter(|h| plain_host(h)) {
        connect.push_str(&format!(" ws://{h} wss://{h}"));
    }
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         media-src 'self' blob:; connect-src {connect}; worker-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn respond(headers: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(host)) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), display-capture=(self)"),
    );
    // Pages and scripts change with each release and are small: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index(headers: HeaderMap) -> Response {
    respond(&headers, HTML, INDEX_HTML)
}

async fn meeting(headers: HeaderMap, Path(_room): Path<String>) -> Response {
    // The room id is read by the page from its own URL; nothing here depends on it.
    respond(&headers, HTML, MEETING_HTML)
}

async fn assets(headers: HeaderMap, Path(file): Path<String>) -> Response {
    match asset(&file) {
        Some((content_type, body)) => respond(&headers, content_type, body),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"not_found","message":"no such resource"}"#,
        )
            .into_response(),
    }
}

/// The web client's routes; merge into signaling's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/r/{room}", get(meeting))
        .route("/assets/{file}", get(assets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn every_asset_is_found_with_its_type() {
        assert_eq!(asset("meeting.js").map(|a| a.0), Some(JS));
        assert_eq!(asset("style.css").map(|a| a.0), Some(CSS));
        assert!(asset("e2ee-worker.js").is_some());
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }

    #[test]
    fn pages_load_nothing_from_elsewhere() {
        for (_, _, body) in ASSETS {
            assert!(!body.contains("http://") && !body.contains("https://"));
        }
        for page in [INDEX_HTML, MEETING_HTML] {
            assert!(!page.contains("http://") && !page.contains("https://"));
            // No inline script: every <script> has a src.
            for tag in page.split("<script").skip(1) {
                assert!(tag.split('>').next().unwrap().contains("src=\"/assets/"));
            }
        }
    }

    #[test]
    fn csp_is_strict_and_not_injectable() {
        let csp = content_security_policy(Some("127.0.0.1:8080"));
        assert!(csp.starts_with("default-src 'self';"));
        assert!(csp.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"));
        assert!(csp.contains("worker-src 'self'"));
        assert!(csp.contains("media-src 'self' blob:"));
        assert!(!csp.contains("unsafe"));
        let evil = content_security_policy(Some("x; script-src *"));
        assert!(evil.contains("connect-src 'self';"));
        assert!(!evil.contains('*'));
    }

    /// A plain HTTP/1.1 GET over a blocking socket (no extra dependencies).
    async fn get_raw(addr: std::net::SocketAddr, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out.to_ascii_lowercase()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_router_serves_pages_and_assets_with_headers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: Router<()> = router();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let index = get_raw(addr, "/").await;
        assert!(index.starts_with("http/1.1 200"));
        assert!(index.contains("content-type: text/html; charset=utf-8"));
        assert!(index.contains("content-security-policy: default-src 'self';"));
        assert!(index.contains("referrer-policy: no-referrer"));
        assert!(index.contains("x-content-type-options: nosniff"));

        let meeting = get_raw(addr, "/r/abc123").await;
        assert!(meeting.starts_with("http/1.1 200"));
        assert!(meeting.contains("/assets/meeting.js"));

        let js = get_raw(addr, "/assets/sframe.js").await;
        assert!(js.contains("content-type: text/javascript; charset=utf-8"));
        assert!(js.contains("x-content-type-options: nosniff"));

        assert!(
            get_raw(addr, "/assets/nope.js")
                .await
                .starts_with("http/1.1 404")
        );
        assert!(
            get_raw(addr, "/assets/..%2fCargo.toml")
                .await
                .starts_with("http/1.1 404")
        );
    }
}
