//! Event names ↔ NATS subjects, and import globs → NATS subscription filters.
//!
//! # Escaping
//!
//! Any event name the bus accepts (non-empty, no NUL) becomes a valid NATS
//! subject, and back, exactly. The name is split on `.` into tokens, as NATS
//! splits subjects, and each token is escaped on its own:
//!
//! * ASCII letters, digits and `- _ + = , : ; @ ! # $ & ( ) / ' " ? [ ] ^ { } | ~`
//!   stay as they are (so `trivia.started` is the subject
//!   `<prefix>.trivia.started`);
//! * every other byte (space, tab, `*`, `>`, `%`, non-ASCII UTF-8, controls)
//!   becomes `%XX`, two upper-case hex digits;
//! * an empty token (`a..b`, a leading or trailing `.`) becomes `%`, which no
//!   other token can be, since `%` itself is always escaped.
//!
//! Escaped tokens are never `*` or `>`, never empty and hold no whitespace,
//! so the subject is valid. Tokens keep their places, so a glob's literal
//! leading tokens escape to the subject's leading tokens: that is what lets
//! an import glob become a subject filter.

use std::fmt;

/// The longest subject prefix accepted, in bytes, so the longest event
/// name (1024 bytes, three times that escaped) still fits a NATS protocol
/// line.
pub const MAX_PREFIX_LEN: usize = 256;

/// Why a subject prefix was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixError {
    /// The prefix.
    pub prefix: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid NATS subject prefix {:?}: {}", self.prefix, self.reason)
    }
}

impl std::error::Error for PrefixError {}

/// A checked subject prefix: every event name maps to a subject under it,
/// and back. (A type of its own, so a prefix and a name, both strings, are
/// never swapped.)
///
/// # Examples
///
/// ```
/// use switchboard_nats::subject::Prefix;
///
/// let prefix = Prefix::new("sb")?;
/// let subject = prefix.subject_for("trivia.round won");
/// assert_eq!(subject, "sb.trivia.round%20won");
/// assert_eq!(prefix.name_for(&subject).as_deref(), Ok("trivia.round won"));
/// assert_eq!(prefix.filter_for("trivia.*").subject(), "sb.trivia.>");
/// # Ok::<(), switchboard_nats::subject::PrefixError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// `prefix`, once checked to be a literal NATS subject: dot-separated,
    /// non-empty tokens of printable ASCII, no wildcard token, not starting
    /// with `$`, at most [`MAX_PREFIX_LEN`] bytes.
    ///
    /// # Errors
    ///
    /// [`PrefixError`], saying which rule it breaks.
    pub fn new(prefix: &str) -> Result<Prefix, PrefixError> {
        check_prefix(prefix)?;
        Ok(Prefix(prefix.to_owned()))
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject an event named `name` is published under.
    pub fn subject_for(&self, name: &str) -> String {
        subject_for(&self.0, name)
    }

    /// The event name of a subject under this prefix: the inverse of
    /// [`subject_for`](Prefix::subject_for).
    ///
    /// # Errors
    ///
    /// [`SubjectError`] for a subject `subject_for` cannot have made
    /// (another publisher on the prefix, or a corrupted message).
    pub fn name_for(&self, subject: &str) -> Result<String, SubjectError> {
        name_for(&self.0, subject)
    }

    /// The narrowest filter that receives every event `glob` matches (see
    /// the module docs).
    pub fn filter_for(&self, glob: &str) -> Filter {
        filter_for(&self.0, glob)
    }

    /// The filters for `globs` reduced to a disjoint set: a filter another
    /// one covers is left out, so no message is delivered twice on one
    /// connection.
    pub fn disjoint_filters(&self, globs: &[String]) -> Vec<Filter> {
        disjoint_filters(&self.0, globs)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_prefix(prefix: &str) -> Result<(), PrefixError> {
    let refuse = |reason| Err(PrefixError { prefix: prefix.to_owned(), reason });
    if prefix.is_empty() {
        return refuse("it is empty");
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return refuse("it is longer than 256 bytes");
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return refuse("it has an empty token");
        }
        if token == "*" || token == ">" {
            return refuse("it has a wildcard token");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return refuse("only printable ASCII without spaces is allowed");
        }
    }
    if prefix.starts_with('$') {
        return refuse("subjects starting with `$` are reserved by NATS");
    }
    Ok(())
}

fn kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_+=,:;@!#$&()/'\"?[]^{}|~".contains(&b)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn escape_token(token: &str, out: &mut String) {
    if token.is_empty() {
        out.push('%');
        return;
    }
    for &b in token.as_bytes() {
        if kept(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

fn subject_for(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1 + name.len());
    out.push_str(prefix);
    for token in name.split('.') {
        out.push('.');
        escape_token(token, &mut out);
    }
    out
}

/// Why a subject could not be turned back into an event name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectError {
    /// The subject.
    pub subject: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subject {:?} is not an escaped event name: {}", self.subject, self.reason)
    }
}

