//! The split deployment as separate OS processes on loopback: `veil signaling` and two
//! `veil sfu` nodes linked over QUIC with pinned mutual TLS. Rooms spread over both
//! nodes; a node killed with SIGKILL mid-call is noticed, and its participants (the
//! headless participant rejoins by itself) receive media again on the other node; a
//! node with an unpinned certificate never registers. Then signaling itself is killed
//! while people sign up: the node registers again when it returns, every meeting can be
//! joined again by its link (the host key still works), and no acknowledged sign-up or
//! any of the host's data is lost.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use veil_bench::participant::{Participant, ParticipantConfig, VideoConfig};
use veil_sfu::identity::Identity;

use common::*;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Starts `veil <role>`; its output goes to `<config>.log` (appended across restarts),
/// which a failure message shows.
fn spawn(config: &Path, role: &str) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))
        .expect("log file");
    Proc(
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .arg("--config")
            .arg(config)
            .arg("--log")
            .arg("warn")
            .arg(role)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start veil"),
    )
}

/// Each participant's state and the processes' warnings, for a failure message.
fn describe(people: &[(usize, Participant)], dir: &Path) -> String {
    let mut out = String::new();
    for (i, p) in people {
        let tracks: Vec<String> = p
            .received()
            .iter()
            .map(|t| {
                format!(
                    "{}/{:?}:{}{}",
                    t.publisher,
                    t.kind,
                    t.packets,
                    if t.ended { " ended" } else { "" }
                )
            })
            .collect();
        out.push_str(&format!(
            "room {i} {}: sent={:?} published={:?} connected={} resets={} resumes={} closed={:?} errors={:?} received=[{}]\n",
            p.id,
            p.sent()
                .iter()
                .map(|((kind, _), s)| (*kind, s.packets))
                .collect::<Vec<_>>(),
            p.published_tracks().keys().collect::<Vec<_>>(),
            p.is_connected(),
            p.media_resets(),
            p.resumes(),
            p.closed(),
            p.errors(),
            tracks.join(", ")
        ));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log")
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(400)..];
                out.push_str(&format!("--- {}\n{}\n", path.display(), tail.join("\n")));
            }
        }
    }
    out
}

struct Node {
    name: String,
    config: PathBuf,
    http: String,
    fingerprint: String,
}

fn node(dir: &Path, name: &str, signaling_node_addr: &str, signaling_fp: &str) -> Node {
    let identity_dir = dir.join(name);
    let fingerprint = Identity::load_or_create(&identity_dir)
        .expect("identity")
        .fingerprint();
    let http = format!("127.0.0.1:{}", free_port());
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[sfu]\nmedia_addr = \"127.0.0.1:{}\"\nhttp_addr = \"{http}\"\n[node]\nsignaling_addr = \"{signaling_node_addr}\"\nsignaling_fingerprint = \"{signaling_fp}\"\nname = \"{name}\"\nregion = \"test\"\nidentity_dir = \"{}\"\n",
            free_udp_port(),
            identity_dir.display()
        ),
    )
    .expect("write config");
    Node {
        name: name.to_string(),
        config,
        http,
        fingerprint,
    }
}

async fn get_json(url: &str) -> Option<Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

