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
//! Each level keeps its subscriptions sorted by rank (priority, then id),
//! and the matcher reports a level's matches in index order, so each level
//! yields one event's handlers already in dispatch order; the levels' runs
//! are merged, never sorted per event.
//!
//! Unsubscribing closes the subscription (it is skipped from then on) and
//! counts a dead entry in its level. A small level is rebuilt at once; a
//! larger one once a quarter of it is dead, so each removal re-indexes a
//! bounded number of entries on average and a dead entry (an id and a
//! pattern: its handler is reclaimed separately) never lingers in a level
//! that is mostly dead.
//!
//! **The match cache.** A bot publishes a few hundred distinct names, and
//! matching a name costs as much the thousandth time as the first: each
//! worker's [`Scratch`] keeps the matches of the names it saw last, in a
//! direct-mapped table keyed by the name and the snapshot's *generation*
//! (a process-wide number no other snapshot ever has). A snapshot never
//! changes, so an entry is right for as long as its snapshot is the one
//! matched against; the first match against another snapshot empties the
//! table, which needs no invalidation from anywhere else. An entry is
//! overwritten in place (its buffers reused), so a stream of fresh names
//! costs one hash and one copy each and allocates nothing once warm.

use std::hash::Hasher;
use std::sync::Arc;

use rustc_hash::FxHasher;
use switchboard_matcher::PatternSet;

use crate::loom::{AtomicUsize, Ordering};
use crate::subscription::Subscription;

/// Level `i` holds at most `FANOUT^(i+1)` subscriptions.
pub(crate) const FANOUT: usize = 8;

/// A level this small is rebuilt as soon as one of its entries dies.
const SMALL_LEVEL: usize = FANOUT * FANOUT;

#[derive(Debug)]
pub(crate) struct Level {
    set: PatternSet,
    /// Sorted by rank.
    subs: Vec<Arc<Subscription>>,
    ranks: Vec<u64>,
    /// Entries removed since the level was built (changed under the
    /// registry lock only).
    dead: AtomicUsize,
}

impl Level {
    fn new(mut subs: Vec<Arc<Subscription>>) -> Level {
        subs.sort_unstable_by_key(|s| s.rank);
        let set = PatternSet::from_patterns(subs.iter().map(|s| s.pattern.clone()));
        let ranks = subs.iter().map(|s| s.rank).collect();
        Level { set, subs, ranks, dead: AtomicUsize::new(0) }
    }

    fn live(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.subs.iter().filter(|s| s.is_active())
    }

    fn holds(&self, sub: &Arc<Subscription>) -> bool {
        self.ranks.binary_search(&sub.rank).is_ok_and(|i| Arc::ptr_eq(&self.subs[i], sub))
    }

    fn needs_rebuild(&self) -> bool {
        let dead = self.dead.load(Ordering::Relaxed);
        dead > 0 && (self.subs.len() <= SMALL_LEVEL || dead * 4 >= self.subs.len())
    }
}

/// The subscriptions as workers see them. Never changed once published.
#[derive(Debug)]
pub(crate) struct Snapshot {
    levels: Vec<Arc<Level>>,
    /// Ordered subscriptions, which publishers route themselves (see
    /// `mailbox.rs`): few, so rebuilt whole when one comes or goes.
    ordered: Option<Arc<Level>>,
    /// This snapshot's own number, never another's (the match cache's key).
    generation: u64,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot::new(Vec::new(), None)
    }
}

/// The next snapshot's generation (not a modelled protocol: a counter, so
/// plain std even under loom).
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Slots of a worker's match cache (a power of two).
const CACHE_SLOTS: usize = 256;
/// Names longer than this are matched every time.
const CACHE_NAME_MAX: usize = 128;
/// Matches longer than this are not cached (a slot's buffer stays small).
const CACHE_MATCHES_MAX: usize = 256;

/// One cached name and its matches against the cache's snapshot.
#[derive(Debug, Default)]
struct Slot {
    hash: u64,
    name: String,
    matched: Vec<u64>,
    valid: bool,
}

fn name_hash(name: &str) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(name.as_bytes());
    hasher.finish()
}

thread_local! {
    static ROUTE_SCRATCH: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A worker's buffers for matching, reused from event to event.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Each level's matches, as indices in rank order.
    runs: Vec<Vec<usize>>,
    heads: Vec<usize>,
    head_ranks: Vec<u64>,
    /// The event's handlers in dispatch order, as `level << 32 | index`.
    pub(crate) matched: Vec<u64>,
    /// The match cache (see the module docs): empty until first used.
    cache: Vec<Slot>,
    /// The generation of the snapshot the cache's entries are for.
    cache_generation: u64,
}

