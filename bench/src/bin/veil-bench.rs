//! `veil-bench`: loads a Veil (in this process, or an external `veil` process) or the
//! plain UDP relay baseline with many headless participants, and reports what was
//! forwarded and what it cost — as text, or JSON with `--json`. With `--churn` or
//! `--samples` the run is a soak: participants are replaced through the window, the Veil
//! process is sampled, and the report says whether anything grew.
//!
//! Must never: point participants anywhere but loopback, or run without a bound: every
//! phase has a duration or a timeout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use veil_bench::load::{self, InProcessVeil, Progress, Scenario};
use veil_bench::participant::VideoConfig;
use veil_bench::relay;
use veil_bench::report::Report;
use veil_bench::soak::{SoakPlan, SoakReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    /// R rooms × P participants, all publish audio + video, all subscribe.
    Meeting,
    /// One publisher, N subscribers.
    Webinar,
    /// R rooms × P audio-only participants.
    Audio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    /// An all-in-one Veil started in this process on its own runtime.
    InProcess,
    /// A `veil` already running as another process (`--server`, `--sfu-pid`).
    External,
    /// Only the plain UDP fan-out relay baseline.
    Relay,
}

#[derive(Debug, Parser)]
#[command(
    name = "veil-bench",
    version,
    about = "Load generator for Veil's SFU, measured against a plain UDP relay"
)]
struct Cli {
    /// Which scenario to run.
    #[arg(value_enum)]
    scenario: ScenarioArg,
    /// Rooms (meeting, audio).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Participants per room (meeting, audio) or subscribers (webinar).
    #[arg(long, short = 'p', default_value_t = 10)]
    participants: usize,
    /// Publishers per room (audio; meeting: default everyone; webinar: always 1).
    #[arg(long)]
    publishers: Option<usize>,
    /// Publish three simulcast layers.
    #[arg(long)]
    simulcast: bool,
    /// Full-layer video bitrate, kbit/s.
    #[arg(long, default_value_t = 720)]
    bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Bytes per full-layer video frame (overrides --bitrate: bitrate = bytes × 8 × fps).
    #[arg(long)]
    frame_bytes: Option<u64>,
    /// Key frame at least this often, seconds.
    #[arg(long, default_value_t = 3.0)]
    keyframe_interval: f64,
    /// Publish no audio (meeting, webinar).
    #[arg(long)]
    no_audio: bool,
    /// Length of the steady-state window, seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Spread the joins over this long, seconds (default 50 ms per participant).
    #[arg(long)]
    ramp_up: Option<f64>,
    /// Longest wait for every participant to receive, seconds.
    #[arg(long, default_value_t = 30.0)]
    settle_timeout: f64,
    /// Pause after everyone receives, before the window, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// What to load.
    #[arg(long, value_enum, default_value_t = TargetArg::InProcess)]
    target: TargetArg,
    /// Base URL of an external Veil (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Process id of the external `veil`, for its CPU and memory.
    #[arg(long)]
    sfu_pid: Option<u32>,
    /// `name=value` session cookie for `POST /api/rooms` on an external Veil.
    #[arg(long, env = "VEIL_BENCH_SESSION_COOKIE")]
    session_cookie: Option<String>,
    /// Skip the relay baseline run.
    #[arg(long)]
    no_baseline: bool,
    /// Generator runtime worker threads.
    #[arg(long, default_value_t = 1)]
    generator_threads: usize,
    /// In-process Veil runtime worker threads.
    #[arg(long, default_value_t = 2)]
    sfu_threads: usize,
    /// Soak: every this many seconds of the window one participant (round robin over the
    /// rooms) goes — alternately with a `leave` and by vanishing — and a fresh one joins
    /// in its place. No relay baseline is run.
    #[arg(long)]
    churn: Option<f64>,
    /// Soak: sample the Veil process (RSS, threads, fds) and its `/metrics` (sessions,
    /// participants, rooms, runtime tasks) this often, seconds.
    #[arg(long, default_value_t = 10.0)]
    sample_every: f64,
    /// Soak: write every sample to this CSV file, as they are taken (with --chart, also
    /// makes a run without --churn a soak).
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Soak: draw RSS, tasks, fds and sessions over time into this SVG file.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Soak: leave the window's first this many seconds out of the verdict (default: a
    /// tenth of the window).
    #[arg(long)]
    soak_warmup: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} must be a positive number"))
}

