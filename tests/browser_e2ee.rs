//! The Rust headless participant as a full end-to-end encryption member of a browser
//! meeting, and the proof that no key reaches the server (promise P1).
//!
//! `web/e2e/member.mjs` runs in a loopback-only network namespace (`common/browser.rs`):
//! it starts `veil` and two Chromium participants, then this very test binary again as
//! [`headless_participants`] (ignored by a normal run), which joins a member holding the
//! room secret and an observer holding a wrong one, and answers the script's commands on
//! stdin with one `HELPER {json}` line each. The script checks, and prints as `RESULT`:
//! (a) the member decrypts the browsers' video into valid VP8 key frames and their audio
//! into valid Opus, and shows the browsers' security code; (b) the observer decrypts
//! nothing while the browsers carry on; (c) after the member leaves the browsers send
//! under a new KID, and the keys the member held decrypt none of those frames though they
//! decrypted the ones before; (d) neither the room secret nor any media key appears in
//! what the pages and the headless participants sent, in the RTP the SFU forwarded, or
//! in a memory dump of the running `veil` — while controls that did reach the server are
//! found there.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::browser;
use serde_json::{Value, json};
use veil_bench::e2ee::HeldKey;
use veil_bench::participant::{CapturedFrame, FrameStats, Participant, ParticipantConfig};
use veil_bench::payload::payload_hash;
use veil_bench::sframe::KeyRing;

