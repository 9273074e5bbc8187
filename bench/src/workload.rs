//! The pattern and name mix the matcher is measured on.
//!
//! About 70% literal names (`plugin42.action7`), 25% prefix wildcards
//! (`plugin42.*`), two match-everything `*`, and the rest arbitrary globs
//! (`*.ended3`, `user7.?.login`, `a9[0-9]*`). Names are drawn half to hit a
//! pattern (built from a random pattern) and half to miss.

/// A small deterministic generator (xorshift64*), so workloads need no
/// dependency and never change between runs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A set of patterns and the names to match against them.
#[derive(Clone, Debug)]
pub struct MatcherWorkload {
    /// The subscription patterns.
    pub patterns: Vec<String>,
    /// The event names, about half of them matching some pattern.
    pub names: Vec<String>,
}

/// Builds the mixed workload with `patterns` patterns and `names` names.
pub fn matcher_workload(patterns: usize, names: usize, seed: u64) -> MatcherWorkload {
    let mut rng = Rng::new(seed);
    let plugins = (patterns as u64 / 8).max(1);
    let mut out = Vec::with_capacity(patterns);
    let stars = if patterns >= 10 { 2 } else { 0 };
    let globs = patterns * 5 / 100;
    let prefixes = patterns * 25 / 100;
    for i in 0..patterns {
        let p = rng.below(plugins);
        let pattern = if i < stars {
            "*".to_string()
        } else if i < stars + globs {
            let k = rng.below(plugins * 4);
            match i % 3 {
                0 => format!("*.ended{k}"),
                1 => format!("user{k}.?.login"),
                _ => format!("a{k}[0-9]*"),
            }
        } else if i < stars + globs + prefixes {
            format!("plugin{p}.*")
        } else {
            format!("plugin{p}.action{}", rng.below(64))
        };
        out.push(pattern);
    }
    let names = (0..names)
        .map(|i| {
            if i % 2 == 0 && !out.is_empty() {
                let pattern = &out[rng.below(out.len() as u64) as usize];
                name_matching(pattern, &mut rng)
            } else {
                match rng.below(3) {
                    0 => format!("plugin{}x.action{}", rng.below(plugins), rng.below(64)),
                    1 => format!("user{}..login", rng.below(plugins)),
                    _ => format!("quote.{}.removed", rng.below(1000)),
                }
            }
        })
        .collect();
    MatcherWorkload { patterns: out, names }
}

/// A name that `pattern` (one of the workload's shapes) matches.
fn name_matching(pattern: &str, rng: &mut Rng) -> String {
    let mut name = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => name.push_str(["", "x", "round.won", "7"][rng.below(4) as usize]),
            '?' => name.push('q'),
            '[' => {
                // The workload's only class is [0-9].
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                }
                name.push(char::from(b'0' + rng.below(10) as u8));
            }
            c => name.push(c),
        }
    }
    name
}