impl Cli {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let mut s = match self.scenario {
            ScenarioArg::Meeting => Scenario::meeting(self.rooms, self.participants),
            ScenarioArg::Webinar => {
                if self.rooms != 1 {
                    bail!("a webinar has one room");
                }
                Scenario::webinar(self.participants)
            }
            ScenarioArg::Audio => Scenario::audio(self.rooms, self.participants),
        };
        if let Some(p) = self.publishers {
            if self.scenario == ScenarioArg::Webinar {
                bail!("a webinar has one publisher");
            }
            s.publishers_per_room = p;
        }
        if s.video.is_some() {
            let bitrate_bps = match self.frame_bytes {
                Some(bytes) => bytes * 8 * u64::from(self.fps),
                None => self.bitrate * 1000,
            };
            s.video = Some(VideoConfig {
                fps: self.fps,
                bitrate_bps,
                keyframe_interval: seconds(self.keyframe_interval, "keyframe-interval")?,
                simulcast: self.simulcast,
            });
        }
        s.audio = !self.no_audio || self.scenario == ScenarioArg::Audio;
        s.duration = seconds(self.duration, "duration")?;
        if let Some(r) = self.ramp_up {
            s.ramp_up = seconds(r, "ramp-up")?;
        }
        s.settle_timeout = seconds(self.settle_timeout, "settle-timeout")?;
        s.warmup = seconds(self.warmup, "warmup")?;
        s.check()?;
        Ok(s)
    }

    /// The soak to run, if this is one.
    fn soak(&self, scenario: &Scenario) -> anyhow::Result<Option<SoakPlan>> {
        if self.churn.is_none() && self.samples.is_none() && self.chart.is_none() {
            return Ok(None);
        }
        if self.target == TargetArg::Relay {
            bail!("a soak loads Veil: use --target in-process or external");
        }
        let mut plan = SoakPlan::new(scenario.duration);
        plan.churn_every = self.churn.map(|c| seconds(c, "churn")).transpose()?;
        if plan
            .churn_every
            .is_some_and(|c| c < Duration::from_millis(100))
        {
            bail!("--churn must be at least 0.1 s");
        }
        plan.sample_every = seconds(self.sample_every, "sample-every")?;
        plan.samples_file = self.samples.clone();
        if let Some(w) = self.soak_warmup {
            plan.warmup = seconds(w, "soak-warmup")?;
        }
        Ok(Some(plan))
    }
}

/// A report with the soak's part beside it (`soak` in the JSON).
#[derive(serde::Serialize)]
struct Soaked<'a> {
    #[serde(flatten)]
    report: &'a Report,
    soak: &'a SoakReport,
}

/// Progress on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn phase(&self, name: &str, len: u64) {
        self.0.set_length(len);
        self.0.set_position(0);
        self.0.set_message(name.to_string());
    }
    fn advance(&self, position: u64) {
        self.0.set_position(position);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenario = cli.scenario()?;
    if cli.target == TargetArg::External {
        let url = reqwest::Url::parse(&cli.server).context("--server must be a URL")?;
        if !matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")) {
            bail!("--server must be on loopback (127.0.0.1)");
        }
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:32} [{bar:30}] {pos}/{len} {elapsed}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = Bar(bar);
    let runtime = load::generator_runtime(cli.generator_threads)?;

    let soak_plan = cli.soak(&scenario)?;
    let mut soak: Option<SoakReport> = None;
    let report: Report = if cli.target == TargetArg::Relay {
        runtime.block_on(relay::run_relay(
            &scenario,
            cli.generator_threads,
            &progress,
        ))?
    } else {
        // An in-process Veil lives exactly as long as the run.
        let in_process = (cli.target == TargetArg::InProcess)
            .then(|| InProcessVeil::start(cli.sfu_threads))
            .transpose()?;
        let target = match &in_process {
            Some(veil) => veil.target(cli.generator_threads)?,
            None => {
                let pid = cli
                    .sfu_pid
                    .context("--target external needs --sfu-pid PID of the veil process")?;
                load::external_target(
                    &cli.server,
                    pid,
                    cli.session_cookie.clone(),
                    cli.generator_threads,
                )
            }
        };
        let run = runtime.block_on(async {
            match &soak_plan {
                Some(plan) => load::run_veil_soak(&scenario, &target, plan, &progress)
                    .await
                    .map(|(r, s)| (r, Some(s))),
                None => load::run_veil(&scenario, &target, &progress)
                    .await
                    .map(|r| (r, None)),
            }
        });
        if let Some(veil) = in_process {
            veil.stop();
        }
        let (veil_report, soaked) = run?;
        soak = soaked;
        if cli.no_baseline || soak.is_some() {
            veil_report
        } else {
            let relay_report = runtime.block_on(relay::run_relay(
                &scenario,
                cli.generator_threads,
                &progress,
            ))?;
            veil_report.with_baseline(relay_report)
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    progress.finish();
    if let (Some(path), Some(soak)) = (&cli.samples, &soak) {
        std::fs::write(path, veil_bench::soak::samples_csv(&soak.samples))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(soak)) = (&cli.chart, &soak) {
        let title = format!(
            "veil-bench {} {}×{}, churn {}: {}",
            scenario.name(),
            scenario.rooms,
            scenario.participants_per_room,
            cli.churn
                .map_or_else(|| "none".into(), |c| format!("every {c} s")),
            soak.sampled
        );
        std::fs::write(path, veil_bench::soak::samples_svg(&soak.samples, &title))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if cli.json {
        let json = match &soak {
            Some(soak) => serde_json::to_string_pretty(&Soaked {
                report: &report,
                soak,
            })?,
            None => serde_json::to_string_pretty(&report)?,
        };
        println!("{json}");
    } else {
        print!("{}", report.render());
        if let Some(b) = &report.baseline {
            print!("{}", b.render());
        }
        if let Some(soak) = &soak {
            print!("{}", soak.render());
        }
    }
    if !report.valid {
        std::process::exit(2);
    }
    if soak.is_some_and(|s| !s.verdict.flat) {
        std::process::exit(3);
    }
    Ok(())
}