#[test]
fn headless_member_in_a_browser_meeting() {
    if browser::skipped() {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let run = browser::run_script(
        "member.mjs",
        &[("VEIL_E2E_HELPER", exe.to_str().expect("a UTF-8 path"))],
        Duration::from_secs(170),
        &["RESULT "],
    );
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("a RESULT line");
    let result: Value = serde_json::from_str(line).expect("RESULT is JSON");
    let n = |path: &str| {
        result
            .pointer(path)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{path} in {result}"))
    };
    // (a) and (b), per browser.
    for browser in ["/browsers/0", "/browsers/1"] {
        assert!(
            n(&format!("{browser}/member/valid_key_frames")) > 0,
            "{result}"
        );
        assert!(n(&format!("{browser}/member/valid_opus")) > 0, "{result}");
        assert_eq!(n(&format!("{browser}/member/invalid_opus")), 0, "{result}");
        assert!(n(&format!("{browser}/observer/frames")) > 0, "{result}");
        assert_eq!(n(&format!("{browser}/observer/decrypted")), 0, "{result}");
    }
    assert_eq!(
        result.pointer("/member_code"),
        result.pointer("/browser_code"),
        "{result}"
    );
    // (c)
    assert!(n("/old_keys/before_decrypted") > 0, "{result}");
    assert!(n("/old_keys/after_tried") > 0, "{result}");
    assert_eq!(n("/old_keys/after_decrypted"), 0, "{result}");
    // (d): every place searched, something searched, nothing found, controls found.
    let searched = result["searched"].as_array().expect("searched");
    assert_eq!(searched.len(), 4, "{result}");
    for place in searched {
        assert!(place["bytes"].as_u64().unwrap_or(0) > 0, "{place}");
        assert_eq!(place["key_hits"].as_u64(), Some(0), "{place}");
        assert_eq!(place["control_found"].as_bool(), Some(true), "{place}");
    }
    assert!(n("/needles") >= 9, "{result}");
}

/// Not a test of its own: `web/e2e/member.mjs` starts it inside its network namespace.
#[test]
#[ignore = "run by web/e2e/member.mjs (cargo test --test browser_e2ee runs it)"]
fn headless_participants() {
    let env = |key: &str| std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"));
    let server = env("VEIL_E2E_SERVER");
    let room = env("VEIL_E2E_ROOM");
    let out = PathBuf::from(env("VEIL_E2E_OUT"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(helper(
        &server,
        &room,
        &env("VEIL_E2E_SECRET"),
        &env("VEIL_E2E_WRONG_SECRET"),
        &out,
    ));
}

fn say(value: Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "HELPER {value}");
    let _ = stdout.flush();
}

fn config(server: &str, room: &str, name: &str, secret: &str) -> ParticipantConfig {
    let mut c = ParticipantConfig::new(server, room, name);
    c.e2ee_secret = Some(secret.to_string());
    c.capture = true;
    c.video = Some(common::small_camera());
    c
}

async fn helper(server: &str, room: &str, secret: &str, wrong: &str, out: &std::path::Path) {
    let member = Participant::join(config(server, room, "Rust member", secret))
        .await
        .expect("the member joins");
    let observer = Participant::join(config(server, room, "Rust observer", wrong))
        .await
        .expect("the observer joins");
    say(json!({"event": "joined", "member": member.id, "observer": observer.id}));
    let member_id = member.id.clone();
    let mut member = Some(member);
    let mut held_before_leaving: Vec<HeldKey> = Vec::new();
    let mut member_sent = (Vec::new(), HashSet::new());
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    // Blocking stdin on its own thread: the script's commands, one per line.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = lines.recv().await {
        match command.trim() {
            "status" => say(json!({
                "event": "status",
                "member": member.as_ref().map(status),
                "observer": status(&observer),
            })),
            "leave" => {
                if let Some(m) = member.take() {
                    held_before_leaving = m.held_keys();
                    member_sent = (m.take_captured().sent_messages, m.sent_hashes());
                    m.leave().await;
                }
                say(json!({"event": "left"}));
            }
            "finish" => {
                let captured = observer.take_captured();
                let old_keys = old_key_check(&captured.frames, &held_before_leaving, &member_id);
                // What the SFU forwarded to the observer, and what both sent on signaling.
                let mut forwarded = Vec::new();
                for p in &captured.payloads {
                    forwarded.extend_from_slice(p);
                }
                std::fs::write(out.join("forwarded.bin"), &forwarded).expect("write dump");
                let mut sent = member_sent.0.clone();
                sent.extend(captured.sent_messages);
                std::fs::write(out.join("sent.txt"), sent.join("\n")).expect("write dump");
                // Control: a payload the member sent that the observer received.
                let control = captured
                    .payloads
                    .iter()
                    .find(|p| p.len() >= 32 && member_sent.1.contains(&payload_hash(p)))
                    .map(|p| hex(&p[p.len() - 32..]));
                let keys: Vec<Value> = held_before_leaving
                    .iter()
                    .map(|k| json!({"owner": k.owner, "kid": k.kid, "hex": hex(&k.key)}))
                    .collect();
                say(json!({
                    "event": "finished",
                    "keys": keys,
                    "old_keys": old_keys,
                    "forwarded_control_hex": control,
                }));
                observer.leave().await;
                break;
            }
            other => say(json!({"event": "error", "unknown": other})),
        }
    }
}

fn status(p: &Participant) -> Value {
    let frames: BTreeMap<String, Value> = p
        .frame_stats()
        .into_iter()
        .map(|((publisher, kind), s)| (format!("{publisher}/{kind:?}"), frame_json(&s)))
        .collect();
    json!({
        "id": p.id,
        "connected": p.is_connected(),
        "code": p.security_code(),
        "members": p.e2ee_members(),
        "frames": frames,
    })
}

fn frame_json(s: &FrameStats) -> Value {
    json!({
        "frames": s.frames,
        "discarded": s.discarded,
        "decrypted": s.decrypted,
        "failed": s.failed,
        "kids": s.kids.iter().map(|(k, n)| (k.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "key_frames": s.key_frames,
        "valid_key_frames": s.valid_key_frames,
        "dimensions": s.dimensions,
        "valid_opus": s.valid_opus,
        "invalid_opus": s.invalid_opus,
    })
}

/// The keys the member held when it left, tried on the browsers' frames the observer
/// captured: frames under a KID the member knew must decrypt (the keys are the right
/// ones), frames under a newer KID must not, under either KID's derivation.
fn old_key_check(frames: &[CapturedFrame], held: &[HeldKey], member: &str) -> Value {
    let mut before_decrypted = 0u64;
    let mut after_tried = 0u64;
    let mut after_decrypted = 0u64;
    for frame in frames {
        let Some(kid) = frame.kid else { continue };
        let keys: Vec<&HeldKey> = held
            .iter()
            .filter(|k| k.owner == frame.publisher && k.owner != member)
            .collect();
        let Some(newest) = keys.iter().map(|k| k.kid).max() else {
            continue;
        };
        if kid <= newest {
            let mut ring = KeyRing::new();
            for k in keys.iter().filter(|k| k.kid == kid) {
                let _ = ring.insert(k.kid, &k.key);
            }
            before_decrypted += u64::from(ring.decrypt_frame(frame.codec, &frame.frame).is_ok());
        } else {
            after_tried += 1;
            for k in &keys {
                // Under its own KID (what a receiver would do) and forced under the new
                // KID, in case only the label changed.
                for as_kid in [k.kid, kid] {
                    let mut ring = KeyRing::new();
                    if ring.insert(as_kid, &k.key).is_ok()
                        && ring.decrypt_frame(frame.codec, &frame.frame).is_ok()
                    {
                        after_decrypted += 1;
                    }
                }
            }
        }
    }
    json!({
        "before_decrypted": before_decrypted,
        "after_tried": after_tried,
        "after_decrypted": after_decrypted,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
