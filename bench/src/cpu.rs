//! Where the CPU went: per-thread user + system time from `/proc/self/task/*/stat`, grouped
//! by thread name, between two snapshots. The engine names its threads (`shard-N`,
//! `refill-store-sy[nc]`), the benchmarks name their runtimes' (`http-server`, …); the
//! client runs on the main thread (`refill-bench`). Linux only; elsewhere it reports nothing.
//! Resolution is one clock tick (10 ms), fine for runs of seconds.

// CPU seconds are floats for the report.
#![allow(clippy::float_arithmetic)]

use std::collections::{BTreeMap, HashMap};

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on every Linux we run on).
const TICKS_PER_S: f64 = 100.0;

/// CPU ticks per thread and for the whole process at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    threads: HashMap<String, (String, u64)>,
    process: u64,
}

/// CPU used between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// CPU seconds per thread name, largest first.
    pub by_name: Vec<(String, f64)>,
    /// CPU seconds of the whole process (includes threads that ended in between).
    pub process_s: f64,
}

/// (name, utime + stime) of a `stat` line: `pid (comm) state … utime stime …`.
fn parse_stat(line: &str) -> Option<(String, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// CPU seconds the calling thread has used so far (0 where unknown).
pub fn this_thread_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|line| parse_stat(&line))
        .map_or(0.0, |(_, ticks)| ticks as f64 / TICKS_PER_S)
}

/// The CPU ticks of every thread of this process now.
pub fn snapshot() -> Snapshot {
    let mut threads = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc/self/task") {
        for entry in entries.filter_map(Result::ok) {
            let tid = entry.file_name().to_string_lossy().into_owned();
            if let Ok(line) = std::fs::read_to_string(entry.path().join("stat"))
                && let Some(found) = parse_stat(&line)
            {
                threads.insert(tid, found);
            }
        }
    }
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|line| parse_stat(&line))
        .map_or(0, |(_, ticks)| ticks);
    Snapshot { threads, process }
}

/// CPU used since `before`, by thread name.
pub fn since(before: &Snapshot) -> Usage {
    let after = snapshot();
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (tid, (name, ticks)) in &after.threads {
        let earlier = before.threads.get(tid).map_or(0, |(_, ticks)| *ticks);
        *by_name.entry(name.clone()).or_default() += ticks.saturating_sub(earlier);
    }
    let mut by_name: Vec<(String, f64)> = by_name
        .into_iter()
        .filter(|(_, ticks)| *ticks > 0)
        .map(|(name, ticks)| (name, ticks as f64 / TICKS_PER_S))
        .collect();
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    Usage {
        by_name,
        process_s: after.process.saturating_sub(before.process) as f64 / TICKS_PER_S,
    }
}

impl Usage {
    /// Seconds of the threads whose name starts with `prefix`.
    pub fn seconds_of(&self, prefix: &str) -> f64 {
        self.by_name
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, seconds)| seconds)
            .sum()
    }

    /// Process seconds not attributed to a live thread (threads that ended in between).
    pub fn unattributed_s(&self) -> f64 {
        let listed: f64 = self.by_name.iter().map(|(_, seconds)| seconds).sum();
        (self.process_s - listed).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_spaces_in_the_name() {
        let line = "1234 (shard 0) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0";
        assert_eq!(parse_stat(line), Some(("shard 0".to_owned(), 280)));
        let mut spin = 0_u64;
        let before = snapshot();
        for step in 0..1_000_u64 {
            spin = spin.wrapping_add(std::hint::black_box(step));
        }
        std::hint::black_box(spin);
        let usage = since(&before);
        assert!(usage.process_s >= 0.0);
    }
}

/// Busy and total jiffies of the whole machine (`/proc/stat`, first line).
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle (4th) and iowait (5th) are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The machine's CPU at one moment, to tell how busy it was in between (other processes
/// included: on a shared box the benchmark does not have the cores to itself).
#[derive(Clone, Copy, Debug)]
pub struct Machine(Option<(u64, u64)>);

impl Machine {
    /// Now.
    pub fn now() -> Self {
        Self(machine_jiffies())
    }

    /// Busy cores on average since this moment (0..=nproc), if known.
    pub fn busy_cores_since(&self) -> Option<f64> {
        let (busy_before, total_before) = self.0?;
        let (busy, total) = machine_jiffies()?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let total = total.checked_sub(total_before)?;
        (total > 0).then(|| (busy - busy_before) as f64 / total as f64 * cores)
    }
}
