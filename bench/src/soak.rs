//! The soak: a meeting held for a long time while participants keep leaving and joining
//! (churn), the Veil process's resources sampled along the way, and the verdict whether
//! anything grew. Sampling reads `/proc/<pid>` (RSS, threads, file descriptors) and Veil's
//! own `/metrics` (media sessions, participants, rooms, runtime tasks); the verdict is
//! pure arithmetic over the samples, so it is unit-tested and the same for a one-minute
//! test and a half-hour run.
//!
//! Must never: scrape anything but the loopback Veil under test, or judge by wall-clock
//! speed — only by whether counts and memory return to where they were.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::usage;

/// What a soak adds to a run: churn during the window and sampling.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// One participant replaced this often; `None`: the meeting only runs.
    pub churn_every: Option<Duration>,
    pub sample_every: Duration,
    /// Samples in this first part of the window are left out of the verdict: pools,
    /// caches and allocator arenas fill there.
    pub warmup: Duration,
    pub tolerance: Tolerance,
    /// Window samples are appended here as they are taken (the caller writes the final
    /// file once the run is over).
    pub samples_file: Option<std::path::PathBuf>,
}

impl SoakPlan {
    /// Sampling every 10 s, no churn, default tolerance; the warm-up is a tenth of
    /// `window`.
    pub fn new(window: Duration) -> SoakPlan {
        SoakPlan {
            churn_every: None,
            sample_every: Duration::from_secs(10),
            warmup: window / 10,
            tolerance: Tolerance::default(),
            samples_file: None,
        }
    }
}

/// How much a series may grow from the first to the last quarter of the run and still
/// count as flat. Fixed slack rather than a rate: a leak grows with the churn, noise
/// does not.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    pub tasks: f64,
    pub fds: f64,
    /// RSS may grow by this many MiB plus `rss_fraction` of where it started.
    pub rss_mib: f64,
    pub rss_fraction: f64,
    /// Media sessions and participants above the meeting size (one replacement can be
    /// under way when a sample is taken).
    pub sessions: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            tasks: 16.0,
            fds: 16.0,
            rss_mib: 16.0,
            rss_fraction: 0.1,
            sessions: 1.0,
        }
    }
}

/// Where in the run a sample was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// During the window (churning, when the plan churns).
    Window,
    /// After the window, once churn stopped and every participant receives again.
    Settled,
}

/// One reading of the Veil process. A figure that could not be read is `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the window started.
    pub at_s: f64,
    pub phase: Phase,
    pub churn_cycles: u64,
    pub rss_kib: Option<u64>,
    pub threads: Option<u64>,
    pub fds: Option<u64>,
    pub tasks: Option<u64>,
    pub sessions: Option<u64>,
    pub participants: Option<u64>,
    pub rooms: Option<u64>,
}

/// Reads one process's resources and its `/metrics`.
pub struct Sampler {
    pid: u32,
    metrics_url: String,
    client: reqwest::Client,
    started: Instant,
}

/// The value of a label-free sample `name` in a Prometheus text exposition.
pub fn gauge(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(name))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// A count read as a gauge (never negative, never fractional in practice).
fn count(v: Option<f64>) -> Option<u64> {
    v.filter(|v| v.is_finite() && *v >= 0.0).map(|v| v as u64)
}

impl Sampler {
    /// Samples process `pid` and the `/metrics` of the Veil at `server`; times count
    /// from `started` (the window's start).
    pub fn new(pid: u32, server: &str, started: Instant) -> Sampler {
        Sampler {
            pid,
            metrics_url: format!("{}/metrics", server.trim_end_matches('/')),
            client: reqwest::Client::new(),
            started,
        }
    }

