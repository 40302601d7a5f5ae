//! What the measured processes and threads cost: CPU seconds (user + system) and
//! resident memory, read from `/proc` — `/proc/<pid>/stat` and `/proc/<pid>/status` for
//! a whole process, `/proc/self/task/<tid>/schedstat` (nanosecond resolution) for a
//! group of this process's own threads.
//!
//! Must never: write to `/proc`, signal or otherwise touch the processes it reads.

use std::fs;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected contents in {0}")]
    Parse(PathBuf),
}

fn read(path: PathBuf) -> Result<String, UsageError> {
    fs::read_to_string(&path).map_err(|source| UsageError::Read { path, source })
}

/// Whose CPU time a measurement counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuScope {
    /// A whole process, exited threads included (`/proc/<pid>/stat`, 10 ms ticks).
    Process(u32),
    /// This process's live threads whose name starts with the prefix.
    Threads(String),
    /// One thread of this process.
    Thread(i32),
}

impl CpuScope {
    /// CPU seconds (user + system) used so far.
    pub fn cpu_seconds(&self) -> Result<f64, UsageError> {
        match self {
            CpuScope::Process(pid) => process_cpu_seconds(*pid),
            CpuScope::Threads(prefix) => threads_cpu_seconds(prefix),
            CpuScope::Thread(tid) => task_cpu_seconds(*tid),
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User + system CPU seconds of a process from `/proc/<pid>/stat` (fields 14 and 15).
pub fn process_cpu_seconds(pid: u32) -> Result<f64, UsageError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read(path.clone())?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| UsageError::Parse(path.clone()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, UsageError> {
        // Field 3 (state) is fields[0].
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| UsageError::Parse(path.clone()))
    };
    Ok((field(14)? + field(15)?) as f64 / clock_ticks_per_second())
}

/// Nanoseconds on CPU of one of this process's threads (first field of `schedstat`).
pub fn task_cpu_seconds(tid: i32) -> Result<f64, UsageError> {
    let path = PathBuf::from(format!("/proc/self/task/{tid}/schedstat"));
    let text = read(path.clone())?;
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or(UsageError::Parse(path))?;
    Ok(ns as f64 / 1e9)
}

/// CPU seconds of this process's live threads named with `prefix`.
pub fn threads_cpu_seconds(prefix: &str) -> Result<f64, UsageError> {
    let dir = PathBuf::from("/proc/self/task");
    let entries = fs::read_dir(&dir).map_err(|source| UsageError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut total = 0.0;
    for entry in entries.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // A thread may exit between listing and reading: skip it.
        let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end().starts_with(prefix)
            && let Ok(s) = task_cpu_seconds(tid)
        {
            total += s;
        }
    }
    Ok(total)
}

/// The calling thread's id.
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Resident memory of a process, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    /// Peak resident set (`VmHWM`) since the process started.
    pub peak_rss_kib: u64,
}

/// The number after `key` (`VmRSS:`, `Threads:`, …) in a `/proc/<pid>/status` text.
pub fn status_number(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `VmRSS` and `VmHWM` from `/proc/<pid>/status`.
pub fn process_memory(pid: u32) -> Result<Memory, UsageError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = read(path.clone())?;
    let kib = |key: &str| -> Result<u64, UsageError> {
        status_number(&text, key).ok_or_else(|| UsageError::Parse(path.clone()))
    };
    Ok(Memory {
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_thread() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(process_cpu_seconds(pid).is_ok());
        assert!(task_cpu_seconds(current_tid()).is_ok_and(|s| s > 0.0));
        let m = process_memory(pid).expect("memory");
        assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib);
        assert!(process_cpu_seconds(u32::MAX).is_err());
    }
}
