//! Hostile input gets a defined answer or a typed error: never a panic, never a hang.

use switchboard_matcher::{Pattern, PatternError, PatternSet, MAX_PATTERN_LEN};

#[test]
fn overlong_pattern_is_a_typed_error() {
    let long = "a".repeat(1 << 20);
    let err = Pattern::new(&long).unwrap_err();
    assert_eq!(err, PatternError::TooLong { len: 1 << 20, max: MAX_PATTERN_LEN });
    assert_eq!(
        err.to_string(),
        format!("pattern is 1048576 bytes long, more than the limit of {MAX_PATTERN_LEN}")
    );
    assert!(PatternSet::new(["ok", long.as_str()]).is_err());
    // Exactly at the limit is fine.
    assert!(Pattern::new(&"*".repeat(MAX_PATTERN_LEN)).unwrap().is_match("anything"));
}

#[test]
fn megabyte_names_are_answered() {
    let name = format!("{}b", "a".repeat(1 << 20));
    assert!(Pattern::new("*b").unwrap().is_match(&name));
    assert!(Pattern::new("a*a?").unwrap().is_match(&name));
    assert!(!Pattern::new("*c*").unwrap().is_match(&name));
    assert!(!Pattern::new("*a[!a]a*").unwrap().is_match(&name));
    let set = PatternSet::new(["*b", "a*", "*c", "[a]*[b]", "?*?"]).unwrap();
    assert_eq!(set.matches(&name), vec![0, 1, 3, 4]);
}

/// CPython's bpo-40480: a naive backtracking matcher takes forever here.
#[test]
fn regression_bpo_40480_no_exponential_backtracking() {
    let evil = Pattern::new(&format!("{}b", "*a".repeat(40))).unwrap();
    assert!(!evil.is_match(&"a".repeat(20_000)));
    assert!(evil.is_match(&format!("{}b", "a".repeat(20_000))));
    let p = Pattern::new(&"*a".repeat(10)).unwrap();
    assert!(p.is_match(&"a".repeat(50)));
    assert!(!p.is_match(&format!("{}b", "a".repeat(50))));
}

#[test]
fn nul_bytes_multibyte_and_empty_strings() {
    assert!(Pattern::new("a\0*").unwrap().is_match("a\0b"));
    assert!(!Pattern::new("a\0").unwrap().is_match("a"));
    assert!(Pattern::new("").unwrap().is_match(""));
    assert!(!Pattern::new("").unwrap().is_match("a"));
    assert!(Pattern::new("*").unwrap().is_match(""));
    assert!(!Pattern::new("?").unwrap().is_match(""));
    // '?' is one Unicode scalar value, whatever its UTF-8 length.
    for c in ["é", "€", "😀"] {
        assert!(Pattern::new("?").unwrap().is_match(c), "{c}");
        assert!(Pattern::new("[!a]").unwrap().is_match(c), "{c}");
        assert!(!Pattern::new("??").unwrap().is_match(c), "{c}");
    }
    assert!(Pattern::new("*€?").unwrap().is_match("x€😀"));
    assert!(Pattern::new("[é-ê]x").unwrap().is_match("êx"));
    let set = PatternSet::new(["", "?", "*", "é*", "*😀"]).unwrap();
    assert_eq!(set.matches(""), vec![0, 2]);
    assert_eq!(set.matches("é😀"), vec![2, 3, 4]);
}

#[test]
fn duplicate_patterns_each_get_their_index() {
    let set = PatternSet::new(["a.*", "a.b", "a.*", "a.b", "*.b", "*.b"]).unwrap();
    assert_eq!(set.matches("a.b"), vec![0, 1, 2, 3, 4, 5]);
    assert!(PatternSet::empty().matches("a").is_empty());
}

/// Dot-aligned keys are looked up in batches and long keys partly out of
/// line: names with many dots, keys longer than a slot holds, and names far
/// longer than any key must all answer like a loop of patterns.
#[test]
fn many_dots_and_long_keys_agree_with_a_loop() {
    let long = "segment-that-is-long".repeat(3);
    let patterns = vec![
        format!("{long}.*"),
        format!("{long}.x.*"),
        format!("*.{long}"),
        format!("?{long}.{long}"),
        format!("{long}.{long}"),
        "a.*".to_string(),
        "a.a.a.a.a.a.a.a.a.a.*".to_string(),
        "*.a.a".to_string(),
        "a.?.a*".to_string(),
        format!("*.{}", "b".repeat(MAX_PATTERN_LEN - 2)),
        format!("{}.*", "c".repeat(MAX_PATTERN_LEN - 2)),
    ];
    let set = PatternSet::new(&patterns).unwrap();
    let singles: Vec<Pattern> = patterns.iter().map(|p| Pattern::new(p).unwrap()).collect();
    let names = vec![
        format!("{long}.x.y"),
        format!("{long}.{long}"),
        format!("q{long}.{long}"),
        format!("z.{long}"),
        format!("{long}x.{long}"),
        "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a".to_string(),
        "a.b.a.a".to_string(),
        ".".repeat(40),
        format!("x.{}", "b".repeat(MAX_PATTERN_LEN - 2)),
        format!("x.x.{}", "b".repeat(MAX_PATTERN_LEN + 10)),
        format!("{}.{}", "c".repeat(MAX_PATTERN_LEN - 2), "a.".repeat(5000)),
        format!("{}.{}", "a.".repeat(5000), "b".repeat(MAX_PATTERN_LEN - 2)),
    ];
    for name in &names {
        let expected: Vec<usize> =
            (0..singles.len()).filter(|&i| singles[i].is_match(name)).collect();
        assert_eq!(set.matches(name), expected, "name {:?}", &name[..name.len().min(80)]);
    }
    // The loop itself must find these, or the test proves little.
    assert_eq!(set.matches(&names[0]), vec![0, 1]);
    assert_eq!(set.matches(&names[2]), vec![2, 3]);
    assert_eq!(set.matches(&names[10]), vec![10]);
    assert_eq!(set.matches(&names[11]), vec![5, 6, 8, 9]);
}
