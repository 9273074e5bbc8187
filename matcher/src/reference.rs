//! A small, obviously correct matcher, kept as an oracle for tests and
//! fuzzers.
//!
//! It shares the tokenizer with [`Pattern`](crate::Pattern) (whose bracket
//! rules the CPython conformance fixture checks) and decides the match with
//! the textbook dynamic program over (token, character) pairs: quadratic
//! time and memory, no cleverness. Use [`Pattern`](crate::Pattern) for real
//! work.

use crate::parse::{tokenize, Token};

/// Whether `name` matches `pattern`, decided by a plain dynamic program.
///
/// # Examples
///
/// ```
/// use switchboard_matcher::reference;
///
/// assert!(reference::is_match("trivia.*", "trivia.round.won"));
/// assert!(!reference::is_match("[!a]", "a"));
/// ```
pub fn is_match(pattern: &str, name: &str) -> bool {
    let tokens = tokenize(pattern);
    let name: Vec<char> = name.chars().collect();
    // can[j] is true when tokens[..i] match name[..j], for the current i.
    let mut can = vec![false; name.len() + 1];
    can[0] = true;
    for token in &tokens {
        let mut next = vec![false; name.len() + 1];
        match token {
            Token::Star => {
                let mut seen = false;
                for j in 0..=name.len() {
                    seen |= can[j];
                    next[j] = seen;
                }
            }
            single => {
                for j in 0..name.len() {
                    if can[j] {
                        next[j + 1] = match single {
                            Token::Literal(c) => *c == name[j],
                            Token::AnyChar => true,
                            Token::Class(class) => class.matches(name[j]),
                            Token::Never | Token::Star => false,
                        };
                    }
                }
            }
        }
        can = next;
    }
    can[name.len()]
}
