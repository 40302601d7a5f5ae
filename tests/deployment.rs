//! docker-compose.yml, checked without a Docker engine: its structure against the
//! Compose specification (check-jsonschema, installed by the README test command), the
//! files it mounts, and the `veil` binary started directly with the environment the
//! compose file gives it.

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
    for service in ["postgres:", "veil:", "prometheus:", "grafana:"] {
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
    // Prometheus scrapes the service compose names.
    let prometheus =
        std::fs::read_to_string(repo("metrics/prometheus/prometheus.yml")).expect("prometheus");
    assert!(prometheus.contains("targets: [\"veil:8080\"]"));
}

/// The `veil` service's environment, with compose's host names and secrets replaced
/// by this machine's loopback equivalents.
fn service_environment(http: &str, media: &str) -> Vec<(String, String)> {
    let text = compose();
    let start = text.find("\n  veil:").expect("veil service");
    let section = &text[start..];
    let env_start = section.find("environment:").expect("environment");
    let mut out = Vec::new();
    for line in section[env_start..].lines().skip(1) {
        let trimmed = line.trim();
        if !line.starts_with("      ") || trimmed.is_empty() {
            break;
        }
        if let Some((key, value)) = trimmed.split_once(": ") {
            let value = match key {
                "VEIL_HTTP_ADDR" => http.to_string(),
                "VEIL_MEDIA_ADDR" => media.to_string(),
                "VEIL_ANNOUNCE_IP" => "127.0.0.1".to_string(),
                // Postgres is not what this test is about; keep the embedded default.
                "VEIL_DATABASE_URL" => continue,
                _ => value.to_string(),
            };
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

#[tokio::test]
async fn the_veil_service_runs_with_its_compose_environment() {
    let http = format!("127.0.0.1:{}", free_port());
    let media = format!("127.0.0.1:{}", free_port());
    let env = service_environment(&http, &media);
    assert!(env.iter().any(|(k, _)| k == "VEIL_ANNOUNCE_IP"));
    let data = std::env::temp_dir().join(format!("veil-compose-{}", std::process::id()));
    std::fs::create_dir_all(&data).expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
        .envs(env)
        .current_dir(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start veil");
    let url = format!("http://{http}/healthz");
    let started = Instant::now();
    let health = loop {
        if let Ok(r) = reqwest::get(&url).await
            && let Ok(body) = r.text().await
        {
            break body;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("veil did not answer /healthz");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
    assert!(health.contains("\"ok\""), "{health}");
    assert!(metrics.contains("veil_sfu_sessions 0"));
    assert!(metrics.contains("process_resident_memory_bytes"));
}
