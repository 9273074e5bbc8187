//! Criterion benches for the matcher: `PatternSet` against a loop of
//! `Pattern`s at 10 / 1k / 10k / 100k patterns, and building the set.
//! Each benchmark first checks that both answer the same number of matches.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard_bench::workload::matcher_workload;
use switchboard_matcher::{Pattern, PatternSet};

const NAMES: usize = 256;

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("matches");
    group.sample_size(20);
    group.throughput(Throughput::Elements(NAMES as u64));
    for n in [10usize, 1_000, 10_000, 100_000] {
        let w = matcher_workload(n, NAMES, 7);
        let set = PatternSet::new(&w.patterns).expect("valid patterns");
        let singles: Vec<Pattern> = w.patterns.iter().map(|p| Pattern::new(p).unwrap()).collect();
        let set_count: usize = w.names.iter().map(|name| set.matches(name).len()).sum();
        let loop_count: usize =
            w.names.iter().map(|name| singles.iter().filter(|p| p.is_match(name)).count()).sum();
        assert_eq!(set_count, loop_count, "set and loop disagree at {n} patterns");
        assert!(set_count >= NAMES / 2);

        group.bench_with_input(BenchmarkId::new("set", n), &w.names, |b, names| {
            let mut out = Vec::new();
            b.iter(|| {
                let mut total = 0;
                for name in names {
                    set.matches_into(black_box(name), &mut out);
                    total += out.len();
                }
                assert_eq!(total, set_count);
            })
        });
        if n <= 10_000 {
            group.bench_with_input(BenchmarkId::new("loop", n), &w.names, |b, names| {
                b.iter(|| {
                    let total: usize = names
                        .iter()
                        .map(|name| singles.iter().filter(|p| p.is_match(black_box(name))).count())
                        .sum();
                    assert_eq!(total, loop_count);
                })
            });
        }
    }
    group.finish();
}

fn building(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for n in [1_000usize, 100_000] {
        let w = matcher_workload(n, 0, 7);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &w.patterns, |b, patterns| {
            b.iter(|| {
                let set = PatternSet::new(black_box(patterns)).unwrap();
                assert_eq!(set.len(), n);
            })
        });
    }
    group.finish();
}

mod group {
    //! The criterion entry points.
    #![allow(missing_docs)]
    use super::*;
    criterion_group!(benches, matching, building);
}

criterion_main!(group::benches);
