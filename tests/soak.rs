//! The soak, short: `veil-bench meeting --churn` for a bit over a minute against an
//! in-process Veil. Two rooms of three keep meeting while one participant after another
//! goes (alternately with a `leave` and by vanishing) and a fresh one takes its place;
//! the Veil must end with exactly the meeting's sessions and participants, and its
//! runtime tasks, file descriptors and memory must not grow from the first to the last
//! quarter of the run. The half-hour version against a `veil` process is a command in
//! docs/performance.md ("Soak").

use std::time::Duration;

use veil_bench::load::{self, InProcessVeil, Quiet, Scenario};
use veil_bench::participant::VideoConfig;
use veil_bench::soak::{SoakPlan, Tolerance};

#[test]
fn a_meeting_under_churn_leaves_nothing_behind() {
    let veil = InProcessVeil::start(2).expect("start veil");
    let target = veil.target(1).expect("target");
    let mut scenario = Scenario::meeting(2, 3);
    // Small video: the point is sessions coming and going, not forwarding load, and the
    // two cores are shared with the generator (and with whatever else runs).
    scenario.video = Some(VideoConfig {
        fps: 15,
        bitrate_bps: 150_000,
        keyframe_interval: Duration::from_secs(2),
        simulcast: false,
    });
    scenario.duration = Duration::from_secs(75);
    scenario.settle_timeout = Duration::from_secs(60);
    let mut plan = SoakPlan::new(scenario.duration);
    plan.churn_every = Some(Duration::from_millis(1500));
    plan.sample_every = Duration::from_secs(2);
    plan.warmup = Duration::from_secs(15);
    // Fixed slack: a leak per replacement would add one or more tasks and descriptors
    // for each of the dozens of cycles. In this process RSS, threads and descriptors
    // include the generator's participants, so memory gets a generous allowance: only a
    // steady climb can exceed it.
    plan.tolerance = Tolerance {
        tasks: 12.0,
        fds: 12.0,
        rss_mib: 48.0,
        rss_fraction: 0.25,
        sessions: 1.0,
    };
    let runtime = load::generator_runtime(1).expect("runtime");
    let run = runtime.block_on(load::run_veil_soak(&scenario, &target, &plan, &Quiet));
    runtime.shutdown_timeout(Duration::from_secs(2));
    veil.stop();
    let (report, soak) = run.expect("soak run");
    print!("{}", soak.render());

    let churn = soak.churn.as_ref().expect("the run churned");
    // A replacement takes a join (well under a second); even on a busy machine most
    // of the 50 ticks happen.
    assert!(churn.cycles >= 20, "only {} churn cycles", churn.cycles);
    assert!(churn.left > 0 && churn.vanished > 0, "{churn:?}");
    assert_eq!(churn.failed_joins, 0, "{churn:?}");
    assert_eq!(churn.departed_without_media, 0, "{churn:?}");
    assert!(
        report.complete,
        "not every participant received after churn: {:?}",
        report.problems
    );
    let verdict = &soak.verdict;
    assert_eq!(verdict.settled_sessions, Some(6), "{:?}", verdict.problems);
    assert_eq!(
        verdict.settled_participants,
        Some(6),
        "{:?}",
        verdict.problems
    );
    for series in ["rss", "tasks", "fds", "sessions", "participants"] {
        let trend = verdict
            .trends
            .iter()
            .find(|t| t.series == series)
            .unwrap_or_else(|| panic!("no {series} trend: {:?}", verdict.problems));
        assert!(trend.flat, "{series} grew: {trend:?}");
    }
    assert!(verdict.flat, "{:?}", verdict.problems);
}
