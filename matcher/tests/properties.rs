//! Property tests: the fast matchers against simple models.

use proptest::prelude::*;
use switchboard_matcher::{reference::Reference, Pattern, PatternSet};

/// Patterns over the characters that make fnmatch interesting.
fn pattern() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(vec![
            "a", "b", ".", "*", "?", "[", "]", "!", "-", "^", "\\", "é", "ab", "a.b",
        ]),
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(vec!["a", "b", ".", "-", "]", "é", "x", "ab"]),
        0..14,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn pattern_matches_like_the_reference(p in pattern(), n in name()) {
        prop_assert_eq!(Pattern::new(&p).unwrap().is_match(&n), Reference::new(&p).is_match(&n));
    }

    #[test]
    fn pattern_set_matches_like_a_loop(ps in proptest::collection::vec(pattern(), 0..24), names in proptest::collection::vec(name(), 1..8)) {
        let set = PatternSet::new(&ps).unwrap();
        let singles: Vec<Pattern> = ps.iter().map(|p| Pattern::new(p).unwrap()).collect();
        let mut out = vec![usize::MAX];
        for n in &names {
            let expected: Vec<usize> = (0..singles.len()).filter(|&i| singles[i].is_match(n)).collect();
            prop_assert_eq!(set.matches(n), expected.clone());
            set.matches_into(n, &mut out);
            prop_assert_eq!(&out, &expected);
            prop_assert_eq!(set.is_match(n), !expected.is_empty());
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Dotted names and the workload's shapes, where the buckets matter.
    #[test]
    fn pattern_set_on_dotted_names(
        ps in proptest::collection::vec("(plugin[0-9]{1,2}|user|a[0-9]|quote)?(\\.)?(\\*|\\?|action[0-9]|\\[0-9\\]|ended[0-9]|\\.)*", 0..40),
        names in proptest::collection::vec("(plugin[0-9]{1,2}|user|a[0-9]|quote)(\\.)?(action[0-9]|[0-9]|ended[0-9]|\\.|x)*", 1..8),
    ) {
        let set = PatternSet::new(&ps).unwrap();
        for n in &names {
            let expected: Vec<usize> = (0..ps.len()).filter(|&i| Reference::new(&ps[i]).is_match(n)).collect();
            prop_assert_eq!(set.matches(n), expected);
        }
    }
}