impl std::error::Error for SubjectError {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// See [`Prefix::name_for`].
fn name_for(prefix: &str, subject: &str) -> Result<String, SubjectError> {
    let refuse = |reason| Err(SubjectError { subject: subject.to_owned(), reason });
    let Some(rest) = subject.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else {
        return refuse("it is not under the bridge's prefix");
    };
    let mut bytes = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'.');
        }
        if token == "%" {
            continue;
        }
        if token.is_empty() {
            return refuse("it has an empty token");
        }
        let raw = token.as_bytes();
        let mut at = 0;
        while at < raw.len() {
            let b = raw[at];
            if b == b'%' {
                let (Some(hi), Some(lo)) = (
                    raw.get(at + 1).copied().and_then(hex),
                    raw.get(at + 2).copied().and_then(hex),
                ) else {
                    return refuse("a `%` is not followed by two upper-case hex digits");
                };
                let byte = hi << 4 | lo;
                if kept(byte) {
                    return refuse("a character that is never escaped is escaped");
                }
                bytes.push(byte);
                at += 3;
            } else if kept(b) {
                bytes.push(b);
                at += 1;
            } else {
                return refuse("it holds a character that is always escaped");
            }
        }
    }
    match String::from_utf8(bytes) {
        Ok(name) if name.contains('\0') => refuse("the name holds a NUL character"),
        Ok(name) => Ok(name),
        Err(_) => refuse("the escaped bytes are not UTF-8"),
    }
}

/// A NATS subscription filter: literal tokens, then `>` or not.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Filter {
    tokens: Vec<String>,
    /// Ends in `>`: one or more further tokens.
    rest: bool,
}

impl Filter {
    /// The filter as a NATS subject.
    pub fn subject(&self) -> String {
        let mut s = self.tokens.join(".");
        if self.rest {
            s.push_str(".>");
        }
        s
    }

    /// Whether every subject `other` matches, `self` matches too.
    fn covers(&self, other: &Filter) -> bool {
        if !self.rest {
            return self == other;
        }
        // `self` takes any subject longer than its tokens that starts with
        // them; `other` sends only such subjects when it starts with them
        // and is longer, or ends in `>` and is at least as long.
        let starts = other.tokens.len() >= self.tokens.len()
            && other.tokens[..self.tokens.len()] == self.tokens[..];
        starts && (other.rest || other.tokens.len() > self.tokens.len())
    }
}

/// The narrowest filter that receives every event `glob` matches. An
/// fnmatch `*` is never a NATS `*` (which cannot match a `.`): the filter
/// keeps the glob's complete literal tokens before its first wildcard
/// character and ends in `>`; a glob without wildcards is its exact
/// subject. Imported events are then re-checked with the exact matcher.
fn filter_for(prefix: &str, glob: &str) -> Filter {
    let mut tokens: Vec<String> = prefix.split('.').map(str::to_owned).collect();
    match glob.find(['*', '?', '[']) {
        None => {
            for token in glob.split('.') {
                let mut t = String::new();
                escape_token(token, &mut t);
                tokens.push(t);
            }
            Filter { tokens, rest: false }
        }
        Some(first_wild) => {
            // Only the tokens that end before the wildcard are known.
            let literal = &glob[..first_wild];
            if let Some(last_dot) = literal.rfind('.') {
                for token in literal[..last_dot].split('.') {
                    let mut t = String::new();
                    escape_token(token, &mut t);
                    tokens.push(t);
                }
            }
            Filter { tokens, rest: true }
        }
    }
}

