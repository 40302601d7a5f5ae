//! docker-compose.yml, checked without a Docker engine: its structure against the
//! Compose specification (check-jsonschema, installed by the README test command), the
//! files it mounts, and the `veil` binary started directly with the environment the
//! compose file gives it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn compose() -> String {
    std::fs::read_to_string(repo("docker-compose.yml")).expect("docker-compose.yml")
}

#[test]
fn compose_file_follows_the_compose_specification() {
    let out = Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(repo("docker-compose.yml"))
        .output()
        .expect("check-jsonschema must be installed: the README test command installs it");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_mounts_what_exists_and_keeps_grafana_private() {
    let text = compose();
    for service in ["postgres:", "signaling:", "sfu:", "prometheus:", "grafana:"] {
        assert!(
            text.contains(&format!("\n  {service}")),
            "service {service} missing"
        );
    }
    // Every bind-mounted path is in the repository.
    for line in text.lines() {
        let line = line.trim().trim_start_matches("- ");
        if let Some(rest) = line.strip_prefix("./")
            && let Some((path, _)) = rest.split_once(':')
        {
            assert!(repo(path).exists(), "compose mounts missing ./{path}");
        }
    }
    assert!(repo("Dockerfile").exists());
    // The dashboards provider reads where compose mounts them.
    let provider =
        std::fs::read_to_string(repo("metrics/grafana/provisioning/dashboards/veil.yml"))
            .expect("provider");
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(text.contains("./metrics/grafana/dashboards:/var/lib/grafana/dashboards:ro"));
    // No anonymous viewer; the admin password comes from the environment; no phoning home.
    assert!(text.contains("GF_AUTH_ANONYMOUS_ENABLED: \"false\""));
    assert!(text.contains("GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?"));
    assert!(text.contains("GF_ANALYTICS_REPORTING_ENABLED: \"false\""));
    // The datasource points at the compose Prometheus service.
    let datasource = std::fs::read_to_string(repo(
        "metrics/grafana/provisioning/datasources/prometheus.yml",
    ))
    .expect("datasource");
    assert!(datasource.contains("url: http://prometheus:9090"));
    assert!(datasource.contains("uid: veil-prometheus"));
    // Prometheus scrapes the services compose names.
    let prometheus =
        std::fs::read_to_string(repo("metrics/prometheus/prometheus.yml")).expect("prometheus");
    assert!(prometheus.contains("targets: [\"signaling:8080\"]"));
    assert!(prometheus.contains("targets: [\"sfu:8081\"]"));
}

/// A compose service's environment, with compose's host names and secrets replaced
/// by this machine's loopback equivalents in `overrides`.
fn service_environment(service: &str, overrides: &[(&str, String)]) -> Vec<(String, String)> {
    let text = compose();
    let start = text
        .find(&format!("\n  {service}:"))
        .unwrap_or_else(|| panic!("service {service}"));
    let section = &text[start..];
    let env_start = section.find("environment:").expect("environment");
    let mut out = Vec::new();
    for line in section[env_start..].lines().skip(1) {
        let trimmed = line.trim();
        if !line.starts_with("      ") || trimmed.is_empty() {
            break;
        }
        if let Some((key, value)) = trimmed.split_once(": ") {
            let value = overrides
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| value.to_string());
            out.push((key.to_string(), value));
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_service(service: &str, env: Vec<(String, String)>, dir: &Path) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .arg(service)
            .envs(env)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start veil"),
    )
}

/// Sends SIGTERM, as `docker stop` does; the process must exit with success soon after.
fn stops_on_sigterm(proc: &mut Proc, what: &str) {
    let pid = proc.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {what}");
    let asked = Instant::now();
    loop {
        if let Some(status) = proc.0.try_wait().expect("wait") {
            assert!(status.success(), "{what} exited with {status} on SIGTERM");
            return;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "{what} ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn json(url: &str) -> Option<serde_json::Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

#[tokio::test]
async fn signaling_and_sfu_run_with_their_compose_environments() {
    let root = std::env::temp_dir().join(format!("veil-compose-{}", std::process::id()));
    let (signaling_dir, sfu_dir) = (root.join("signaling"), root.join("sfu"));
    std::fs::create_dir_all(&signaling_dir).expect("dir");
    std::fs::create_dir_all(&sfu_dir).expect("dir");
    // What `docker compose run --rm <service> fingerprint <role>` prints, in each
    // service's own data directory.
    let fingerprint = |dir: &Path, role: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["fingerprint", role])
            .current_dir(dir)
            .output()
            .expect("veil fingerprint");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let signaling_fp = fingerprint(&signaling_dir, "signaling");
    let sfu_fp = fingerprint(&sfu_dir, "sfu");
    assert_eq!(signaling_fp.len(), 64);
    assert_eq!(
        fingerprint(&signaling_dir, "signaling"),
        signaling_fp,
        "not kept"
    );

    let http = format!("127.0.0.1:{}", free_port());
    let node = format!("127.0.0.1:{}", free_port());
    // Compose's postgres service, played by the test server: a fresh database.
    let (database_url, database) = common::fresh_postgres("veil_compose").await;
    let sfu_http = format!("127.0.0.1:{}", free_port());
    let media = format!("127.0.0.1:{}", free_port());
    let signaling_env = service_environment(
        "signaling",
        &[
            ("VEIL_HTTP_ADDR", http.clone()),
            ("VEIL_NODE_ADDR", node.clone()),
            ("VEIL_NODE_FINGERPRINTS", sfu_fp),
            ("VEIL_DATABASE_URL", database_url.clone()),
            ("VEIL_PUBLIC_URL", format!("http://{http}")),
            ("VEIL_SMTP_URL", String::new()),
        ],
    );
    let sfu_env = service_environment(
        "sfu",
        &[
            ("VEIL_HTTP_ADDR", sfu_http.clone()),
            ("VEIL_MEDIA_ADDR", media),
            ("VEIL_ANNOUNCE_IP", "127.0.0.1".into()),
            ("VEIL_SIGNALING_ADDR", node),
            ("VEIL_SIGNALING_FINGERPRINT", signaling_fp),
        ],
    );
    assert!(sfu_env.iter().any(|(k, _)| k == "VEIL_NODE_NAME"));
    let mut signaling = run_service("signaling", signaling_env, &signaling_dir);
    let mut sfu = run_service("sfu", sfu_env, &sfu_dir);

    let started = Instant::now();
    let health = loop {
        if let Some(h) = json(&format!("http://{http}/healthz")).await
            && h["nodes"][0]["up"] == true
        {
            break h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the SFU node did not register with signaling"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["nodes"][0]["name"], "sfu-1");
    let sfu_health = json(&format!("http://{sfu_http}/healthz"))
        .await
        .expect("sfu health");
    assert_eq!(sfu_health["status"], "ok");
    for url in [
        format!("http://{http}/metrics"),
        format!("http://{sfu_http}/metrics"),
    ] {
        let text = reqwest::get(&url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(text.contains("process_resident_memory_bytes"), "{url}");
        assert!(text.contains("veil_sfu_sessions"), "{url}");
    }
    // Accounts live in PostgreSQL: a sign-up through signaling lands there.
    let signed = reqwest::Client::new()
        .post(format!("http://{http}/api/accounts"))
        .json(
            &serde_json::json!({"email": "compose@example.org", "display_name": "C",
            "password": "a long enough passphrase", "age_confirmed": true, "accept_policy": true}),
        )
        .send()
        .await
        .expect("sign up");
    assert_eq!(signed.status(), reqwest::StatusCode::CREATED);
    {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect(&database_url)
            .await
            .expect("db");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(&mut db)
            .await
            .expect("count");
        assert_eq!(n, 1);
    }
    // `docker compose stop` sends SIGTERM: each service stops cleanly by itself.
    stops_on_sigterm(&mut sfu, "veil sfu");
    stops_on_sigterm(&mut signaling, "veil signaling");
    common::drop_postgres(&database).await;
    let _ = std::fs::remove_dir_all(&root);
}
