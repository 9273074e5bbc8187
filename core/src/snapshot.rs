//! The immutable subscription snapshot that workers match events against.
//!
//! A snapshot is a stack of *levels*, each a [`PatternSet`] over some
//! subscriptions, as in a leveled log-structured merge tree: level `i` holds
//! at most `FANOUT^(i+1)` subscriptions. A subscribe re-indexes level 0 with
//! the new subscription; a level over its capacity is merged into the next.
//! Each subscribe therefore re-indexes `O(FANOUT * levels)` subscriptions on
//! average instead of all of them, and a lookup visits `log_FANOUT(n)`
//! levels. Patterns are compiled once per subscription; merging only
//! re-indexes them.
//!
//! Unsubscribing closes the subscription's gate (it is skipped from then on)
//! and leaves a dead entry; a level is rebuilt without its dead entries once
//! they are half of it.

use std::sync::Arc;

use smallvec::SmallVec;
use switchboard_matcher::PatternSet;

use crate::subscription::Subscription;

/// Level `i` holds at most `FANOUT^(i+1)` subscriptions.
pub(crate) const FANOUT: usize = 8;

#[derive(Debug)]
pub(crate) struct Level {
    set: PatternSet,
    subs: Vec<Arc<Subscription>>,
}

impl Level {
    fn new(subs: Vec<Arc<Subscription>>) -> Level {
        let set = PatternSet::from_patterns(subs.iter().map(|s| s.pattern.clone()));
        Level { set, subs }
    }

    fn live(&self) -> usize {
        self.subs.iter().filter(|s| s.gate.is_active()).count()
    }
}

/// The subscriptions as workers see them. Never changed once published.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    levels: Vec<Arc<Level>>,
}

/// The handlers an event goes to, in dispatch order.
pub(crate) type Matched<'a> = SmallVec<[&'a Arc<Subscription>; 8]>;

impl Snapshot {
    /// The live subscriptions whose pattern matches `name`, by subscription
    /// priority then subscription order. `scratch` is reused between calls.
    pub(crate) fn matching<'a>(
        &'a self,
        name: &str,
        scratch: &mut Vec<usize>,
        out: &mut Matched<'a>,
    ) {
        out.clear();
        for level in self.levels.iter().filter(|l| !l.subs.is_empty()) {
            level.set.matches_into(name, scratch);
            out.extend(scratch.iter().map(|&i| &level.subs[i]).filter(|s| s.gate.is_active()));
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(|s| s.dispatch_key());
        }
    }

    /// A snapshot with `sub` added.
    pub(crate) fn with(&self, sub: Arc<Subscription>) -> Snapshot {
        // `levels` is kept smallest first; an empty level is an empty set.
        let mut levels = self.levels.clone();
        let mut carry = vec![sub];
        let mut capacity = FANOUT;
        for level in levels.iter_mut() {
            if carry.is_empty() {
                break;
            }
            let mut subs: Vec<Arc<Subscription>> =
                level.subs.iter().filter(|s| s.gate.is_active()).cloned().collect();
            subs.append(&mut carry);
            if subs.len() > capacity {
                // Over capacity: this level empties into the next one.
                carry = subs;
                *level = Arc::new(Level::new(Vec::new()));
            } else {
                *level = Arc::new(Level::new(subs));
            }
            capacity = capacity.saturating_mul(FANOUT);
        }
        if !carry.is_empty() {
            levels.push(Arc::new(Level::new(carry)));
        }
        Snapshot { levels }
    }

    /// A snapshot without the dead entries of levels that are at least half
    /// dead, or `None` when no level needs it.
    pub(crate) fn compacted(&self) -> Option<Snapshot> {
        let mut changed = false;
        let levels = self
            .levels
            .iter()
            .map(|level| {
                let live = level.live();
                if live * 2 > level.subs.len() || level.subs.is_empty() {
                    return level.clone();
                }
                changed = true;
                Arc::new(merge(&[level]))
            })
            .collect();
        changed.then_some(Snapshot { levels })
    }

    /// How many levels hold subscriptions.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn levels(&self) -> usize {
        self.levels.iter().filter(|l| !l.subs.is_empty()).count()
    }
}

/// One level holding the live subscriptions of `levels`, in subscription order.
fn merge(levels: &[&Arc<Level>]) -> Level {
    let mut subs: Vec<Arc<Subscription>> =
        levels.iter().flat_map(|l| l.subs.iter()).filter(|s| s.gate.is_active()).cloned().collect();
    subs.sort_unstable_by_key(|s| s.id);
    Level::new(subs)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use switchboard_matcher::Pattern;

    use super::{Matched, Snapshot};
    use crate::event::Priority;
    use crate::subscription::{Gate, Subscription, SubscriptionId};

    fn sub(id: u64, pattern: &str) -> Arc<Subscription> {
        Arc::new(Subscription {
            id: SubscriptionId::new(id),
            pattern: Pattern::new(pattern).unwrap(),
            plugin: Arc::from("p"),
            priority: Priority::Normal,
            handler: Box::new(|_| Ok(())),
            gate: Gate::new(),
            errors: Default::default(),
        })
    }

    fn ids(snapshot: &Snapshot, name: &str) -> Vec<u64> {
        let mut scratch = Vec::new();
        let mut out = Matched::new();
        snapshot.matching(name, &mut scratch, &mut out);
        out.iter().map(|s| s.id.as_u64()).collect()
    }

    #[test]
    fn levels_stay_logarithmic_and_lookups_see_every_level() {
        let mut snapshot = Snapshot::default();
        let mut subs = Vec::new();
        for i in 0..5_000u64 {
            let s = sub(i, &format!("plugin{}.*", i % 100));
            subs.push(s.clone());
            snapshot = snapshot.with(s);
            assert!(snapshot.levels() <= 5, "{} levels after {i} subscribes", snapshot.levels());
        }
        let expected: Vec<u64> = (0..5_000).filter(|i| i % 100 == 7).collect();
        assert_eq!(ids(&snapshot, "plugin7.x"), expected);

        for s in subs.iter().filter(|s| s.id.as_u64() % 100 == 7 && s.id.as_u64() % 2 == 0) {
            s.gate.close();
        }
        let odd: Vec<u64> = expected.iter().copied().filter(|i| i % 2 == 1).collect();
        assert_eq!(ids(&snapshot, "plugin7.x"), odd, "closed subscriptions are skipped");

        for s in &subs {
            if s.id.as_u64() % 3 != 0 {
                s.gate.close();
            }
        }
        let compacted = snapshot.compacted().expect("mostly dead levels are rebuilt");
        let left: Vec<u64> = odd.iter().copied().filter(|i| i % 3 == 0).collect();
        assert_eq!(ids(&compacted, "plugin7.x"), left);
    }
}
