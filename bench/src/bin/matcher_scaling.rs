//! Prints how `PatternSet::matches` scales with the number of patterns,
//! against a loop over single patterns (the seed's algorithm), measured in
//! the same run. Every row checks that both answer the same matches.
//!
//! `cargo run --release -p switchboard-bench --bin matcher_scaling`

use std::hint::black_box;
use std::time::Instant;

use switchboard_bench::median_time;
use switchboard_bench::workload::matcher_workload;
use switchboard_matcher::{Pattern, PatternSet};

const NAMES: usize = 4_000;
const ROUNDS: usize = 9;
const SET_PASSES: usize = 20;

struct Row {
    patterns: usize,
    build_ms: f64,
    set_ns: f64,
    naive_ns: f64,
}

fn main() {
    let sizes = [10usize, 1_000, 10_000, 100_000];
    let mut rows = Vec::new();
    let mut sets = Vec::new();
    for &n in &sizes {
        let w = matcher_workload(n, NAMES, 42);
        let build = median_time(5, || {
            black_box(PatternSet::new(&w.patterns).expect("valid patterns"));
        });
        let set = PatternSet::new(&w.patterns).expect("valid patterns");
        let singles: Vec<Pattern> =
            w.patterns.iter().map(|p| Pattern::new(p).expect("valid pattern")).collect();

        let set_total: usize = w.names.iter().map(|name| set.matches(name).len()).sum();
        // The naive loop is slow at large sizes: give it fewer names, and
        // compare its counts with the set's on exactly those names.
        let naive_names = (NAMES * 1_000 / n.max(1)).clamp(50, NAMES);
        let names = &w.names[..naive_names];
        let mut naive_total = 0usize;
        let naive_time = median_time(if n >= 10_000 { 3 } else { ROUNDS }, || {
            naive_total = 0;
            for name in names {
                naive_total += singles.iter().filter(|p| p.is_match(black_box(name))).count();
            }
        });
        let set_on_subset: usize = names.iter().map(|name| set.matches(name).len()).sum();
        assert_eq!(set_on_subset, naive_total, "set and loop disagree at {n} patterns");
        assert!(set_total >= NAMES / 2, "the workload's hits did not match at {n} patterns");

        rows.push(Row {
            patterns: n,
            build_ms: build.as_secs_f64() * 1e3,
            set_ns: 0.0,
            naive_ns: naive_time.as_secs_f64() * 1e9 / naive_names as f64,
        });
        sets.push((set, w.names, set_total));
    }

    // The sets are timed round-robin, one pass of every size per round, so
    // that drift on a shared machine (frequency, neighbours) hits every size
    // alike; each size's time is its median over the rounds.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut out = Vec::new();
    for round in 0..=ROUNDS {
        for (i, (set, names, expected)) in sets.iter().enumerate() {
            let start = Instant::now();
            let mut total = 0usize;
            for _ in 0..SET_PASSES {
                for name in names {
                    set.matches_into(black_box(name), &mut out);
                    total += out.len();
                }
            }
            let took = start.elapsed();
            assert_eq!(total, SET_PASSES * expected, "the set's answers changed between passes");
            if round > 0 {
                times[i].push(took.as_secs_f64() * 1e9 / (NAMES * SET_PASSES) as f64);
            }
        }
    }
    for (row, mut t) in rows.iter_mut().zip(times) {
        t.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        row.set_ns = t[t.len() / 2];
    }

    println!("patterns   build (ms)   set (ns/name)   loop (ns/name)   loop/set");
    for r in &rows {
        println!(
            "{:>8}   {:>10.3}   {:>13.1}   {:>14.1}   {:>8.1}x",
            r.patterns,
            r.build_ms,
            r.set_ns,
            r.naive_ns,
            r.naive_ns / r.set_ns
        );
    }
    let at = |n: usize| rows.iter().find(|r| r.patterns == n).expect("measured size");
    println!();
    println!(
        "set at 100k / set at 10 patterns: {:.2}x (target: at most 3x)",
        at(100_000).set_ns / at(10).set_ns
    );
    println!(
        "loop / set at 10k patterns:       {:.0}x (target: at least 100x)",
        at(10_000).naive_ns / at(10_000).set_ns
    );
    println!(
        "build of 100k patterns:           {:.1} ms (target: well under 1 s)",
        at(100_000).build_ms
    );

    // CPython's bpo-40480: 40 stars of "*a" then "b" against 20,000 "a"s.
    let evil = Pattern::new(&format!("{}b", "*a".repeat(40))).expect("valid pattern");
    let haystack = "a".repeat(20_000);
    let start = Instant::now();
    let matched = evil.is_match(&haystack);
    let took = start.elapsed();
    assert!(!matched, "the pathological pattern must not match");
    println!(
        "pathological (*a)x40 b vs 20,000 a: {:.3} ms (target: milliseconds)",
        took.as_secs_f64() * 1e3
    );
}
