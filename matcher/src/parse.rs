//! Turning an fnmatch pattern into tokens, exactly as CPython does.
//!
//! CPython's `fnmatch.translate` turns a pattern into a regular expression
//! and lets `re` decide. The tricky part is the bracket expression: CPython
//! splits its body into chunks around range hyphens, removes reversed ranges,
//! escapes what is left, and hands the result to `sre_parse`. The quirks that
//! follow (a `[d-a!]` that matches any character, a `[d-a!x]` that is
//! negated) are part of the semantics users already rely on, so this module
//! replays the same steps on the same data instead of re-deriving the rules.
//! The conformance fixture generated from CPython checks the result.

/// One element of a parsed pattern. Every token but [`Token::Star`] matches
/// exactly one character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    /// This character, and nothing else.
    Literal(char),
    /// Any one character (`?`, or a bracket expression CPython reduces to `.`).
    AnyChar,
    /// One character in (or, negated, not in) a set.
    Class(Class),
    /// A bracket expression whose set is empty: it matches no character, so
    /// the whole pattern matches nothing.
    Never,
    /// Any run of characters, including none. Consecutive stars are one.
    Star,
}

/// A bracket expression: a list of inclusive ranges, possibly negated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Class {
    negated: bool,
    /// Bit `c` is set when ASCII character `c` is in one of the ranges.
    ascii: u128,
    /// The ranges that reach beyond ASCII (kept whole; checked only for
    /// non-ASCII characters).
    wide: Vec<(char, char)>,
}

impl Class {
    fn new(negated: bool, ranges: &[(char, char)]) -> Class {
        let mut ascii = 0u128;
        let mut wide = Vec::new();
        for &(lo, hi) in ranges {
            if lo > hi {
                continue;
            }
            let (lo_u, hi_u) = (lo as u32, hi as u32);
            if lo_u < 128 {
                for c in lo_u..=hi_u.min(127) {
                    ascii |= 1u128 << c;
                }
            }
            if hi_u >= 128 {
                wide.push((lo, hi));
            }
        }
        Class { negated, ascii, wide }
    }

    /// Whether `c` is matched by this bracket expression.
    #[inline]
    pub(crate) fn matches(&self, c: char) -> bool {
        let code = c as u32;
        let inside = if code < 128 {
            self.ascii & (1u128 << code) != 0
        } else {
            self.wide.iter().any(|&(lo, hi)| lo <= c && c <= hi)
        };
        inside != self.negated
    }
}

/// Parses `pattern` into tokens, collapsing runs of `*`.
pub(crate) fn tokenize(pattern: &str) -> Vec<Token> {
    let pat: Vec<char> = pattern.chars().collect();
    let n = pat.len();
    let mut out: Vec<Token> = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let c = pat[i];
        i += 1;
        match c {
            '*' => {
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            '?' => out.push(Token::AnyChar),
            '[' => match bracket(&pat, i) {
                Some((token, next)) => {
                    out.push(token);
                    i = next;
                }
                None => out.push(Token::Literal('[')),
            },
            c => out.push(Token::Literal(c)),
        }
    }
    out
}

