//! Workloads and baselines shared by Switchboard's benchmarks.
//!
//! Everything here is deterministic (a fixed-seed generator), so two runs of
//! a bench measure the same work.

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