fn nodes_up(health: &Value) -> Vec<(String, bool, u64)> {
    health["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    (
                        n["name"].as_str().unwrap_or("").to_string(),
                        n["up"].as_bool().unwrap_or(false),
                        n["load"]["sessions"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn light(server: &str, room: &str, name: &str) -> ParticipantConfig {
    let mut c = ParticipantConfig::new(server, room, name);
    c.video = Some(VideoConfig {
        fps: 15,
        bitrate_bps: 200_000,
        keyframe_interval: Duration::from_secs(2),
        simulcast: false,
    });
    c.record_payloads = false;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_survive_a_killed_node_and_a_killed_signaling() {
    let dir = std::env::temp_dir().join(format!("veil-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let signaling_identity = dir.join("signaling");
    let signaling_fp = Identity::load_or_create(&signaling_identity)
        .expect("identity")
        .fingerprint();
    let node_addr = format!("127.0.0.1:{}", free_udp_port());
    let nodes = [
        node(&dir, "sfu-a", &node_addr, &signaling_fp),
        node(&dir, "sfu-b", &node_addr, &signaling_fp),
    ];
    // Known to nobody: its certificate is not pinned by signaling.
    let forged = node(&dir, "sfu-forged", &node_addr, &signaling_fp);
    let http = format!("127.0.0.1:{}", free_port());
    let server = format!("http://{http}");
    let signaling_config = dir.join("signaling.toml");
    std::fs::write(
        &signaling_config,
        format!(
            "[signaling]\nhttp_addr = \"{http}\"\nnode_addr = \"{node_addr}\"\nnode_fingerprints = [\"{}\", \"{}\"]\nidentity_dir = \"{}\"\n[accounts]\ndatabase_url = \"sqlite://{}\"\n[accounts.mail]\noutbox_dir = \"{}\"\n",
            nodes[0].fingerprint,
            nodes[1].fingerprint,
            signaling_identity.display(),
            dir.join("veil.db").display(),
            dir.join("outbox").display()
        ),
    )
    .expect("write config");
    let _signaling = spawn(&signaling_config, "signaling");
    let mut node_procs: Vec<Option<Proc>> = nodes
        .iter()
        .map(|n| Some(spawn(&n.config, "sfu")))
        .collect();
    let _forged = spawn(&forged.config, "sfu");

    let health_url = format!("{server}/healthz");
    let started = Instant::now();
    loop {
        let up = get_json(&health_url)
            .await
            .map(|h| nodes_up(&h))
            .unwrap_or_default();
        if up.iter().filter(|(_, up, _)| *up).count() == 2 {
            break;
        }
        assert!(
            started.elapsed() < secs(30),
            "nodes did not register: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Six rooms of two people each, created by a host with an account.
    let cookie = common::host_cookie(&server, &dir.join("outbox"), "host@example.org").await;
    let client = reqwest::Client::new();
    let mut rooms = Vec::new();
    let mut host_keys = Vec::new();
    for _ in 0..6 {
        let created: Value = client
            .post(format!("{server}/api/rooms"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("create room")
            .json()
            .await
            .expect("json");
        rooms.push(created["room"].as_str().expect("room id").to_string());
        host_keys.push(created["host_key"].as_str().expect("host key").to_string());
    }
    let mut people = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        for name in ["A", "B"] {
            let p = Participant::join(light(&server, room, &format!("{name}{i}")))
                .await
                .expect("join");
            people.push((i, p));
        }
    }
    let everyone_receives = |people: &[(usize, Participant)], min: u64| {
        people.iter().all(|(i, p)| {
            people
                .iter()
                .filter(|(j, o)| j == i && o.id != p.id)
                .all(|(_, o)| receives_av_from(p, &o.id, min))
        })
    };
    wait_until_explained(
        "every participant receives its room's media",
        secs(30),
        || everyone_receives(&people, 20),
        || describe(&people, &dir),
    )
    .await;
    let health = get_json(&health_url).await.expect("health");
    let spread = nodes_up(&health);
    println!("placement: {spread:?}");
    assert!(
        spread.iter().all(|(_, up, sessions)| *up && *sessions > 0),
        "rooms not spread over both nodes: {spread:?}"
    );
    assert!(
        !spread.iter().any(|(name, ..)| name == &forged.name),
        "the unpinned node registered"
    );
    // Nobody receives from another room.
    for (i, p) in &people {
        for t in p.received() {
            let publisher_room = people
                .iter()
                .find(|(_, o)| o.id == t.publisher)
                .map(|(j, _)| *j);
            assert_eq!(publisher_room, Some(*i), "media crossed rooms");
        }
    }

    // Kill one node the hard way, mid-call.
    let victim = &nodes[0];
    let victim_sessions = get_json(&format!("http://{}/healthz", victim.http))
        .await
        .and_then(|h| h["sessions"].as_u64())
        .unwrap_or(0);
    assert!(victim_sessions > 0);
    let before: Vec<u64> = people.iter().map(|(_, p)| p.media_resets()).collect();
    if let Some(mut proc) = node_procs[0].take() {
        let _ = proc.0.kill(); // SIGKILL
        let _ = proc.0.wait();
    }
    let killed = Instant::now();
    wait_until(
        "the lost node's participants receive media again",
        secs(15),
        || {
            let moved: Vec<&(usize, Participant)> = people
                .iter()
                .zip(&before)
                .filter(|((_, p), b)| p.media_resets() > **b)
                .map(|(p, _)| p)
                .collect();
            !moved.is_empty()
                && moved.iter().all(|(i, p)| {
                    people
                        .iter()
                        .filter(|(j, o)| j == i && o.id != p.id)
                        .all(|(_, o)| receives_av_from(p, &o.id, 10))
                })
        },
    )
    .await;
    let failover = killed.elapsed();
    println!("failover: SIGKILL → media again in {failover:?} ({victim_sessions} sessions moved)");
    assert!(
        failover < secs(5),
        "failover took {failover:?}, more than the 5 s the design allows"
    );
    let moved = people
        .iter()
        .zip(&before)
        .filter(|((_, p), b)| p.media_resets() > **b)
        .count() as u64;
    assert_eq!(
        moved, victim_sessions,
        "every session of the lost node rejoined"
    );
    // Everyone, moved or not, still receives.
    wait_until_explained(
        "everyone receives after failover",
        secs(10),
        || everyone_receives(&people, 10),
        || describe(&people, &dir),
    )
    .await;
    let health = get_json(&health_url).await.expect("health");
    assert_eq!(health["sessions"].as_u64(), Some(12), "{health}");
    assert_eq!(health["rooms"].as_u64(), Some(6), "{health}");
    // The surviving node carries everyone once its next heartbeats report it.
    let mut status = nodes_up(&health);
    let waiting = Instant::now();
    while !(status.iter().any(|(n, up, _)| n == "sfu-a" && !up)
        && status
            .iter()
            .any(|(n, up, s)| n == "sfu-b" && *up && *s == 12))
    {
        assert!(waiting.elapsed() < secs(5), "{status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = get_json(&health_url)
            .await
            .map(|h| nodes_up(&h))
            .unwrap_or_default();
    }

    // Now signaling, killed the hard way mid-call while people sign up.
    let export_before = export(&server, &cookie).await;
    let mut signups = SignUps::start(&server);
    wait_until("some sign-ups acknowledged", secs(20), || {
        signups.acknowledged().len() >= 3
    })
    .await;
    drop(_signaling); // SIGKILL
    let killed = Instant::now();
    signups.before_kill = signups.acknowledged().len();
    // The node ends the sessions it carried for the lost signaling; every page's
    // socket is gone.
    wait_until("every participant notices", secs(10), || {
        people.iter().all(|(_, p)| !p.is_connected())
    })
    .await;
    let _signaling = spawn(&signaling_config, "signaling");
    let started = Instant::now();
    while !nodes_up(&get_json(&health_url).await.unwrap_or_default())
        .iter()
        .any(|(n, up, _)| n == "sfu-b" && *up)
    {
        assert!(
            started.elapsed() < secs(30),
            "the node did not register again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // As the meeting page does when its socket cannot resume: join again by the same
    // link. Every room is still there; the host key still makes its holder the host.
    let hosts: Vec<(String, String)> = rooms.iter().cloned().zip(host_keys).collect();
    for (_, p) in people.drain(..) {
        drop(p);
    }
    for (i, (room, host_key)) in hosts.iter().enumerate() {
        let mut host = light(&server, room, &format!("A{i}"));
        host.host_key = Some(host_key.clone());
        people.push((i, Participant::join(host).await.expect("host rejoins")));
        let guest = light(&server, room, &format!("B{i}"));
        people.push((i, Participant::join(guest).await.expect("guest rejoins")));
    }
    wait_until_explained(
        "every room has media again",
        secs(30),
        || everyone_receives(&people, 10),
        || describe(&people, &dir),
    )
    .await;
    println!(
        "signaling restart: SIGKILL → media again in {:?} (6 rooms, 12 people)",
        killed.elapsed()
    );
    // The node ended the sessions the lost link carried: nobody rejoining is offered a
    // track of someone who is gone.
    for (i, p) in &people {
        for track in p.published_tracks().values() {
            assert!(
                people
                    .iter()
                    .any(|(j, o)| j == i && o.id == track.participant),
                "{} was offered a track of {}, who left with the lost link",
                p.id,
                track.participant
            );
        }
    }
    // No account data lost: the host is still logged in with the same data, and every
    // sign-up acknowledged before the kill (or after the restart) is there.
    wait_until("more sign-ups acknowledged", secs(20), || {
        signups.acknowledged().len() >= signups.before_kill + 2
    })
    .await;
    let before_kill = signups.before_kill;
    let acknowledged = signups.stop();
    assert_eq!(
        without_volatile(export(&server, &cookie).await),
        without_volatile(export_before),
        "the host's data changed across the restart"
    );
    for (n, (email, account)) in acknowledged.iter().enumerate() {
        let link = veil_accounts::mail::latest_link(
            &dir.join("outbox"),
            account,
            veil_accounts::mail::Purpose::Verify,
        )
        .expect("verification mail");
        let token = link.rsplit_once('#').expect("fragment").1;
        // From an address of its own, as each person would click their link.
        let verified = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 9, n as u8 + 1)))
            .post(format!("{server}/api/accounts/verify"))
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .expect("verify");
        assert!(
            verified.status().is_success(),
            "acknowledged sign-up {email} lost: {}",
            verified.status()
        );
    }
    println!(
        "{} acknowledged sign-ups ({before_kill} before the kill), all kept",
        acknowledged.len()
    );
    // An ended meeting stays ended after a restart.
    let ender = people
        .iter()
        .find(|(i, _)| *i == 0)
        .map(|(_, p)| p)
        .expect("host of room 0");
    ender.end_meeting();
    wait_until("the meeting ends", secs(10), || {
        people
            .iter()
            .filter(|(i, _)| *i == 0)
            .all(|(_, p)| p.closed().is_some())
    })
    .await;
    let ended = reqwest::Client::new()
        .post(format!("{server}/api/rooms/{}/join", hosts[0].0))
        .json(&serde_json::json!({ "display_name": "Late" }))
        .send()
        .await
        .expect("join ended");
    assert_eq!(ended.status(), 404);

    for (_, p) in people {
        p.leave().await;
    }
    drop(node_procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The account's export, as JSON.
async fn export(server: &str, cookie: &str) -> Value {
    let res = reqwest::Client::new()
        .get(format!("{server}/api/account/export"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("export");
    assert!(res.status().is_success(), "export: {}", res.status());
    res.json().await.expect("export json")
}

/// An export without what changes by merely looking (its time, the session's last use).
fn without_volatile(mut export: Value) -> Value {
    if let Some(map) = export.as_object_mut() {
        map.remove("exported_at");
    }
    if let Some(sessions) = export["sessions"].as_array_mut() {
        for s in sessions {
            if let Some(map) = s.as_object_mut() {
                map.remove("last_seen_at");
            }
        }
    }
    export
}

/// An HTTP client whose requests come from `from` (any 127.0.0.0/8 address is local).
fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// Sign-ups streaming in from many loopback addresses (the per-address limit would
/// otherwise stop them), each acknowledged one remembered as (e-mail, account id).
struct SignUps {
    done: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
    before_kill: usize,
}

impl SignUps {
    fn start(server: &str) -> SignUps {
        let done = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let done = done.clone();
            let server = server.to_string();
            async move {
                for n in 0u32.. {
                    let from = IpAddr::V4(Ipv4Addr::new(
                        127,
                        0,
                        1 + (n / 250) as u8,
                        (n % 250 + 1) as u8,
                    ));
                    let client = client_from(from);
                    let email = format!("signup{n}@example.org");
                    let res = client
                        .post(format!("{server}/api/accounts"))
                        .json(&serde_json::json!({
                            "email": email,
                            "display_name": format!("Person {n}"),
                            "password": "a long enough passphrase",
                            "age_confirmed": true,
                            "accept_policy": true,
                        }))
                        .send()
                        .await;
                    match res {
                        Ok(res) if res.status() == 201 => {
                            if let Ok(body) = res.json::<Value>().await
                                && let Some(account) = body["account"].as_str()
                            {
                                done.lock()
                                    .expect("lock")
                                    .push((email, account.to_string()));
                            }
                        }
                        // Refused while signaling is down: not acknowledged, not counted.
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        SignUps {
            done,
            task,
            before_kill: 0,
        }
    }

    fn acknowledged(&self) -> Vec<(String, String)> {
        self.done.lock().expect("lock").clone()
    }

    fn stop(self) -> Vec<(String, String)> {
        self.task.abort();
        self.acknowledged()
    }
}
