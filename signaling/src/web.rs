//! The browser client: the static files of `web/`, embedded in the binary at build time,
//! served with strict security headers.
//!
//! Owns: `GET /` (landing), `GET /r/{room}` (meeting page), the account pages (`GET
//! /signup`, `/login`, `/verify`, `/reset`, `/account`), `GET /assets/{file}` (scripts
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

const MEETING_HTML: &str = include_str!("../../web/meeting.html");

/// Pages at fixed paths. Links mailed by accounts open `/verify#…` and `/reset#…`; the
/// token stays in the fragment, which the browser never sends here.
const PAGES: &[(&str, &str)] = &[
    ("/", include_str!("../../web/index.html")),
    ("/signup", include_str!("../../web/signup.html")),
    ("/login", include_str!("../../web/login.html")),
    ("/verify", include_str!("../../web/verify.html")),
    ("/reset", include_str!("../../web/reset.html")),
    ("/account", include_str!("../../web/account.html")),
];

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Files under `/assets/`, by name: content type and bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.js", JS, include_str!("../../web/index.js")),
    ("api.js", JS, include_str!("../../web/api.js")),
    ("signup.js", JS, include_str!("../../web/signup.js")),
    ("login.js", JS, include_str!("../../web/login.js")),
    ("verify.js", JS, include_str!("../../web/verify.js")),
    ("reset.js", JS, include_str!("../../web/reset.js")),
    ("account.js", JS, include_str!("../../web/account.js")),
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
    let mut router = Router::new()
        .route("/r/{room}", get(meeting))
        .route("/assets/{file}", get(assets));
    for &(path, body) in PAGES {
        router = router.route(
            path,
            get(move |headers: HeaderMap| async move { respond(&headers, HTML, body) }),
        );
    }
    router
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
        let pages = PAGES.iter().map(|(_, body)| *body);
        for page in pages.chain([MEETING_HTML]) {
            assert!(!page.contains("http://") && !page.contains("https://"));
            // No inline script: every <script> has a src, and the page has one.
            let scripts: Vec<&str> = page.split("<script").skip(1).collect();
            assert_eq!(scripts.len(), 1);
            for tag in scripts {
                let (open, rest) = tag.split_once('>').unwrap();
                assert!(open.contains("src=\"/assets/"));
                assert!(rest.starts_with("</script>"));
            }
            // No inline handlers or styles either (the CSP would block them).
            for tag in page.split('<').filter_map(|t| t.split('>').next()) {
                let handler = tag.split(" on").skip(1).any(|rest| {
                    let attr = rest.split('=').next().unwrap_or("");
                    !attr.is_empty() && attr.bytes().all(|b| b.is_ascii_lowercase())
                });
                assert!(!handler, "inline event handler in <{tag}>");
                assert!(!tag.contains(" style=") && !tag.contains("javascript:"));
            }
        }
    }

    #[test]
    fn every_page_script_and_import_is_an_asset() {
        for (_, body) in PAGES {
            for tag in body.split("<script").skip(1) {
                let src = tag.split("src=\"/assets/").nth(1).unwrap();
                let name = src.split('"').next().unwrap();
                assert!(asset(name).is_some(), "{name} is not embedded");
            }
        }
        for (name, content_type, body) in ASSETS {
            if *content_type != JS {
                continue;
            }
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let module = line.split("from './").nth(1).unwrap();
                let module = module.split('\'').next().unwrap();
                assert!(
                    asset(module).is_some(),
                    "{name} imports {module}, not embedded"
                );
            }
        }
    }

    #[test]
    fn account_pages_keep_tokens_out_of_storage_and_urls() {
        let scripts = [
            "api.js",
            "signup.js",
            "login.js",
            "verify.js",
            "reset.js",
            "account.js",
        ];
        for name in scripts {
            let (_, body) = asset(name).unwrap();
            // The code, without comments (which may say what it never does).
            let code: String = body
                .lines()
                .filter(|l| {
                    !["//", "/*", "*"]
                        .iter()
                        .any(|c| l.trim_start().starts_with(c))
                })
                .collect();
            for forbidden in [
                "localStorage",
                "sessionStorage",
                "document.cookie",
                "indexedDB",
            ] {
                assert!(!code.contains(forbidden), "{name} uses {forbidden}");
            }
            // Every path named goes to this origin's API or one of its pages, none with
            // a query or fragment.
            for literal in code.split("'/").skip(1) {
                let path = format!("/{}", literal.split('\'').next().unwrap_or(""));
                let page = PAGES.iter().any(|(p, _)| *p == path);
                let api = path.starts_with("/api/")
                    && path
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/-".contains(&b));
                assert!(page || api, "{name} names {path:?}");
            }
        }
        // The fragment is read once and removed from the address bar.
        let (_, api) = asset("api.js").unwrap();
        assert!(
            api.contains("history.replaceState(null, '', location.pathname + location.search)")
        );
        for name in ["verify.js", "reset.js"] {
            assert!(asset(name).unwrap().1.contains("takeFragmentToken()"));
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

        for (path, page) in PAGES {
            let served = get_raw(addr, path).await;
            assert!(served.starts_with("http/1.1 200"), "{path}");
            assert!(served.contains("content-type: text/html; charset=utf-8"));
            assert!(served.contains("content-security-policy: default-src 'self';"));
            assert!(served.contains("script-src 'self';"));
            assert!(served.contains("referrer-policy: no-referrer"));
            assert!(served.contains("x-frame-options: deny"));
            assert!(served.contains("cache-control: no-cache"));
            assert!(!served.contains("set-cookie"));
            assert!(served.ends_with(&page.to_ascii_lowercase()));
        }
        for script in ["api.js", "account.js", "verify.js"] {
            let js = get_raw(addr, &format!("/assets/{script}")).await;
            assert!(js.contains("content-type: text/javascript; charset=utf-8"));
        }
        assert!(get_raw(addr, "/accounts").await.starts_with("http/1.1 404"));

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
