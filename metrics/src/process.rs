//! Standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_threads`, `process_start_time_seconds`) read from
//! `/proc/self`, without the prometheus crate's `process` feature and its dependencies.
//! On a system without `/proc` the values stay at zero.
//!
//! Also `veil_runtime_tasks`: the tokio tasks alive on the runtime that serves the scrape,
//! since a task left behind per session is a leak that neither memory nor file
//! descriptors show early (the soak in `veil-bench` watches it).

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

/// Linux reports CPU time in USER_HZ ticks, fixed at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

pub struct ProcessCollector {
    cpu: Counter,
    cpu_last: Mutex<f64>,
    rss: IntGauge,
    fds: IntGauge,
    threads: IntGauge,
    start: Gauge,
    tasks: IntGauge,
    descs: Vec<Desc>,
}

/// The fields of `/proc/self/stat` after the command name.
fn stat_fields(stat: &str) -> Vec<&str> {
    // The command name is in parentheses and may itself contain spaces.
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// CPU seconds (user + system) and start ticks since boot from `/proc/self/stat`.
pub fn parse_stat(stat: &str) -> Option<(f64, u64, i64)> {
    let f = stat_fields(stat);
    // After ")": state is index 0, so utime (field 14) is 11, stime 12, threads 17,
    // starttime 19.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let threads: i64 = f.get(17)?.parse().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    Some(((utime + stime) as f64 / TICKS_PER_SECOND, start, threads))
}

/// Resident set size in bytes from `/proc/self/status`.
pub fn parse_rss(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl ProcessCollector {
    pub fn new() -> Result<Self, prometheus::Error> {
        let cpu = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds",
        )?;
        let rss = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
        )?;
        let fds = IntGauge::new("process_open_fds", "Number of open file descriptors")?;
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process")?;
        let start = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since the UNIX epoch in seconds",
        )?;
        let tasks = IntGauge::new(
            "veil_runtime_tasks",
            "Tokio tasks alive on the runtime serving this scrape",
        )?;
        let descs = [
            cpu.desc(),
            rss.desc(),
            fds.desc(),
            threads.desc(),
            start.desc(),
            tasks.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let collector = ProcessCollector {
            cpu,
            cpu_last: Mutex::new(0.0),
            rss,
            fds,
            threads,
            start,
            tasks,
            descs,
        };
        if let (Ok(stat), Some(btime)) = (std::fs::read_to_string("/proc/self/stat"), boot_time())
            && let Some((_, start_ticks, _)) = parse_stat(&stat)
        {
            collector
                .start
                .set(btime as f64 + start_ticks as f64 / TICKS_PER_SECOND);
        }
        Ok(collector)
    }

    fn refresh(&self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((cpu, _, threads)) = parse_stat(&stat)
        {
            let mut last = self.cpu_last.lock().unwrap_or_else(|e| e.into_inner());
            if cpu > *last {
                self.cpu.inc_by(cpu - *last);
                *last = cpu;
            }
            self.threads.set(threads);
        }
        if let Some(rss) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_rss(&s))
        {
            self.rss.set(rss);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(dir.count() as i64);
        }
        // Scrapes are served on Veil's runtime; outside one (a caller rendering from a
        // plain thread) the last value stays.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks.set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut out = Vec::new();
        out.extend(self.cpu.collect());
        out.extend(self.rss.collect());
        out.extend(self.fds.collect());
        out.extend(self.threads.collect());
        out.extend(self.start.collect());
        out.extend(self.tasks.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat =
            "4242 (veil (worker)) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 7 0 12345 1000 200";
        let (cpu, start, threads) = parse_stat(stat).unwrap();
        assert!((cpu - 4.0).abs() < 1e-9);
        assert_eq!((start, threads), (12345, 7));
        assert_eq!(
            parse_rss("Name:\tveil\nVmRSS:\t  2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_reports_itself() {
        let c = ProcessCollector::new().unwrap();
        let families = c.collect();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert!(names.contains(&"process_resident_memory_bytes"));
        assert!(c.rss.get() > 0);
        assert!(c.fds.get() > 0);
        assert!(c.start.get() > 1.0e9);
    }

    #[test]
    fn counts_the_tasks_of_the_runtime_it_is_scraped_on() {
        let c = ProcessCollector::new().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tasks = runtime.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let parked = tokio::spawn(async move {
                let _ = rx.await;
            });
            c.collect();
            let with_one = c.tasks.get();
            let _ = tx.send(());
            let _ = parked.await;
            c.collect();
            (with_one, c.tasks.get())
        });
        assert_eq!(tasks, (1, 0));
    }
}
