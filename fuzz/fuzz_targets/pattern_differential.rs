//! `Pattern::is_match` against the reference dynamic program, on arbitrary
//! patterns and names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_matcher::{reference::Reference, Pattern};

fuzz_target!(|input: (&str, &str)| {
    let (pattern, name) = input;
    // The reference is quadratic: keep its inputs small enough to stay fast.
    if pattern.len() > 64 || name.len() > 256 {
        return;
    }
    let compiled = Pattern::new(pattern).expect("short patterns always compile");
    assert_eq!(
        compiled.is_match(name),
        Reference::new(pattern).is_match(name),
        "pattern {pattern:?} name {name:?}"
    );
});
