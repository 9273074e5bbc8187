//! A small, obviously correct matcher, kept as an oracle for tests and
//! fuzzers.
//!
//! It shares the tokenizer with [`Pattern`](crate::Pattern) (whose bracket
//! rules the CPython conformance fixture checks) and decides the match with
//! the textbook dynamic program over (token, character) pairs: quadratic
//! time and memory, no cleverness. Use [`Pattern`](crate::Pattern) for real
//! work.

use crate::parse::{tokenize, Token};

/// A pattern, matched by a plain dynamic program (the pattern and the name
/// are both `&str`: the type keeps them from being swapped).
///
/// # Examples
///
/// ```
/// use switchboard_matcher::reference::Reference;
///
/// assert!(Reference::new("trivia.*").is_match("trivia.round.won"));
/// assert!(!Reference::new("[!a]").is_match("a"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reference<'p> {
    pattern: &'p str,
}

impl<'p> Reference<'p> {
    /// The pattern `pattern` (every string is one).
    pub fn new(pattern: &'p str) -> Reference<'p> {
        Reference { pattern }
    }

    /// Whether `name` matches the pattern.
    pub fn is_match(&self, name: &str) -> bool {
        is_match(self.pattern, name)
    }
}

fn is_match(pattern: &str, name: &str) -> bool {
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
