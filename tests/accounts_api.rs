//! The accounts API as a browser meets it, on a running Veil with each database: form
//! and JSON bodies, JSON errors, the session cookie's flags, log-in errors that do not
//! tell who has an account, rate limits with Retry-After, cross-site requests refused,
//! meetings only for accounts in trial, closure ending the person's meetings, a usage
//! record from a real media session, and the OpenAPI document covering every route.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use veil::Running;
use veil_bench::participant::Participant;

use common::*;

const PASSWORD: &str = "a long enough passphrase";

enum Db {
    Sqlite,
    Postgres,
}

/// A Veil whose accounts live in `db` (a fresh PostgreSQL database is dropped after).
async fn veil_on(db: Db) -> (Running, Option<String>) {
    let mut config = test_config();
    let mut dropped = None;
    if let Db::Postgres = db {
        let (url, name) = fresh_postgres("veil_api").await;
        config.accounts.database_url = url;
        dropped = Some(name);
    }
    (veil::start(&config).await.expect("start veil"), dropped)
}

async fn finish(veil: Running, db: Option<String>) {
    veil.stop().await.expect("stop");
    if let Some(name) = db {
        drop_postgres(&name).await;
    }
}

macro_rules! on_both_databases {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(super::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body(super::Db::Postgres).await
            }
        }
    };
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON error body");
    (
        status,
        body["error"].as_str().expect("error code").to_string(),
        body["message"].as_str().expect("message").to_string(),
    )
}

