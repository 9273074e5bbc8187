//! Arbitrary sequences of subscribe / unsubscribe / publish / flush against
//! a simple sequential model of the bus (one worker).
//!
//! The model: handlers of an event run in subscription priority, then
//! subscription order; an event reaches exactly the subscriptions live when
//! it was published; with one worker, events of one priority are dispatched
//! in publish order (events of different priorities may pass each other).
//! To keep that exact, the target flushes before every subscription change
//! (an event published before a change and dispatched after it may or may
//! not see the change, by design). History holds the last `HISTORY`
//! published events, in publish order, whatever their priority. On the
//! flushed (idle) bus, a removed handler is dropped before the unsubscribe
//! returns, whichever way it was removed (pattern, plugin, id, guard), and
//! a live one never is.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard::{
    Bus, Event, Handler, HistoryQuery, Priority, SubscribeOptions, SubscriptionGuard,
    SubscriptionId, Target,
};
use switchboard_matcher::reference::Reference;

const PATTERNS: &[&str] = &["*", "a.*", "a.b", "?.b", "[ab].*", "*.c", "a.[!b]", "b", "*a*", "[]"];
const NAMES: &[&str] = &["a.b", "a.c", "b", "b.b", "a.", "[]", "ab.c", "c"];
const PLUGINS: &[&str] = &["p", "q", "r"];
const HISTORY: usize = 16;

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe { pattern: u8, plugin: u8, high: bool, scoped: bool },
    Unsubscribe { pattern: u8, plugin: u8 },
    UnsubscribeId { nth: u8, wait: bool },
    DropGuard { nth: u8 },
    UnsubscribeAll { plugin: u8 },
    Publish { name: u8, priority: u8 },
    History { limit: u8, pattern: Option<u8> },
    Flush,
}

struct Sub {
    id: u64,
    pattern: &'static str,
    plugin: &'static str,
    high: bool,
    /// Held by the handler too: a count of 1 means the handler is dropped.
    token: Arc<()>,
}

/// Removed handlers are gone, live ones are not.
fn check_drops(live: &[Sub], removed: &[Sub]) {
    for s in removed {
        assert_eq!(Arc::strong_count(&s.token), 1, "sub {} outlived its unsubscribe", s.id);
    }
    for s in live {
        assert_eq!(Arc::strong_count(&s.token), 2, "live sub {} lost its handler", s.id);
    }
}

/// Moves the subscriptions `gone` picks out of `model`.
fn take(model: &mut Vec<Sub>, gone: impl Fn(&Sub) -> bool) -> Vec<Sub> {
    let (out, keep): (Vec<Sub>, Vec<Sub>) = model.drain(..).partition(|s| gone(s));
    *model = keep;
    out
}

/// The calls of each priority lane are in the model's order (lanes may
/// interleave), and nothing is missing or extra.
fn check_log(log: &[(u64, usize)], expected: &[(u64, usize)], events: &[(&str, usize)]) {
    for lane in 0..3 {
        let of_lane = |calls: &[(u64, usize)]| -> Vec<(u64, usize)> {
            calls.iter().copied().filter(|&(_, seq)| events[seq].1 == lane).collect()
        };
        assert_eq!(of_lane(log), of_lane(expected), "lane {lane}");
    }
    assert_eq!(log.len(), expected.len());
}

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[i as usize % list.len()]
}