impl Snapshot {
    fn new(levels: Vec<Arc<Level>>, ordered: Option<Arc<Level>>) -> Snapshot {
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Snapshot { levels, ordered, generation }
    }

    /// Fills `scratch.matched` with the subscriptions whose pattern matches
    /// `name`, by subscription priority then subscription order. Closed
    /// ones may be among them: the caller's check skips them. Answered from
    /// the worker's match cache when it holds `name` for this snapshot.
    pub(crate) fn matching(&self, name: &str, scratch: &mut Scratch) {
        if name.len() > CACHE_NAME_MAX {
            return self.match_now(name, scratch);
        }
        if scratch.cache_generation != self.generation {
            if scratch.cache.is_empty() {
                scratch.cache.resize_with(CACHE_SLOTS, Slot::default);
            }
            scratch.cache.iter_mut().for_each(|slot| slot.valid = false);
            scratch.cache_generation = self.generation;
        }
        let hash = name_hash(name);
        let at = hash as usize & (CACHE_SLOTS - 1);
        let slot = &scratch.cache[at];
        if slot.valid && slot.hash == hash && slot.name == name {
            scratch.matched.clear();
            scratch.matched.extend_from_slice(&slot.matched);
            return;
        }
        self.match_now(name, scratch);
        if scratch.matched.len() <= CACHE_MATCHES_MAX {
            let slot = &mut scratch.cache[at];
            slot.name.clear();
            slot.name.push_str(name);
            slot.matched.clear();
            slot.matched.extend_from_slice(&scratch.matched);
            slot.hash = hash;
            slot.valid = true;
        }
    }

    /// [`matching`](Snapshot::matching), without the cache.
    fn match_now(&self, name: &str, scratch: &mut Scratch) {
        scratch.matched.clear();
        if scratch.runs.len() < self.levels.len() {
            scratch.runs.resize_with(self.levels.len(), Vec::new);
            scratch.heads.resize(self.levels.len(), 0);
        }
        let mut nonempty = 0;
        let mut last = 0;
        for (l, level) in self.levels.iter().enumerate() {
            let run = &mut scratch.runs[l];
            if level.subs.is_empty() {
                run.clear();
                continue;
            }
            level.set.matches_into(name, run);
            if !run.is_empty() {
                nonempty += 1;
                last = l;
            }
        }
        match nonempty {
            0 => {}
            1 => {
                let base = (last as u64) << 32;
                scratch.matched.extend(scratch.runs[last].iter().map(|&i| base | i as u64));
            }
            _ => self.merge(scratch),
        }
    }

    /// Merges the levels' runs by rank. There are a handful of levels, so
    /// the smallest head is found by a scan of their head ranks, kept in
    /// one small array; then everything of that run below the next smallest
    /// head is copied at once. Levels hold subscriptions of consecutive
    /// ages, so with one priority the runs do not interleave at all and
    /// each is copied whole, after one look at its last rank.
    fn merge(&self, scratch: &mut Scratch) {
        let levels = self.levels.len();
        let rank_of = |l: usize, i: usize| self.levels[l].ranks[i];
        scratch.heads[..levels].fill(0);
        scratch.head_ranks.clear();
        scratch.head_ranks.extend(
            (0..levels).map(|l| scratch.runs[l].first().map_or(u64::MAX, |&i| rank_of(l, i))),
        );
        loop {
            let (mut best, mut best_rank, mut next_rank) = (0, u64::MAX, u64::MAX);
            for (l, &rank) in scratch.head_ranks.iter().enumerate() {
                if rank < best_rank {
                    next_rank = best_rank;
                    (best, best_rank) = (l, rank);
                } else if rank < next_rank {
                    next_rank = rank;
                }
            }
            if best_rank == u64::MAX {
                break;
            }
            let run = &scratch.runs[best];
            let base = (best as u64) << 32;
            let mut at = scratch.heads[best];
            let last = *run.last().expect("a run with a head is not empty");
            if rank_of(best, last) < next_rank {
                scratch.matched.extend(run[at..].iter().map(|&i| base | i as u64));
                at = run.len();
            } else {
                while let Some(&i) = run.get(at) {
                    if rank_of(best, i) > next_rank {
                        break;
                    }
                    scratch.matched.push(base | i as u64);
                    at += 1;
                }
            }
            scratch.heads[best] = at;
            scratch.head_ranks[best] = run.get(at).map_or(u64::MAX, |&i| rank_of(best, i));
        }
    }

    /// The subscription at `level << 32 | index`, from [`matching`](Snapshot::matching).
    #[inline]
    pub(crate) fn get(&self, at: u64) -> &Subscription {
        &self.levels[(at >> 32) as usize].subs[(at & 0xffff_ffff) as usize]
    }