/// Parses the bracket expression whose body starts at `pat[start]` (just after
/// the `[`). Returns the token and the index after the closing `]`, or `None`
/// when the bracket never closes (it is then a literal `[`).
fn bracket(pat: &[char], start: usize) -> Option<(Token, usize)> {
    let n = pat.len();
    let mut j = start;
    if j < n && pat[j] == '!' {
        j += 1;
    }
    if j < n && pat[j] == ']' {
        j += 1;
    }
    while j < n && pat[j] != ']' {
        j += 1;
    }
    if j >= n {
        return None;
    }
    let body = &pat[start..j];
    // The regex body CPython builds: characters plus a flag saying whether
    // each was escaped with a backslash. Unescaped '-' between chunks forms
    // ranges; everything else is literal.
    let mut stuff: Vec<(char, bool)> = Vec::with_capacity(body.len() + 2);
    if !body.contains(&'-') {
        stuff.extend(body.iter().map(|&c| (c, c == '\\')));
    } else {
        let mut chunks: Vec<Vec<char>> = Vec::new();
        let mut i = start;
        let mut k = if pat[i] == '!' { i + 2 } else { i + 1 };
        while let Some(dash) = (k..j).find(|&x| pat[x] == '-') {
            chunks.push(pat[i..dash].to_vec());
            i = dash + 1;
            k = dash + 3;
        }
        let chunk = &pat[i..j];
        if !chunk.is_empty() {
            chunks.push(chunk.to_vec());
        } else if let Some(last) = chunks.last_mut() {
            last.push('-');
        }
        // Remove empty (reversed) ranges, as CPython does.
        for k in (1..chunks.len()).rev() {
            if let (Some(&a), Some(&b)) = (chunks[k - 1].last(), chunks[k].first()) {
                if a > b {
                    let tail: Vec<char> = chunks[k][1..].to_vec();
                    let prev = &mut chunks[k - 1];
                    prev.pop();
                    prev.extend(tail);
                    chunks.remove(k);
                }
            }
        }
        for (idx, chunk) in chunks.iter().enumerate() {
            if idx > 0 {
                stuff.push(('-', false));
            }
            stuff.extend(chunk.iter().map(|&c| (c, c == '\\' || c == '-')));
        }
    }
    // CPython escapes the set operators '&', '~' and '|'.
    for item in stuff.iter_mut() {
        if matches!(item.0, '&' | '~' | '|') {
            item.1 = true;
        }
    }
    let next = j + 1;
    if stuff.is_empty() {
        return Some((Token::Never, next));
    }
    if stuff.len() == 1 && stuff[0] == ('!', false) {
        return Some((Token::AnyChar, next));
    }
    let mut negated = false;
    match stuff[0] {
        ('!', false) => {
            negated = true;
            stuff.remove(0);
        }
        ('^', false) | ('[', false) => stuff[0].1 = true,
        _ => {}
    }
    Some((Token::Class(Class::new(negated, &sre_class_ranges(&stuff))), next))
}

/// Reads a regex class body the way `sre_parse` does: an item followed by an
/// unescaped `-` and another item is a range; a trailing `-` is literal.
fn sre_class_ranges(stuff: &[(char, bool)]) -> Vec<(char, char)> {
    let mut ranges = Vec::with_capacity(stuff.len());
    let mut p = 0;
    while p < stuff.len() {
        let lo = stuff[p].0;
        p += 1;
        if p < stuff.len() && stuff[p] == ('-', false) {
            p += 1;
            if p >= stuff.len() {
                ranges.push((lo, lo));
                ranges.push(('-', '-'));
                break;
            }
            let hi = stuff[p].0;
            p += 1;
            // CPython removed every reversed range above; were one left, sre
            // would reject it, so it can match nothing.
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(pattern: &str) -> Token {
        let tokens = tokenize(pattern);
        assert_eq!(tokens.len(), 1, "{pattern:?} parsed as {tokens:?}");
        tokens.into_iter().next().unwrap()
    }

    #[test]
    fn stars_collapse() {
        assert_eq!(tokenize("a**b"), vec![Token::Literal('a'), Token::Star, Token::Literal('b')]);
    }

    #[test]
    fn unterminated_bracket_is_literal() {
        assert_eq!(tokenize("[a"), vec![Token::Literal('['), Token::Literal('a')]);
        assert_eq!(
            tokenize("[!]"),
            vec![Token::Literal('['), Token::Literal('!'), Token::Literal(']')]
        );
    }

    #[test]
    fn reversed_range_quirks() {
        assert_eq!(class("[d-b]"), Token::Never);
        assert_eq!(class("[!d-b]"), Token::AnyChar);
        // CPython drops the reversed range and is left with "!": any character.
        assert_eq!(class("[d-a!]"), Token::AnyChar);
        match class("[d-a!x]") {
            Token::Class(c) => {
                assert!(!c.matches('x'));
                assert!(c.matches('d'));
            }
            other => panic!("{other:?}"),
        }
    }
}