    async fn exposition(&self) -> Option<String> {
        let response = self
            .client
            .get(&self.metrics_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    pub async fn sample(&self, phase: Phase, churn_cycles: u64) -> Sample {
        let at_s = self.started.elapsed().as_secs_f64();
        // One read of the status file for both figures.
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok();
        let field = |key: &str| status.as_deref().and_then(|s| usage::status_number(s, key));
        let rss_kib = field("VmRSS:");
        let threads = field("Threads:");
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()
            .map(|d| d.count() as u64);
        let text = self.exposition().await.unwrap_or_default();
        let metric = |name: &str| count(gauge(&text, name));
        Sample {
            at_s,
            phase,
            churn_cycles,
            rss_kib,
            threads,
            fds,
            tasks: metric("veil_runtime_tasks"),
            sessions: metric("veil_sfu_sessions"),
            participants: metric("veil_participants"),
            rooms: metric("veil_rooms"),
        }
    }
}

/// The CSV header line of [`csv_row`].
pub const CSV_HEADER: &str =
    "t_s,phase,churn_cycles,rss_kib,threads,fds,tasks,sessions,participants,rooms\n";

/// One sample as a CSV line; a figure that could not be read is empty.
pub fn csv_row(s: &Sample) -> String {
    let cell = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let phase = match s.phase {
        Phase::Window => "window",
        Phase::Settled => "settled",
    };
    format!(
        "{:.1},{phase},{},{},{},{},{},{},{},{}\n",
        s.at_s,
        s.churn_cycles,
        cell(s.rss_kib),
        cell(s.threads),
        cell(s.fds),
        cell(s.tasks),
        cell(s.sessions),
        cell(s.participants),
        cell(s.rooms),
    )
}

/// The samples as CSV, one row each.
pub fn samples_csv(samples: &[Sample]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.extend(samples.iter().map(csv_row));
    out
}

/// Appends samples to a CSV file as they are taken, so a long run cut short keeps what
/// it measured. Writing is best effort: a full disk must not end the run.
pub struct CsvLog {
    file: Option<std::fs::File>,
}

impl CsvLog {
    pub fn create(path: Option<&std::path::Path>) -> CsvLog {
        let file = path.and_then(|p| match std::fs::File::create(p) {
            Ok(mut f) => {
                use std::io::Write as _;
                f.write_all(CSV_HEADER.as_bytes()).ok().map(|_| f)
            }
            Err(e) => {
                tracing::warn!(error = %e, "soak: cannot create the samples file");
                None
            }
        });
        CsvLog { file }
    }

    pub fn append(&mut self, sample: &Sample) {
        use std::io::Write as _;
        if let Some(f) = &mut self.file
            && f.write_all(csv_row(sample).as_bytes()).is_err()
        {
            self.file = None;
        }
    }
}

/// The samples as an SVG chart: one panel per series (RSS, tasks, file descriptors,
/// sessions) over minutes, each scaled from zero to its maximum, so a slope shows.
pub fn samples_svg(samples: &[Sample], title: &str) -> String {
    const WIDTH: f64 = 720.0;
    const PANEL: f64 = 110.0;
    const LEFT: f64 = 120.0;
    const TOP: f64 = 30.0;
    type Pick = fn(&Sample) -> Option<f64>;
    let panels: [(&str, Pick); 4] = [
        ("RSS MiB", |s| s.rss_kib.map(|v| v as f64 / 1024.0)),
        ("runtime tasks", |s| s.tasks.map(|v| v as f64)),
        ("open fds", |s| s.fds.map(|v| v as f64)),
        ("SFU sessions", |s| s.sessions.map(|v| v as f64)),
    ];
    let end_s = samples.iter().map(|s| s.at_s).fold(0.0, f64::max).max(1.0);
    let plot_w = WIDTH - LEFT - 20.0;
    let height = TOP + panels.len() as f64 * (PANEL + 30.0) + 20.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    for (i, (label, pick)) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL + 30.0);
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| pick(s).map(|v| (s.at_s, v)))
            .collect();
        let max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
        let line: Vec<String> = points
            .iter()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + t / end_s * plot_w,
                    top + PANEL - v / max * PANEL
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{plot_w}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>\n\
             <text x=\"10\" y=\"{:.1}\">{label}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{max:.0}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.1} min</text>\n\
             <polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            top + PANEL / 2.0,
            LEFT - 5.0,
            top + 12.0,
            LEFT - 5.0,
            top + PANEL,
            LEFT + plot_w,
            top + PANEL + 15.0,
            end_s / 60.0,
            line.join(" ")
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What churn did over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChurnSummary {
    pub every_s: f64,
    /// Participants replaced: one went away and a fresh one joined in its place.
    pub cycles: u64,
    /// Went with a `leave` message.
    pub left: u64,
    /// Went without one, the socket dropped.
    pub vanished: u64,
    /// Joins that failed or timed out (the place was tried again at the next tick).
    pub failed_joins: u64,
    /// Participants that went having received no media at all.
    pub departed_without_media: u64,
}

/// How one series moved over the run, after the warm-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    pub series: &'static str,
    pub unit: &'static str,
    pub samples: usize,
    pub first_quarter_median: f64,
    pub last_quarter_median: f64,
    /// Last quarter's median minus the first's.
    pub growth: f64,
    /// Least-squares slope over every sample after the warm-up, per hour.
    pub slope_per_hour: f64,
    /// Largest growth that still counts as flat; `None`: reported, not judged.
    pub limit: Option<f64>,
    pub flat: bool,
}

