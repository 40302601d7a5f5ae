//! Short runs of every scenario against an in-process Veil (seconds, small counts),
//! and of the relay baseline: the report must be complete and consistent. No timing
//! thresholds: only what must hold on any machine.

use std::time::Duration;

use veil_bench::load::{self, InProcessVeil, Quiet, Scenario};
use veil_bench::participant::VideoConfig;
use veil_bench::relay;
use veil_bench::report::Report;

fn short(mut s: Scenario) -> Scenario {
    s.duration = Duration::from_millis(1500);
    s.ramp_up = Duration::from_millis(100);
    s.warmup = Duration::from_millis(200);
    s.settle_timeout = Duration::from_secs(30);
    if let Some(v) = s.video.as_mut() {
        // Smaller frames keep debug builds on two cores far from saturation.
        v.bitrate_bps = 200_000;
        v.fps = 15;
    }
    s
}

fn run_in_process(scenario: &Scenario) -> Report {
    let veil = InProcessVeil::start(1).expect("start veil");
    let target = veil.target(1).expect("target");
    let runtime = load::generator_runtime(1).expect("runtime");
    let report = runtime
        .block_on(load::run_veil(scenario, &target, &Quiet))
        .expect("run");
    veil.stop();
    report
}

fn run_relay(scenario: &Scenario) -> Report {
    let runtime = load::generator_runtime(1).expect("runtime");
    runtime
        .block_on(relay::run_relay(scenario, 1, &Quiet))
        .expect("relay run")
}

/// What every report must satisfy, whatever the target.
fn assert_consistent(r: &Report, scenario: &Scenario) {
    let text = r.render();
    assert!(r.complete, "incomplete: {:?}\n{text}", r.problems);
    assert_eq!(r.participants, scenario.participants());
    assert!(r.receivers > 0);
    assert_eq!(r.receivers_receiving, r.receivers, "{text}");
    assert!(r.received_packets > 0, "{text}");
    assert!(r.run.received_packets <= r.run.expected_packets, "{text}");
    assert!(
        r.run.expected_packets <= r.run.sent_packets * (scenario.participants_per_room as u64 - 1)
    );
    assert!(r.received_bytes >= r.received_packets, "{text}");
    assert!(r.packets_per_s > 0.0 && r.bytes_per_s > 0.0);
    assert!((0.0..=1.0).contains(&r.loss));
    assert!(r.latency_us.samples > 0, "{text}");
    assert!(r.latency_us.p50 > 0.0, "{text}");
    assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
    assert!(r.join_ms.samples > 0, "{text}");
    assert!(r.join_ms.p50 > 0.0);
    assert!(r.server.cpu_s > 0.0, "{text}");
    assert!(r.server.cpu_s_per_1k_packets > 0.0);
    assert!(r.generator.cpu_s > 0.0, "{text}");
    assert!(r.window_s > 0.0);
    let json = serde_json::to_value(r).expect("json");
    for key in [
        "latency_us",
        "join_ms",
        "server",
        "generator",
        "loss",
        "packets_per_s",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from JSON");
    }
}

fn assert_veil_report(r: &Report, scenario: &Scenario) {
    assert_consistent(r, scenario);
    assert!(r.subscribed_tracks >= r.receivers);
    assert!(r.server.rss_kib.is_some_and(|k| k > 0));
    assert!(r.server.peak_rss_kib >= r.server.rss_kib);
}

#[test]
fn meeting_two_rooms_of_three() {
    let s = short(Scenario::meeting(2, 3));
    let r = run_in_process(&s);
    assert_veil_report(&r, &s);
    assert_eq!(r.receivers, 6);
    // Everyone subscribes to audio + video of the two others.
    assert_eq!(r.subscribed_tracks, 6 * 4);
}

#[test]
fn webinar_one_publisher_three_subscribers_simulcast() {
    let mut s = short(Scenario::webinar(3));
    if let Some(v) = s.video.as_mut() {
        *v = VideoConfig {
            simulcast: true,
            ..*v
        };
    }
    let r = run_in_process(&s);
    assert_veil_report(&r, &s);
    assert_eq!(r.receivers, 3);
    assert!(r.scenario.simulcast);
}

#[test]
fn audio_only_room_of_four() {
    let s = short(Scenario::audio(1, 4));
    let r = run_in_process(&s);
    assert_veil_report(&r, &s);
    assert_eq!(r.subscribed_tracks, 4 * 3);
    assert_eq!(r.scenario.video_bitrate_bps, None);
}

#[test]
fn relay_baseline_forwards_every_packet_and_reports_the_same_shape() {
    let s = short(Scenario::meeting(2, 3));
    let r = run_relay(&s);
    assert_consistent(&r, &s);
    assert_eq!(r.server.cpu_scope, "relay thread");
    assert!(r.run.sent_packets > 0);
    // Every packet sent reached every other member of its room.
    assert_eq!(
        r.run.received_packets,
        r.run.expected_packets,
        "{}",
        r.render()
    );
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    // The ratio arithmetic against a Veil report of the same shape.
    let with = r.clone().with_baseline(r.clone());
    let ratio = with.relay_ratio.expect("ratio");
    assert!((ratio.cpu_per_packet - 1.0).abs() < 1e-9);
}