/// See [`Prefix::disjoint_filters`].
fn disjoint_filters(prefix: &str, globs: &[String]) -> Vec<Filter> {
    let mut all: Vec<Filter> = globs.iter().map(|g| filter_for(prefix, g)).collect();
    all.sort();
    all.dedup();
    let mut out: Vec<Filter> = Vec::with_capacity(all.len());
    for (i, f) in all.iter().enumerate() {
        // After the dedup no two filters are equal, so covering is strict.
        let covered = all.iter().enumerate().any(|(j, g)| j != i && g.covers(f));
        if !covered {
            out.push(f.clone());
        }
    }
    out
}

/// Escapes a header value the same way as a subject token, so any source
/// name (spaces, newlines, non-ASCII) travels as printable ASCII.
pub(crate) fn escape_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_token(value, &mut out);
    out
}

/// The inverse of [`escape_header`].
pub(crate) fn unescape_header(value: &str) -> Option<String> {
    // Escaped values hold no `.`: one token, decoded as one.
    name_for("h", &format!("h.{value}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_matcher::Pattern;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(subject_for("sb", "trivia.started"), "sb.trivia.started");
        assert_eq!(subject_for("a.b", "quote_added-2"), "a.b.quote_added-2");
    }

    #[test]
    fn awkward_names_escape_and_come_back() {
        for name in [
            "chat message",
            "a..b",
            ".leading",
            "trailing.",
            ".",
            "..",
            "*",
            ">",
            "a.*.b",
            "a.>",
            "100%",
            "%",
            "%41",
            "tab\there",
            "line\nbreak",
            "emoji.🎲",
            "ünïcödé",
            "trivia.*",
            "x[0-9]?",
        ] {
            let subject = subject_for("sb", name);
            assert!(
                subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"),
                "{name:?} gave {subject:?}"
            );
            assert!(
                !subject.bytes().any(|b| b.is_ascii_whitespace() || !b.is_ascii()),
                "{subject:?}"
            );
            assert_eq!(name_for("sb", &subject).as_deref(), Ok(name), "{subject:?}");
        }
    }

    #[test]
    fn subjects_not_made_by_escaping_are_refused() {
        for subject in
            ["sb", "other.x", "sb.a..b", "sb.%4", "sb.%zz", "sb.%41", "sb.a b", "sb.%FF", "sb.%00"]
        {
            assert!(name_for("sb", subject).is_err(), "{subject:?} was accepted");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("switchboard").is_ok());
        assert!(check_prefix("bots.shard-1").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", "$JS.x", ".a", "a."] {
            assert!(check_prefix(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_prefix(&"a".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }

    #[test]
    fn globs_become_superset_filters() {
        let f = |g: &str| filter_for("sb", g).subject();
        assert_eq!(f("trivia.*"), "sb.trivia.>");
        assert_eq!(f("*"), "sb.>");
        assert_eq!(f("trivia.started"), "sb.trivia.started");
        assert_eq!(f("tri*"), "sb.>");
        assert_eq!(f("a.b?c.d"), "sb.a.>");
        assert_eq!(f("a b.x*"), "sb.a%20b.>");
        assert_eq!(f("[t]rivia.*"), "sb.>");
    }

    #[test]
    fn overlapping_filters_reduce_to_a_disjoint_set() {
        let globs = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let subjects = |g: &[&str]| {
            disjoint_filters("sb", &globs(g)).iter().map(Filter::subject).collect::<Vec<_>>()
        };
        assert_eq!(subjects(&["trivia.*", "trivia.started", "*"]), vec!["sb.>"]);
        assert_eq!(subjects(&["trivia.*", "trivia.started"]), vec!["sb.trivia.>"]);
        assert_eq!(
            subjects(&["trivia.*", "trivia.*", "quote.*"]),
            vec!["sb.quote.>", "sb.trivia.>"]
        );
        assert_eq!(subjects(&["trivia", "trivia.*"]), vec!["sb.trivia", "sb.trivia.>"]);
        assert_eq!(subjects(&["a.*", "a.b.*"]), vec!["sb.a.>"]);
    }

    /// Every name a glob matches is published under a subject its filter
    /// receives, for names and globs of the awkward kinds.
    #[test]
    fn filters_receive_every_matching_name() {
        let names = [
            "trivia.started",
            "trivia.",
            "trivia..x",
            "trivia.a.b",
            "trivia",
            "tri",
            "a b.c",
            "a b.",
            "x.y.z",
            ".",
            "..",
        ];
        let globs = [
            "trivia.*",
            "*",
            "tri*",
            "trivia",
            "a b.*",
            "*.",
            "x.?.z",
            "[x].y.z",
            ".*",
            "trivia.?*",
        ];
        for glob in globs {
            let filter = filter_for("sb", glob);
            let pattern = Pattern::new(glob).expect("valid glob");
            for name in names {
                if pattern.is_match(name) {
                    let subject = subject_for("sb", name);
                    assert!(
                        nats_match(&filter.subject(), &subject),
                        "{glob:?} -> {} misses {subject:?}",
                        filter.subject()
                    );
                }
            }
        }
    }

    /// NATS's own subject matching, for the tests.
    fn nats_match(filter: &str, subject: &str) -> bool {
        let f: Vec<&str> = filter.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, t) in f.iter().enumerate() {
            match *t {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if i < s.len() && s[i] == t => {}
                _ => return false,
            }
        }
        f.len() == s.len()
    }

    use proptest::prelude::*;

    /// Names and globs over an alphabet rich in what is special to fnmatch
    /// and to NATS.
    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('.'),
                Just('*'),
                Just('?'),
                Just('['),
                Just(']'),
                Just('>'),
                Just('%'),
                Just(' '),
                Just('a'),
                Just('b'),
                Just('é'),
            ],
            0..max,
        )
        .prop_map(|c| c.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_name_is_a_valid_subject_and_comes_back(name in "[^\\x00]{1,40}") {
            let subject = subject_for("p.q", &name);
            prop_assert!(subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"));
            prop_assert!(subject.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert_eq!(name_for("p.q", &subject), Ok(name));
        }

        #[test]
        fn a_globs_filter_receives_every_name_it_matches(glob in text(8), name in text(8)) {
            prop_assume!(!name.is_empty());
            let pattern = Pattern::new(&glob).expect("valid");
            if pattern.is_match(&name) {
                let filter = filter_for("p", &glob).subject();
                prop_assert!(nats_match(&filter, &subject_for("p", &name)), "{} misses {:?}", filter, name);
            }
        }

        #[test]
        fn disjoint_filters_receive_each_subject_once(globs in proptest::collection::vec(text(6), 1..5), name in text(8)) {
            prop_assume!(!name.is_empty());
            let subject = subject_for("p", &name);
            let all: Vec<String> = globs.iter().map(|g| filter_for("p", g).subject()).collect();
            let reduced: Vec<String> = disjoint_filters("p", &globs).iter().map(Filter::subject).collect();
            let before = all.iter().any(|f| nats_match(f, &subject));
            let after = reduced.iter().filter(|f| nats_match(f, &subject)).count();
            prop_assert_eq!(after, usize::from(before), "{:?} -> {:?}", all, reduced);
        }
    }

    #[test]
    fn header_values_round_trip() {
        for v in ["trivia", "my plugin", "a.b", "line\nbreak", "ü", ""] {
            let e = escape_header(v);
            assert!(e.bytes().all(|b| b.is_ascii_graphic()), "{e:?}");
            assert_eq!(unescape_header(&e).as_deref(), Some(v));
        }
    }
}