/// The soak's verdict: whether anything grew, and whether the meeting returned to its
/// size once churn stopped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flatness {
    pub warmup_s: f64,
    pub meeting_size: u64,
    pub trends: Vec<Trend>,
    /// Sessions and participants after churn stopped, when they could be read.
    pub settled_sessions: Option<u64>,
    pub settled_participants: Option<u64>,
    pub problems: Vec<String>,
    pub flat: bool,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Least-squares slope of `y` over `t`, per unit of `t`; zero when `t` does not vary.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let t_mean = points.iter().map(|p| p.0).sum::<f64>() / n;
    let y_mean = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (t, y)| {
        (
            num + (t - t_mean) * (y - y_mean),
            den + (t - t_mean).powi(2),
        )
    });
    if den > 0.0 { num / den } else { 0.0 }
}

/// The trend of `(seconds, value)` points: medians of the first and last quarter (at
/// least one point each) and the slope. `None` with fewer than four points.
pub fn trend(
    series: &'static str,
    unit: &'static str,
    points: &[(f64, f64)],
    limit: Option<f64>,
) -> Option<Trend> {
    if points.len() < 4 {
        return None;
    }
    let quarter = points.len() / 4;
    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
    let first = median(&values[..quarter]);
    let last = median(&values[values.len() - quarter..]);
    let growth = last - first;
    Some(Trend {
        series,
        unit,
        samples: points.len(),
        first_quarter_median: first,
        last_quarter_median: last,
        growth,
        slope_per_hour: slope(points) * 3600.0,
        limit,
        flat: limit.is_none_or(|l| growth <= l),
    })
}

/// Judges the samples of a run whose meeting holds `meeting_size` participants.
pub fn judge(samples: &[Sample], meeting_size: u64, plan: &SoakPlan) -> Flatness {
    let warmup_s = plan.warmup.as_secs_f64();
    let tol = plan.tolerance;
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.phase == Phase::Window && s.at_s >= warmup_s)
        .collect();
    let points = |f: fn(&Sample) -> Option<u64>, scale: f64| -> Vec<(f64, f64)> {
        window
            .iter()
            .filter_map(|s| f(s).map(|v| (s.at_s, v as f64 / scale)))
            .collect()
    };
    let rss = points(|s| s.rss_kib, 1024.0);
    let rss_start = rss.first().map_or(0.0, |p| p.1);
    let size = meeting_size as f64;
    let series = [
        (
            "rss",
            "MiB",
            rss.clone(),
            Some(tol.rss_mib + tol.rss_fraction * rss_start),
        ),
        ("tasks", "tasks", points(|s| s.tasks, 1.0), Some(tol.tasks)),
        ("fds", "fds", points(|s| s.fds, 1.0), Some(tol.fds)),
        ("threads", "threads", points(|s| s.threads, 1.0), None),
        ("sessions", "sessions", points(|s| s.sessions, 1.0), None),
        (
            "participants",
            "participants",
            points(|s| s.participants, 1.0),
            None,
        ),
    ];
    let mut problems = Vec::new();
    let mut trends = Vec::new();
    for (name, unit, pts, limit) in series {
        match trend(name, unit, &pts, limit) {
            Some(t) => {
                if !t.flat {
                    problems.push(format!(
                        "{name} grew by {:.1} {unit} (first quarter {:.1}, last {:.1}; limit {:.1})",
                        t.growth,
                        t.first_quarter_median,
                        t.last_quarter_median,
                        t.limit.unwrap_or(0.0)
                    ));
                }
                trends.push(t);
            }
            None if limit.is_some() => problems.push(format!(
                "{name}: {} readings after the warm-up, too few to judge",
                pts.len()
            )),
            None => {}
        }
    }
    // Sessions and participants are judged against the meeting size, not their own
    // start: a leak of one session per cycle is the failure this is here to catch.
    for t in trends
        .iter_mut()
        .filter(|t| matches!(t.series, "sessions" | "participants"))
    {
        let over = t.last_quarter_median - size;
        t.limit = Some(tol.sessions);
        t.flat = over <= tol.sessions;
        if !t.flat {
            problems.push(format!(
                "{} stayed {over:.0} above the meeting size of {meeting_size} in the last quarter",
                t.series
            ));
        }
    }
    let settled = samples.iter().rev().find(|s| s.phase == Phase::Settled);
    let settled_sessions = settled.and_then(|s| s.sessions);
    let settled_participants = settled.and_then(|s| s.participants);
    for (what, value) in [
        ("sessions", settled_sessions),
        ("participants", settled_participants),
    ] {
        match value {
            Some(v) if v == meeting_size => {}
            Some(v) => problems.push(format!(
                "{v} {what} after churn stopped, not the meeting size of {meeting_size}"
            )),
            None => problems.push(format!("{what} after churn stopped could not be read")),
        }
    }
    Flatness {
        warmup_s,
        meeting_size,
        trends,
        settled_sessions,
        settled_participants,
        flat: problems.is_empty(),
        problems,
    }
}