    /// The subscription at `level << 32 | index`, shared.
    pub(crate) fn get_arc(&self, at: u64) -> &Arc<Subscription> {
        &self.levels[(at >> 32) as usize].subs[(at & 0xffff_ffff) as usize]
    }

    /// Calls `f` with each ordered subscription matching `name`.
    pub(crate) fn route_ordered<'s>(
        &'s self,
        name: &str,
        mut f: impl FnMut(&'s Arc<Subscription>),
    ) {
        let Some(ordered) = &self.ordered else { return };
        ROUTE_SCRATCH.with(|scratch| {
            // A nested publish (from `f`? no: `f` only queues) cannot
            // re-enter; still, never hold the borrow across user code.
            let mut hits = std::mem::take(&mut *scratch.borrow_mut());
            ordered.set.matches_into(name, &mut hits);
            for &i in &hits {
                f(&ordered.subs[i]);
            }
            *scratch.borrow_mut() = hits;
        });
    }

    /// A snapshot with `sub` added.
    pub(crate) fn with(&self, sub: Arc<Subscription>) -> Snapshot {
        if sub.mailbox.as_ref().is_some_and(|m| m.ordered) {
            let mut subs: Vec<Arc<Subscription>> =
                self.ordered.iter().flat_map(|o| o.live().cloned()).collect();
            subs.push(sub);
            return Snapshot::new(self.levels.clone(), Some(Arc::new(Level::new(subs))));
        }
        // `levels` is kept smallest first; an empty level is an empty set.
        let mut levels = self.levels.clone();
        let mut carry = vec![sub];
        let mut capacity = FANOUT;
        for level in levels.iter_mut() {
            if carry.is_empty() {
                break;
            }
            let mut subs: Vec<Arc<Subscription>> = level.live().cloned().collect();
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
        Snapshot::new(levels, self.ordered.clone())
    }

    /// Counts `removed` (closed, and in this snapshot) as dead in their
    /// levels, and returns a snapshot with the levels that should be
    /// rebuilt rebuilt, or `None` when none should.
    pub(crate) fn without(&self, removed: &[Arc<Subscription>]) -> Option<Snapshot> {
        let ordered_gone =
            self.ordered.as_ref().is_some_and(|o| removed.iter().any(|s| o.holds(s)));
        let ordered = if ordered_gone {
            let live: Vec<Arc<Subscription>> =
                self.ordered.iter().flat_map(|o| o.live().cloned()).collect();
            (!live.is_empty()).then(|| Arc::new(Level::new(live)))
        } else {
            self.ordered.clone()
        };
        for sub in removed {
            if let Some(level) = self.levels.iter().find(|l| l.holds(sub)) {
                level.dead.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !self.levels.iter().any(|l| l.needs_rebuild()) {
            return ordered_gone.then(|| Snapshot::new(self.levels.clone(), ordered));
        }
        let levels = self
            .levels
            .iter()
            .map(|level| {
                if level.needs_rebuild() {
                    Arc::new(Level::new(level.live().cloned().collect()))
                } else {
                    level.clone()
                }
            })
            .collect();
        Some(Snapshot::new(levels, ordered))
    }

    /// How many levels hold subscriptions.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn levels(&self) -> usize {
        self.levels.iter().filter(|l| !l.subs.is_empty()).count()
    }

    /// How many entries, live or dead, the levels hold.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn entries(&self) -> usize {
        self.levels.iter().map(|l| l.subs.len()).sum()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use switchboard_matcher::Pattern;

    use super::{Scratch, Snapshot};
    use crate::event::Priority;
    use crate::subscription::{Subscription, SubscriptionId};

    fn sub(id: u64, pattern: &str, priority: Priority) -> Arc<Subscription> {
        Arc::new(Subscription::new(
            SubscriptionId::new(id),
            Pattern::new(pattern).unwrap(),
            Arc::from("p"),
            priority,
            Some(Box::new(|_| Ok(()))),
            None,
        ))
    }

    /// The live matches, in dispatch order, as (priority, id).
    fn order(snapshot: &Snapshot, name: &str) -> Vec<(Priority, u64)> {
        let mut scratch = Scratch::default();
        snapshot.matching(name, &mut scratch);
        scratch
            .matched
            .iter()
            .map(|&at| snapshot.get(at))
            .filter(|s| s.is_active())
            .map(|s| (s.priority, s.id.as_u64()))
            .collect()
    }

    fn priority(i: u64) -> Priority {
        Priority::ALL[(i * 7 % 3) as usize]
    }

    #[test]
    fn levels_stay_logarithmic_and_matches_come_merged_in_dispatch_order() {
        let mut snapshot = Snapshot::default();
        for i in 0..5_000u64 {
            let pattern = if i % 10 == 0 { "*".to_owned() } else { format!("plugin{}.*", i % 100) };
            snapshot = snapshot.with(sub(i, &pattern, priority(i)));
            assert!(snapshot.levels() <= 5, "{} levels after {i} subscribes", snapshot.levels());
        }
        assert!(snapshot.levels() >= 3, "the test must span several levels");
        let mut expected: Vec<(Priority, u64)> =
            (0..5_000).filter(|i| i % 10 == 0 || i % 100 == 7).map(|i| (priority(i), i)).collect();
        expected.sort_by_key(|&(p, i)| (std::cmp::Reverse(p), i));
        assert_eq!(order(&snapshot, "plugin7.x"), expected);
    }

    #[test]
    fn dead_entries_leave_small_levels_at_once_and_large_ones_at_a_quarter() {
        let mut snapshot = Snapshot::default();
        let mut subs = Vec::new();
        for i in 0..4_000u64 {
            let s = sub(i, &format!("plugin{}.*", i % 100), Priority::Normal);
            subs.push(s.clone());
            snapshot = snapshot.with(s);
        }
        let entries = snapshot.entries();
        assert_eq!(entries, 4_000);

        // The newest subscription sits in the smallest level: rebuilt at once.
        let newest = subs.last().unwrap().clone();
        newest.close();
        let next = snapshot.without(std::slice::from_ref(&newest)).expect("small level rebuilt");
        assert_eq!(next.entries(), entries - 1);
        snapshot = next;

        // The oldest sit in the largest level: one death is only counted...
        let oldest = subs[0].clone();
        oldest.close();
        assert!(snapshot.without(std::slice::from_ref(&oldest)).is_none());
        assert!(order(&snapshot, "plugin0.x").iter().all(|&(_, id)| id != 0));

        // ...until a quarter of it is dead.
        let mut removed = 1;
        let mut rebuilt = None;
        for s in subs[1..].iter().step_by(2) {
            s.close();
            removed += 1;
            if let Some(next) = snapshot.without(std::slice::from_ref(s)) {
                rebuilt = Some(next);
                break;
            }
        }
        let rebuilt = rebuilt.expect("a quarter-dead level is rebuilt");
        assert!(removed > super::SMALL_LEVEL, "rebuilt after only {removed} deaths");
        assert!(rebuilt.entries() < entries - 1);
        let live: Vec<u64> = subs
            .iter()
            .filter(|s| s.is_active() && s.id.as_u64() % 100 == 7)
            .map(|s| s.id.as_u64())
            .collect();
        let got: Vec<u64> = order(&rebuilt, "plugin7.x").into_iter().map(|(_, id)| id).collect();
        assert_eq!(got, live);
    }

    /// The cache against matching afresh: names that collide in its slots
    /// (more names than slots), names too long to cache, matches too many
    /// to cache, snapshots replaced by subscribes and by rebuilds after
    /// removals, and a snapshot left unchanged by a removal (its closed
    /// subscriptions still among the matches, as uncached).
    #[test]
    fn the_match_cache_answers_as_matching_afresh() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let shapes = ["*", "a.*", "a.b", "*.b", "a?.c", "[ab]*", "b.*.c", "x*"];
        let mut names: Vec<String> = (0..1_500)
            .map(|i| match i % 5 {
                0 => format!("a.{i}"),
                1 => format!("b.{}.c", i % 40),
                2 => "a.b".to_owned(),
                3 => format!("x{}", i % 300),
                _ => format!("q{i}.b"),
            })
            .collect();
        names.push("a.".repeat(100)); // past the name limit
        let mut cached = Scratch::default();
        let mut snapshot = Snapshot::default();
        let mut subs: Vec<Arc<Subscription>> = Vec::new();
        let mut id = 0;
        for step in 0..400 {
            if step % 3 == 0 || subs.is_empty() {
                // A burst of "*" now and then: more matches than a slot keeps.
                let burst = if step % 97 == 0 { 300 } else { 1 };
                for _ in 0..burst {
                    let pattern = shapes[(next() % shapes.len() as u64) as usize];
                    let s = sub(id, pattern, priority(id));
                    id += 1;
                    snapshot = snapshot.with(s.clone());
                    subs.push(s);
                }
            } else if step % 3 == 1 {
                let victim = subs.swap_remove((next() % subs.len() as u64) as usize);
                victim.close();
                if let Some(rebuilt) = snapshot.without(std::slice::from_ref(&victim)) {
                    snapshot = rebuilt;
                }
            }
            for _ in 0..60 {
                let name = &names[(next() % names.len() as u64) as usize];
                snapshot.matching(name, &mut cached);
                let mut fresh = Scratch::default();
                snapshot.match_now(name, &mut fresh);
                assert_eq!(cached.matched, fresh.matched, "step {step}, name {name:?}");
            }
        }
    }
}
