//! Promise P2 as a test that can fail: across a scripted run (a host signs up and
//! creates a meeting, people with names meet, bad input, people leave, the host closes
//! the account and the purge runs), every metric label value comes from the fixed
//! sets, and no e-mail, password, account id, display name, room id, participant id,
//! grant, E2EE blob or client address appears in any scrape or log line.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use veil_bench::participant::{Participant, request_grant};

use common::*;

/// Everything logged during the run, at the level an operator would run with and
/// Veil's own crates at debug.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Label names and the values each may take; anything else is a leak.
fn allowed(label: &str, value: &str) -> bool {
    use veil_metrics::{DIRECTIONS, ERROR_REASONS, KINDS, LOGIN_OUTCOMES, PURGE_KINDS};
    match label {
        "reason" => {
            ERROR_REASONS.contains(&value)
                || [
                    "left",
                    "connection_failed",
                    "timeout",
                    "replaced",
                    "shutdown",
                ]
                .contains(&value)
        }
        "kind" => KINDS.contains(&value) || PURGE_KINDS.contains(&value),
        "outcome" => LOGIN_OUTCOMES.contains(&value),
        "direction" => DIRECTIONS.contains(&value) || ["up", "down"].contains(&value),
        "type" => [
            "join",
            "offer",
            "answer",
            "candidate",
            "set_max_layer",
            "e2ee",
            "state",
            "leave",
            "rejoin",
            "media_reset",
            "resume",
            "remove",
            "end_meeting",
            "invalid",
            "joined",
            "participant_joined",
            "participant_left",
            "participant_state",
            "track_published",
            "track_unpublished",
            "error",
            "closed",
            "pli",
            "fir",
            "nack",
        ]
        .contains(&value),
        "route" => {
            ["create_room", "join_room", "other"].contains(&value)
                || veil_accounts::http::ROUTES.contains(&value)
        }
        "status" => ["2xx", "4xx", "5xx"].contains(&value),
        // Histogram bucket bounds are numbers.
        "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
        _ => false,
    }
}

/// Every `name="value"` label pair in a Prometheus text scrape.
fn labels(scrape: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some(start) = line.find('{') else {
            continue;
        };
        let Some(end) = line.rfind('}') else {
            continue;
        };
        for pair in line[start + 1..end].split("\",") {
            if let Some((name, value)) = pair.split_once("=\"") {
                out.push((name.to_string(), value.trim_end_matches('"').to_string()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identifier_reaches_metrics_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        // The filter Veil installs by default, with its own crates at debug.
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{},veil=debug,veil_sfu=debug,veil_signaling=debug,veil_metrics=debug,veil_accounts=debug,sqlx=debug",
            veil::config::LogConfig::default().filter()
        )))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let veil = start_veil().await;
    let base = veil.base_url();
    let outbox = veil.accounts.outbox().expect("outbox");
    let email = "host.identifiable@example.org";
    let cookie = host_cookie(&base, &outbox, email).await;
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/api/rooms"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("create room")
        .json()
        .await
        .expect("json");
    let room = created["room"].as_str().expect("room").to_string();
    let account = http
        .get(format!("{base}/api/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("profile")
        .json::<serde_json::Value>()
        .await
        .expect("json")["id"]
        .as_str()
        .expect("account id")
        .to_string();
    // A failed log-in with a password that must not be logged either.
    let _ = http
        .post(format!("{base}/api/session"))
        .json(&serde_json::json!({"email": email, "password": "Wrong Password 123"}))
        .send()
        .await;
    let names = ["Ann Identifiable", "Bo Recognisable"];
    let ann = Participant::join(participant(&veil, &room, names[0]))
        .await
        .expect("join");
    let bo = Participant::join(participant(&veil, &room, names[1]))
        .await
        .expect("join");
    wait_until("media flows", secs(15), || {
        receives_av_from(&ann, &bo.id, 30) && receives_av_from(&bo, &ann.id, 30)
    })
    .await;
    let blob = "c2VjcmV0LWtleS1tYXRlcmlhbC1zaG91bGQtbm90LWxlYWs";
    ann.send_e2ee(Some(&bo.id), blob);
    ann.send_e2ee(Some("no-such-participant"), blob);
    wait_until("blob relayed", secs(5), || !bo.e2ee_received().is_empty()).await;
    // A grant that is not used, and one refused.
    let (_, unused_grant, _) = request_grant(&participant(&veil, &room, "Never Joins"))
        .await
        .expect("grant");
    let _ =
        veil_bench::participant::open_socket(&veil.base_url(), "/ws", Some("v1.bogus.grant")).await;
    let ids = [ann.id.clone(), bo.id.clone()];
    let scrape_during = veil.metrics.render();
    ann.leave().await;
    bo.leave().await;
    wait_until("sessions closed", secs(5), || {
        veil.sfu.stats().sessions == 0
    })
    .await;
    let closed = http
        .post(format!("{base}/api/account/close"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("close");
    assert!(closed.status().is_success());
    let purged = veil.accounts.purge().await.expect("purge");
    assert_eq!(purged.closed, 1);
    let scrape_after = reqwest::get(format!("{}/metrics", veil.base_url()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    veil.stop().await.expect("stop");

    let log_text = logs.text();
    assert!(
        !log_text.is_empty(),
        "nothing was logged; the capture is broken"
    );
    println!(
        "checked {} log lines and {} scrape lines",
        log_text.lines().count(),
        scrape_after.lines().count()
    );
    assert!(scrape_after.contains("veil_account_purges_total{kind=\"closed\"} 1"));
    let session_value = cookie.split_once('=').expect("cookie").1;
    let mut secrets: Vec<&str> = vec![
        &room,
        blob,
        &unused_grant,
        "Never Joins",
        "127.0.0.1",
        email,
        &account,
        session_value,
        "a long enough passphrase",
        "Wrong Password 123",
    ];
    secrets.extend(names);
    secrets.extend(ids.iter().map(String::as_str));
    for scrape in [&scrape_during, &scrape_after] {
        for (label, value) in labels(scrape) {
            assert!(
                allowed(&label, &value),
                "label {label}=\"{value}\" is outside the fixed sets"
            );
        }
        for secret in &secrets {
            assert!(!scrape.contains(secret), "a scrape contains {secret:?}");
        }
    }
    for secret in &secrets {
        let leaked: Vec<&str> = log_text.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "logs contain {secret:?}: {leaked:?}");
    }
}