/// What a soak adds to the run's report.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Whose resources were sampled, e.g. `process 42 (Veil and the generator)`.
    pub sampled: String,
    pub sample_every_s: f64,
    pub churn: Option<ChurnSummary>,
    pub first: Option<Sample>,
    pub last: Option<Sample>,
    pub verdict: Flatness,
    /// Every sample, for `--samples`; not in the JSON (the CSV holds them).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl SoakReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "soak: sampled {} every {:.0} s",
            self.sampled, self.sample_every_s
        );
        match &self.churn {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "  churn every {:.1} s: {} cycles ({} left, {} vanished), {} failed joins, {} went without receiving media",
                    c.every_s,
                    c.cycles,
                    c.left,
                    c.vanished,
                    c.failed_joins,
                    c.departed_without_media
                );
            }
            None => {
                let _ = writeln!(s, "  no churn");
            }
        }
        let v = &self.verdict;
        let _ = writeln!(
            s,
            "  after a {:.0} s warm-up, median of the first vs the last quarter, slope per hour:",
            v.warmup_s
        );
        for t in &v.trends {
            let limit = t
                .limit
                .map(|l| format!("limit +{l:.1}"))
                .unwrap_or_else(|| "not judged".into());
            let _ = writeln!(
                s,
                "    {:<12} {:>10.1} → {:>10.1} {:<12} ({:+.1}; {:+.1}/h; {limit}) {}",
                t.series,
                t.first_quarter_median,
                t.last_quarter_median,
                t.unit,
                t.growth,
                t.slope_per_hour,
                if t.flat { "flat" } else { "GREW" }
            );
        }
        let opt = |v: Option<u64>| v.map_or_else(|| "?".into(), |v| v.to_string());
        let _ = writeln!(
            s,
            "  after churn stopped: {} sessions, {} participants (meeting size {})",
            opt(v.settled_sessions),
            opt(v.settled_participants),
            v.meeting_size
        );
        for p in &v.problems {
            let _ = writeln!(s, "  problem: {p}");
        }
        let _ = writeln!(
            s,
            "  verdict: {}",
            if v.flat {
                "flat"
            } else {
                "NOT flat (see problems)"
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: f64, rss_mib: u64, tasks: u64, fds: u64, sessions: u64) -> Sample {
        Sample {
            at_s,
            phase: Phase::Window,
            churn_cycles: 0,
            rss_kib: Some(rss_mib * 1024),
            threads: Some(5),
            fds: Some(fds),
            tasks: Some(tasks),
            sessions: Some(sessions),
            participants: Some(sessions),
            rooms: Some(2),
        }
    }

    fn settled(at_s: f64, sessions: u64) -> Sample {
        Sample {
            phase: Phase::Settled,
            ..sample(at_s, 50, 100, 40, sessions)
        }
    }

    fn plan() -> SoakPlan {
        SoakPlan {
            churn_every: Some(Duration::from_secs(3)),
            sample_every: Duration::from_secs(10),
            warmup: Duration::from_secs(60),
            tolerance: Tolerance::default(),
            samples_file: None,
        }
    }

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 9.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        let zigzag: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, if i % 2 == 0 { 10.0 } else { 12.0 }))
            .collect();
        assert!(slope(&zigzag).abs() < 0.3);
    }

    #[test]
    fn trend_compares_quarter_medians() {
        let pts: Vec<(f64, f64)> = (0..8).map(|i| (i as f64 * 10.0, i as f64)).collect();
        let t = trend("x", "u", &pts, Some(5.0)).expect("enough points");
        // Quarters of two: medians 0.5 and 6.5.
        assert_eq!((t.first_quarter_median, t.last_quarter_median), (0.5, 6.5));
        assert_eq!(t.growth, 6.0);
        assert!((t.slope_per_hour - 360.0).abs() < 1e-9);
        assert!(!t.flat);
        assert!(trend("x", "u", &pts[..3], Some(5.0)).is_none());
        assert!(trend("x", "u", &pts, None).expect("points").flat);
    }

    #[test]
    fn a_flat_run_with_noise_and_an_in_flight_replacement_is_flat() {
        let mut samples: Vec<Sample> = (0..30)
            .map(|i| {
                let t = i as f64 * 10.0;
                // Noise around a level, one replacement caught mid-way now and then.
                sample(
                    t,
                    60 + (i % 3),
                    120 + (i % 5),
                    48 + (i % 2),
                    8 + u64::from(i % 7 == 0),
                )
            })
            .collect();
        // The warm-up is left out even though it started far lower.
        samples[0].rss_kib = Some(10 * 1024);
        samples[0].tasks = Some(3);
        samples.push(settled(305.0, 8));
        let v = judge(&samples, 8, &plan());
        assert!(v.flat, "{:?}", v.problems);
        assert_eq!(v.trends.len(), 6);
        assert_eq!(v.settled_sessions, Some(8));
    }

    #[test]
    fn a_task_leak_per_cycle_is_caught() {
        let mut samples: Vec<Sample> = (0..30)
            .map(|i| sample(i as f64 * 10.0, 60, 120 + i, 48, 8))
            .collect();
        samples.push(settled(305.0, 8));
        let v = judge(&samples, 8, &plan());
        assert!(!v.flat);
        let tasks = v
            .trends
            .iter()
            .find(|t| t.series == "tasks")
            .expect("tasks");
        assert!(!tasks.flat && tasks.slope_per_hour > 300.0);
        assert!(v.problems.iter().any(|p| p.starts_with("tasks grew")));
        assert!(v.trends.iter().filter(|t| !t.flat).count() == 1);
    }

    #[test]
    fn memory_may_grow_by_its_allowance_but_not_more() {
        let run = |end_mib: u64| {
            let mut samples: Vec<Sample> = (0..30)
                .map(|i| {
                    sample(
                        i as f64 * 10.0,
                        if i < 20 { 100 } else { end_mib },
                        120,
                        48,
                        8,
                    )
                })
                .collect();
            samples.push(settled(305.0, 8));
            judge(&samples, 8, &plan())
        };
        // 16 MiB + 10 % of 100 MiB.
        assert!(run(126).flat);
        assert!(!run(127).flat);
    }

    #[test]
    fn sessions_left_behind_are_caught_during_and_after_churn() {
        let mut samples: Vec<Sample> = (0..30)
            .map(|i| sample(i as f64 * 10.0, 60, 120, 48, 8 + i / 5))
            .collect();
        samples.push(settled(305.0, 13));
        let v = judge(&samples, 8, &plan());
        assert!(!v.flat);
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("above the meeting size"))
        );
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("13 sessions after churn"))
        );
    }

    #[test]
    fn too_few_or_unreadable_samples_are_not_a_pass() {
        let samples = vec![sample(70.0, 60, 120, 48, 8), settled(80.0, 8)];
        let v = judge(&samples, 8, &plan());
        assert!(!v.flat);
        assert!(v.problems.iter().any(|p| p.contains("too few")));
        let v = judge(&[], 8, &plan());
        assert!(v.problems.iter().any(|p| p.contains("could not be read")));
    }

    #[test]
    fn reads_gauges_status_and_writes_csv() {
        let text = "# HELP veil_sfu_sessions x\n# TYPE veil_sfu_sessions gauge\n\
                    veil_sfu_sessions 7\nveil_sfu_sessions_started_total 90\n\
                    veil_runtime_tasks 131\n";
        assert_eq!(gauge(text, "veil_sfu_sessions"), Some(7.0));
        assert_eq!(gauge(text, "veil_runtime_tasks"), Some(131.0));
        assert_eq!(gauge(text, "veil_rooms"), None);
        assert_eq!(
            usage::status_number("Name:\tveil\nThreads:\t12\n", "Threads:"),
            Some(12)
        );
        let mut s = sample(12.34, 1, 2, 3, 4);
        s.rooms = None;
        let csv = samples_csv(std::slice::from_ref(&s));
        assert_eq!(
            csv,
            "t_s,phase,churn_cycles,rss_kib,threads,fds,tasks,sessions,participants,rooms\n\
             12.3,window,0,1024,5,3,2,4,4,\n"
        );
        let path = std::env::temp_dir().join(format!("soak-log-{}.csv", std::process::id()));
        let mut log = CsvLog::create(Some(&path));
        log.append(&s);
        drop(log);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), csv);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn chart_has_a_line_per_series() {
        let samples: Vec<Sample> = (0..5)
            .map(|i| sample(i as f64 * 60.0, 50, 100, 40, 8))
            .collect();
        let svg = samples_svg(&samples, "soak <2×4>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("soak &lt;2×4&gt;"));
        // The last sample sits at the right edge of the plot.
        assert!(svg.contains("700.0,"));
    }
}
