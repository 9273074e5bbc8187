//! Workloads, baselines and reporting shared by Switchboard's benchmarks.
//!
//! Everything here is deterministic (a fixed-seed generator), so two runs of
//! a bench measure the same work.

pub mod alloc;
pub mod chart;
pub mod seed;
pub mod workload;

use std::time::{Duration, Instant};

/// Runs `f` `rounds` times (after one warm-up run) and returns the median
/// wall time of a run. A median is robust to the noise of a shared machine.
pub fn median_time(rounds: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// The machine a run was made on, for the record next to its numbers.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Logical cores available to this process.
    pub cores: usize,
    /// The CPU model, where the platform tells it.
    pub cpu: String,
    /// The compiler, as `rustc --version` prints it.
    pub rustc: String,
    /// The operating system and architecture.
    pub os: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn detect() -> Machine {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        let os = format!("{} {}", std::env::consts::OS, std::env::consts::ARCH);
        Machine { cores, cpu, rustc, os }
    }
}

/// The median of `values` and their spread, `(max - min) / 2` over the
/// median, as a fraction.
pub fn median_spread(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let median = v[v.len() / 2];
    let spread = if median > 0.0 { (v[v.len() - 1] - v[0]) / 2.0 / median } else { 0.0 };
    (median, spread)
}