on_both_databases!(sign_up_log_in_and_host, sign_up_log_in_and_host);
async fn sign_up_log_in_and_host(db: Db) {
    let (veil, dropped) = veil_on(db).await;
    let base = veil.base_url();
    let http = reqwest::Client::new();
    let outbox = veil.accounts.outbox().expect("outbox");

    // Meetings need an account.
    let (status, code, _) = error_of(
        http.post(format!("{base}/api/rooms"))
            .send()
            .await
            .expect("create"),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );

    // A plain HTML form signs up too (check boxes send "on").
    let form = http
        .post(format!("{base}/api/accounts"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=form%40example.org&display_name=Form+Person&password=a+long+enough+passphrase&age_confirmed=on&accept_policy=on")
        .send()
        .await
        .expect("form sign-up");
    assert_eq!(form.status(), StatusCode::CREATED);
    // Refusals are JSON with a code; under-13 stores nothing (the address stays free).
    let young = json!({"email": "young@example.org", "display_name": "Young", "password": PASSWORD,
        "age_confirmed": false, "accept_policy": true});
    let (status, code, message) = error_of(
        http.post(format!("{base}/api/accounts"))
            .json(&young)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "age_required")
    );
    assert!(message.contains("13"));
    let (status, code, _) = error_of(
        http.post(format!("{base}/api/accounts"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );
    let (status, code, _) = error_of(
        http.post(format!("{base}/api/accounts"))
            .json(
                &json!({"email": "form@example.org", "display_name": "Again", "password": PASSWORD,
                "age_confirmed": true, "accept_policy": true}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "email_taken")
    );

    let cookie = host_cookie(&base, &outbox, "host@example.org").await;
    // The cookie as the browser got it.
    let login = http
        .post(format!("{base}/api/session"))
        .json(&json!({"email": "host@example.org", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let set = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(set.starts_with("__Host-veil_session="), "{set}");
    for flag in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(set.split("; ").any(|a| a == flag), "{flag} missing: {set}");
    }
    assert!(!set.contains("Max-Age") && !set.contains("Expires") && !set.contains("Domain"));
    assert_eq!(login.headers().get_all("set-cookie").iter().count(), 1);

    // Wrong password and unknown address: the same answer.
    let wrong = error_of(
        http.post(format!("{base}/api/session"))
            .json(&json!({"email": "host@example.org", "password": "not the password"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let unknown = error_of(
        http.post(format!("{base}/api/session"))
            .json(&json!({"email": "nobody@example.org", "password": "not the password"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);

    // Another site's page cannot act with the cookie.
    let (status, code, _) = error_of(
        http.post(format!("{base}/api/account/close"))
            .header("cookie", &cookie)
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "cross_origin")
    );

    let profile: Value = http
        .get(format!("{base}/api/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profile["email"], "host@example.org");
    assert_eq!(profile["can_host"], true);
    let changed: Value = http
        .patch(format!("{base}/api/account"))
        .header("cookie", &cookie)
        .header("origin", &base)
        .json(&json!({"display_name": "The Host"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(changed["display_name"], "The Host");

    // The host's meeting; the host joins logged in, so the session becomes a usage record.
    let created: Value = http
        .post(format!("{base}/api/rooms"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = created["room"].as_str().unwrap().to_string();
    let mut host = participant(&veil, &room, "The Host");
    host.session_cookie = Some(cookie.clone());
    let host = Participant::join(host).await.expect("host joins");
    let guest = Participant::join(participant(&veil, &room, "Guest"))
        .await
        .expect("guest joins");
    wait_until("media flows", secs(15), || {
        receives_av_from(&guest, &host.id, 20)
    })
    .await;
    host.leave().await;
    let mut usage = Vec::new();
    for _ in 0..100 {
        let export = http
            .get(format!("{base}/api/account/export"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(
            export.headers().get("content-disposition").unwrap(),
            "attachment; filename=\"veil-account-export.json\""
        );
        let export: Value = export.json().await.unwrap();
        usage = export["usage"].as_array().cloned().unwrap_or_default();
        if !usage.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(usage.len(), 1, "the host's session is in its usage record");
    assert!(usage[0]["bytes_out"].as_i64().unwrap() > 0);

    // An ended trial can still log in and export, but not host.
    set_trial_ended(&veil, &profile["id"]).await;
    let (status, code, _) = error_of(
        http.post(format!("{base}/api/rooms"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "trial_ended")
    );

    // Closing: immediate — the cookie stops working and the meeting ends.
    let closed: Value = http
        .post(format!("{base}/api/account/close"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(closed["deletion_due_at"].is_string());
    wait_until("the guest hears the meeting ended", secs(5), || {
        guest.closed().as_deref() == Some("MeetingEnded")
    })
    .await;
    let refused = http
        .get(format!("{base}/api/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let (status, _, _) = error_of(
        http.post(format!("{base}/api/rooms/{room}/join"))
            .json(&json!({"display_name": "Late"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    finish(veil, dropped).await;
}

/// Moves an account's trial end into the past, straight in its database.
async fn set_trial_ended(veil: &Running, id: &Value) {
    sqlx::query("UPDATE accounts SET trial_ends_at = 0 WHERE id = $1")
        .bind(id.as_str().unwrap())
        .execute(veil.accounts.store.pool())
        .await
        .expect("update");
}

on_both_databases!(logging_out_and_limits, logging_out_and_limits);
async fn logging_out_and_limits(db: Db) {
    let (veil, dropped) = veil_on(db).await;
    let base = veil.base_url();
    let http = reqwest::Client::new();
    let outbox = veil.accounts.outbox().expect("outbox");
    let first = host_cookie(&base, &outbox, "lou@example.org").await;
    let login = || async {
        http.post(format!("{base}/api/session"))
            .json(&json!({"email": "lou@example.org", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
    };
    let second = login().await;
    let second = second
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap();
    let second = second.split(';').next().unwrap().to_string();
    // Log out: the cookie is cleared and the session refused from then on.
    let out = http
        .delete(format!("{base}/api/session"))
        .header("cookie", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared = out.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let me = |cookie: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}/api/account"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(me(first.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(second.clone()).await, StatusCode::OK);
    // Log out everywhere.
    let third = login().await;
    let third = third.headers().get("set-cookie").unwrap().to_str().unwrap();
    let third = third.split(';').next().unwrap().to_string();
    let all: Value = http
        .delete(format!("{base}/api/sessions"))
        .header("cookie", &third)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["sessions_ended"], 2);
    assert_eq!(me(second).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(third).await, StatusCode::UNAUTHORIZED);

    // Guessing one person's password is cut off, with a Retry-After.
    let mut limited = None;
    for _ in 0..10 {
        let r = http
            .post(format!("{base}/api/session"))
            .json(&json!({"email": "lou@example.org", "password": "guess guess guess"}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("log-in attempts are limited");
    let retry: u64 = limited
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let (_, code, _) = error_of(limited).await;
    assert_eq!(code, "rate_limited");
    // Sign-ups from one address are limited too.
    let mut statuses = Vec::new();
    for n in 0..8 {
        let r = http
            .post(format!("{base}/api/accounts"))
            .json(
                &json!({"email": format!("flood{n}@example.org"), "display_name": "F",
                "password": PASSWORD, "age_confirmed": true, "accept_policy": true}),
            )
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let scrape = veil.metrics.render();
    assert!(scrape.contains("veil_account_logins_total{outcome=\"limited\"}"));
    assert!(!scrape.contains("veil_errors_total{reason=\"rate_limited\"} 0"));
    finish(veil, dropped).await;
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let veil = start_veil().await;
    let base = veil.base_url();
    let doc: Value = reqwest::get(format!("{base}/api/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .expect("OpenAPI JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    // DESIGN.md's public surface, every path present.
    for path in [
        "/api/rooms",
        "/api/rooms/{room}/join",
        "/ws",
        "/api/accounts",
        "/api/accounts/verify",
        "/api/session",
        "/api/sessions",
        "/api/account",
        "/api/account/export",
        "/api/account/close",
        "/metrics",
        "/healthz",
        "/api/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} undocumented");
    }
    // Every documented operation is served (not the fallback's 404 or a 405).
    let http = reqwest::Client::new();
    for (path, item) in paths {
        let concrete = path.replace("{room}", "AAAAAAAAAAAAAAAAAAAAAA");
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = http
                .request(method.clone(), format!("{base}{concrete}"))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                assert!(
                    !body.contains("no such resource"),
                    "{method} {path} is not routed"
                );
            }
        }
        // Every response refers to a schema that exists.
        for reference in item.to_string().split("\"$ref\":\"#/components/").skip(1) {
            let name = reference.split('"').next().unwrap();
            let (kind, name) = name.split_once('/').unwrap();
            assert!(
                doc["components"][kind][name].is_object(),
                "{kind}/{name} missing"
            );
        }
    }
    veil.stop().await.unwrap();
}
