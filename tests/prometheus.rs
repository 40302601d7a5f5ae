//! The dashboards and alert rules, proven against a real Prometheus (Debian's
//! `prometheus` package; the README test command installs it) scraping a running Veil
//! while headless participants hold a call: every panel query must evaluate without
//! error and return data, every alert expression must evaluate, and `promtool` must
//! accept the shipped configuration, the rules and a real scrape.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use veil_bench::participant::{Participant, VideoConfig};
use veil_sfu::Layer;

use common::*;

const PROMETHEUS: &str = "prometheus";
const PROMTOOL: &str = "promtool";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A Prometheus server for the test; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "veil-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = TempDir::new("prometheus");
    let rules = repo("metrics/prometheus/rules.yml");
    // The shipped configuration with a fast scrape and this test's target.
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: veil\n    static_configs:\n      - targets: [\"{target}\"]\n",
        rules.display()
    );
    let config_path = dir.0.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write config");
    let port = free_port();
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus must be installed: the README test command installs it (apt-get install prometheus)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn query(client: &reqwest::Client, prom: &Prometheus, expr: &str) -> Value {
    let response = client
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", expr)])
        .send()
        .await
        .expect("query Prometheus");
    response.json().await.expect("Prometheus JSON")
}

/// Every panel query of a dashboard, with Grafana's interval variables filled in.
fn panel_queries(dashboard: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dashboard).expect("dashboard");
    let json: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s")
                .replace("$__range", "5m");
            out.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    out
}

fn alert_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("metrics/prometheus/rules.yml")).expect("rules");
    // The rules file is simple YAML: `- alert: Name` followed by `expr: …` lines.
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("- alert:") {
            name = n.trim().to_string();
        } else if let Some(e) = line.strip_prefix("expr:") {
            out.push((name.clone(), e.trim().to_string()));
        }
    }
    out
}

