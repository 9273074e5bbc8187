//! `PatternSet::matches` against a loop of `Pattern::is_match`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_matcher::{Pattern, PatternSet};

fuzz_target!(|input: (Vec<&str>, Vec<&str>)| {
    let (patterns, names) = input;
    let set = match PatternSet::new(&patterns) {
        Ok(set) => set,
        Err(_) => {
            assert!(patterns.iter().any(|p| Pattern::new(p).is_err()));
            return;
        }
    };
    let singles: Vec<Pattern> = patterns.iter().map(|p| Pattern::new(p).unwrap()).collect();
    let mut out = Vec::new();
    for name in names {
        let expected: Vec<usize> = (0..singles.len()).filter(|&i| singles[i].is_match(name)).collect();
        set.matches_into(name, &mut out);
        assert_eq!(out, expected, "name {name:?} patterns {patterns:?}");
    }
});
