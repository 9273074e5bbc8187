//! The CPython conformance table: every case's expected answer was decided by
//! CPython's `fnmatch.fnmatchcase` (see `fixtures/generate.py`).

use std::collections::BTreeMap;

use switchboard_matcher::{reference::Reference, Pattern, PatternSet};

struct Case {
    pattern: String,
    name: String,
    expected: bool,
}

fn cases() -> Vec<Case> {
    let text = include_str!("fixtures/conformance.jsonl");
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("fixture line is JSON");
            Case {
                pattern: v["pattern"].as_str().expect("pattern").to_owned(),
                name: v["name"].as_str().expect("name").to_owned(),
                expected: v["match"].as_bool().expect("match"),
            }
        })
        .collect()
}

fn check(what: &str, answer: impl Fn(&Case) -> bool) {
    let cases = cases();
    assert!(cases.len() > 10_000, "the fixture lost its cases");
    let wrong: Vec<String> = cases
        .iter()
        .filter(|c| answer(c) != c.expected)
        .map(|c| format!("{:?} vs {:?}: CPython says {}", c.pattern, c.name, c.expected))
        .collect();
    assert!(
        wrong.is_empty(),
        "{what} disagrees with CPython on {} cases:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn pattern_agrees_with_cpython() {
    check("Pattern::is_match", |c| Pattern::new(&c.pattern).unwrap().is_match(&c.name));
}

#[test]
fn reference_agrees_with_cpython() {
    check("reference::is_match", |c| Reference::new(&c.pattern).is_match(&c.name));
}

#[test]
fn pattern_set_agrees_with_cpython() {
    let cases = cases();
    // One set holding every distinct pattern of the table; each case asks
    // whether its pattern's index is among the set's answers for its name.
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        let next = index.len();
        index.entry(c.pattern.as_str()).or_insert(next);
    }
    let mut patterns = vec![""; index.len()];
    for (p, &i) in &index {
        patterns[i] = p;
    }
    let set = PatternSet::new(&patterns).unwrap();
    let mut answers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for c in &cases {
        answers.entry(c.name.as_str()).or_insert_with(|| set.matches(&c.name));
    }
    check("PatternSet::matches", |c| answers[c.name.as_str()].contains(&index[c.pattern.as_str()]));
}