fn run_promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed with prometheus");
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_accepts_the_shipped_config_and_rules() {
    let (ok, out) = run_promtool(
        &[
            "check",
            "config",
            &repo("metrics/prometheus/prometheus.yml").to_string_lossy(),
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = run_promtool(
        &[
            "check",
            "rules",
            &repo("metrics/prometheus/rules.yml").to_string_lossy(),
        ],
        None,
    );
    assert!(ok, "{out}");
    // The rules' own unit tests: each alert fires on the series that should raise it.
    let (ok, out) = run_promtool(
        &[
            "test",
            "rules",
            &repo("metrics/prometheus/rules_test.yml").to_string_lossy(),
        ],
        None,
    );
    assert!(ok, "promtool test rules: {out}");
}

/// What the accounts dashboard shows, done as people would: two sign-ups with
/// verification and log-in, a refused log-in, one account closed and purged, and one
/// closed that still awaits the purge (the pending gauge).
async fn account_activity(veil: &veil::Running) {
    let base = veil.base_url();
    let outbox = veil.accounts.outbox().expect("outbox");
    let client = reqwest::Client::new();
    let gone = host_cookie(&base, &outbox, "gone@example.org").await;
    let pending = host_cookie(&base, &outbox, "pending@example.org").await;
    let refused = client
        .post(format!("{base}/api/session"))
        .json(&serde_json::json!({ "email": "gone@example.org", "password": "not the passphrase" }))
        .send()
        .await
        .expect("log in");
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    let close = |cookie: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let closed = client
                .post(format!("{base}/api/account/close"))
                .header("cookie", cookie)
                .send()
                .await
                .expect("close");
            assert!(closed.status().is_success(), "{}", closed.status());
        }
    };
    close(gone).await;
    let report = veil.accounts.purge().await.expect("purge");
    assert_eq!(report.closed, 1);
    close(pending).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_evaluates_against_a_live_call() {
    let veil = start_veil().await;
    let prom = start_prometheus(veil.http_addr);
    let client = reqwest::Client::new();
    // Prometheus scrapes from before the call starts, so every event lands in a rate window.
    let samples = |expr: &'static str| {
        let client = client.clone();
        let prom_url = prom.url.clone();
        async move {
            // Not answering yet counts as no samples; the callers' deadlines decide.
            let Ok(response) = client
                .get(format!("{prom_url}/api/v1/query"))
                .query(&[("query", expr)])
                .send()
                .await
            else {
                return 0.0;
            };
            let answer: Value = response.json().await.unwrap_or_default();
            answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    let started = Instant::now();
    while samples("count_over_time(up{job=\"veil\"}[1m])").await < 3.0 {
        assert!(
            started.elapsed() < secs(60),
            "Prometheus did not scrape Veil"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    account_activity(&veil).await;

    let room = new_room(&veil);
    let mut host = participant(&veil, &room, "Host");
    host.video = Some(VideoConfig {
        simulcast: true,
        ..VideoConfig::default()
    });
    let host = Participant::join(host).await.expect("join");
    let guest = Participant::join(participant(&veil, &room, "Guest"))
        .await
        .expect("join");
    let brief = Participant::join(participant(&veil, &room, "Brief"))
        .await
        .expect("join");
    wait_until("media flows", secs(15), || {
        receives_av_from(&guest, &host.id, 30) && receives_av_from(&host, &guest.id, 30)
    })
    .await;
    // A layer switch, and a session that ends (for the session-length panel).
    let track = guest
        .published_tracks()
        .into_values()
        .find(|t| t.participant == host.id && !t.layers.is_empty())
        .expect("simulcast track");
    guest.set_max_layer(&track.track, Layer::Quarter);
    brief.leave().await;
    // Two statistics samples (every 5 s) and a few scrapes after them.
    let call = Instant::now();
    while samples("sum(veil_sfu_receiver_jitter_seconds_count)").await < 2.0
        || call.elapsed() < secs(8)
    {
        assert!(
            call.elapsed() < secs(40),
            "no receiver statistics were sampled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut failures = Vec::new();
    let dashboards = [
        repo("metrics/grafana/dashboards/veil-overview.json"),
        repo("metrics/grafana/dashboards/veil-accounts.json"),
    ];
    // Every dashboard shipped is one of these: a new one must be proven here too.
    let shipped = std::fs::read_dir(repo("metrics/grafana/dashboards"))
        .expect("dashboards")
        .count();
    assert_eq!(
        shipped,
        dashboards.len(),
        "a dashboard is not evaluated here"
    );
    for dashboard in &dashboards {
        for (panel, expr) in panel_queries(dashboard) {
            let answer = query(&client, &prom, &expr).await;
            let result = &answer["data"]["result"];
            let nan = result
                .as_array()
                .is_some_and(|r| r.iter().any(|v| v["value"][1] == "NaN"));
            if answer["status"] != "success" {
                failures.push(format!("{panel}: {expr}: {answer}"));
            } else if result.as_array().is_none_or(|r| r.is_empty()) {
                failures.push(format!("{panel}: {expr}: empty result"));
            } else if nan {
                // A quantile of an empty window: the call produced no data for it.
                failures.push(format!("{panel}: {expr}: no observations (NaN)"));
            } else {
                println!("{panel}: {expr} = {result}");
            }
        }
    }
    // The accounts panels show what was done, not just something.
    for (expr, low, high) in [
        ("sum(increase(veil_account_signups_total[5m]))", 1.5, 10.0),
        ("sum(increase(veil_account_closures_total[5m]))", 1.5, 10.0),
        ("sum(veil_account_deletions_pending)", 1.0, 1.0),
        ("sum(veil_account_deletions_overdue)", 0.0, 0.0),
        (
            "sum(increase(veil_account_purges_total{kind=\"closed\"}[5m]))",
            0.5,
            5.0,
        ),
        (
            "sum(increase(veil_account_logins_total{outcome=\"failed\"}[5m]))",
            0.5,
            5.0,
        ),
    ] {
        let answer = query(&client, &prom, expr).await;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok());
        if !value.is_some_and(|v| (low..=high).contains(&v)) {
            failures.push(format!("{expr} = {value:?}, expected {low}..={high}"));
        }
    }
    for (alert, expr) in alert_expressions() {
        let answer = query(&client, &prom, &expr).await;
        if answer["status"] != "success" {
            failures.push(format!("alert {alert}: {expr}: {answer}"));
        }
        // A healthy call fires nothing.
        if answer["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            failures.push(format!("alert {alert} fires on a healthy call: {answer}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // promtool's linter on a real scrape.
    let scrape = reqwest::get(format!("{}/metrics", veil.base_url()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    // The scrape itself, for the record (shown with --nocapture).
    println!("--- scrape during the call ---\n{scrape}");
    let (ok, out) = run_promtool(&["check", "metrics"], Some(&scrape));
    assert!(ok, "promtool check metrics: {out}");

    host.leave().await;
    guest.leave().await;
    veil.stop().await.expect("stop");
}
