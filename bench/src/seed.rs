//! The naive bus the seed describes, as a Rust developer would port it: a
//! map of pattern → handlers, and on every publish a loop that tests the
//! name against every pattern and calls the matching handlers in turn, on
//! the publishing thread.
//!
//! Patterns are compiled once (the seed's `fnmatch` caches its compiled
//! regexes), so what this measures is the algorithm: a test per pattern per
//! event, and handlers that run on the caller.

use std::collections::HashMap;

use switchboard::{Event, HandlerResult};
use switchboard_matcher::{Pattern, PatternError};

/// A handler of the naive bus.
pub type SeedHandler = Box<dyn Fn(&Event) -> HandlerResult + Send + Sync>;

/// The seed's algorithm: linear in the number of distinct patterns.
#[derive(Default)]
pub struct SeedBus {
    subscribers: HashMap<String, (Pattern, Vec<SeedHandler>)>,
}

impl std::fmt::Debug for SeedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedBus").field("patterns", &self.subscribers.len()).finish()
    }
}

impl SeedBus {
    /// An empty bus.
    pub fn new() -> SeedBus {
        SeedBus::default()
    }

    /// Adds `handler` under `pattern`.
    pub fn subscribe(&mut self, pattern: &str, handler: SeedHandler) -> Result<(), PatternError> {
        match self.subscribers.get_mut(pattern) {
            Some((_, handlers)) => handlers.push(handler),
            None => {
                let compiled = Pattern::new(pattern)?;
                self.subscribers.insert(pattern.to_owned(), (compiled, vec![handler]));
            }
        }
        Ok(())
    }

    /// Tests `event`'s name against every pattern and calls the handlers of
    /// those that match; returns how many handlers were called. A handler's
    /// error is counted, not propagated, as the seed logs and carries on.
    pub fn publish(&self, event: &Event) -> (usize, usize) {
        let (mut called, mut failed) = (0, 0);
        for (pattern, handlers) in self.subscribers.values() {
            if pattern.is_match(event.name()) {
                for handler in handlers {
                    called += 1;
                    if handler(event).is_err() {
                        failed += 1;
                    }
                }
            }
        }
        (called, failed)
    }
}