fuzz_target!(|ops: Vec<Op>| {
    let bus = Bus::builder().workers(1).capacity(64).history_size(HISTORY).build().unwrap();
    // Per published event: its name and priority lane.
    let mut events: Vec<(&'static str, usize)> = Vec::new();
    let log: Arc<Mutex<Vec<(u64, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut model: Vec<Sub> = Vec::new();
    let mut expected: Vec<(u64, usize)> = Vec::new();
    let mut published = 0usize;
    let mut guards: Vec<SubscriptionGuard> = Vec::new();
    let mut issued: Vec<SubscriptionId> = Vec::new();
    for op in ops.iter().take(200) {
        match *op {
            Op::Subscribe { pattern, plugin, high, scoped } => {
                bus.flush();
                let (pattern, plugin) = (pick(PATTERNS, pattern), pick(PLUGINS, plugin));
                let log = log.clone();
                let prio = if high { Priority::High } else { Priority::Normal };
                let slot = Arc::new(Mutex::new(0u64));
                let s = slot.clone();
                let token = Arc::new(());
                let held = token.clone();
                let handler = Handler::sync(move |e: &Event| {
                    let _held = &held;
                    let me = *s.lock().unwrap();
                    log.lock().unwrap().push((me, e.data().as_u64().unwrap() as usize));
                    Ok(())
                });
                let options = SubscribeOptions::new().plugin(plugin).priority(prio);
                let sid = if scoped {
                    let guard = bus.subscribe_scoped(pattern, handler, options).unwrap();
                    let id = guard.id();
                    guards.push(guard);
                    id
                } else {
                    bus.subscribe(pattern, handler, options).unwrap()
                };
                *slot.lock().unwrap() = sid.as_u64();
                issued.push(sid);
                model.push(Sub { id: sid.as_u64(), pattern, plugin, high, token });
            }
            Op::Unsubscribe { pattern, plugin } => {
                bus.flush();
                let (pattern, plugin) = (pick(PATTERNS, pattern), pick(PLUGINS, plugin));
                let gone = take(&mut model, |s| s.pattern == pattern && s.plugin == plugin);
                assert_eq!(
                    bus.unsubscribe(Target::Pattern { pattern, plugin }).count(),
                    gone.len()
                );
                check_drops(&model, &gone);
            }
            Op::UnsubscribeAll { plugin } => {
                bus.flush();
                let plugin = pick(PLUGINS, plugin);
                let gone = take(&mut model, |s| s.plugin == plugin);
                assert_eq!(bus.unsubscribe(Target::Plugin(plugin)).count(), gone.len());
                check_drops(&model, &gone);
            }
            Op::UnsubscribeId { nth, wait } => {
                if issued.is_empty() {
                    continue;
                }
                bus.flush();
                // Any id issued so far, live or already removed.
                let id = issued[nth as usize % issued.len()];
                let gone = take(&mut model, |s| s.id == id.as_u64());
                // Not waiting: dropped at once, as the removal returns.
                let removed =
                    if wait { bus.unsubscribe(id).wait() } else { bus.unsubscribe(id).count() };
                assert_eq!(removed == 1, gone.len() == 1);
                check_drops(&model, &gone);
            }
            Op::DropGuard { nth } => {
                if guards.is_empty() {
                    continue;
                }
                bus.flush();
                let guard = guards.swap_remove(nth as usize % guards.len());
                let id = guard.id().as_u64();
                let gone = take(&mut model, |s| s.id == id);
                drop(guard);
                check_drops(&model, &gone);
            }
            Op::Publish { name, priority } => {
                let name = pick(NAMES, name);
                let priority = Priority::ALL[priority as usize % 3];
                events.push((name, priority.index()));
                let seq = published;
                published += 1;
                let mut hits: Vec<&Sub> =
                    model.iter().filter(|s| Reference::new(s.pattern).is_match(name)).collect();
                hits.sort_by_key(|s| (!s.high, s.id));
                expected.extend(hits.iter().map(|s| (s.id, seq)));
                bus.publish(
                    Event::new(name, serde_json::Value::from(seq as u64), "fuzz")
                        .with_priority(priority),
                )
                .unwrap();
            }
            Op::History { limit, pattern } => {
                let pattern = pattern.map(|p| pick(PATTERNS, p));
                let limit = limit as usize % (HISTORY + 2);
                let want: Vec<u64> = (events.len().saturating_sub(HISTORY)..events.len())
                    .rev()
                    .filter(|&seq| pattern.map_or(true, |p| Reference::new(p).is_match(events[seq].0)))
                    .take(limit)
                    .map(|seq| seq as u64)
                    .collect();
                let query = HistoryQuery::new().last(limit);
                let query = match pattern {
                    Some(p) => query.matching(p),
                    None => query,
                };
                let got: Vec<u64> = bus
                    .history(query)
                    .unwrap()
                    .iter()
                    .map(|e| e.data().as_u64().unwrap())
                    .collect();
                assert_eq!(got, want, "history is the last events published, newest first");
            }
            Op::Flush => {
                bus.flush();
                check_log(&log.lock().unwrap(), &expected, &events);
            }
        }
    }
    bus.flush();
    check_log(&log.lock().unwrap(), &expected, &events);
    let stats = bus.stats();
    assert_eq!(stats.published, published as u64);
    assert_eq!(stats.dispatched, expected.len() as u64);
    assert_eq!(stats.subscriptions, model.len() as u64);
    bus.shutdown();
    check_drops(&[], &model);
});
