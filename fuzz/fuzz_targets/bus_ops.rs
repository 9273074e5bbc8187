//! Arbitrary sequences of subscribe / unsubscribe / publish / flush against
//! a simple sequential model of the bus (one worker).
//!
//! The model: handlers of an event run in subscription priority, then
//! subscription order; an event reaches exactly the subscriptions live when
//! it was published. To keep that exact, the target flushes before every
//! subscription change (an event published before a change and dispatched
//! after it may or may not see the change, by design).
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard::{Bus, Event, Priority, SubscribeOptions};
use switchboard_matcher::reference;

const PATTERNS: &[&str] = &["*", "a.*", "a.b", "?.b", "[ab].*", "*.c", "a.[!b]", "b", "*a*", "[]"];
const NAMES: &[&str] = &["a.b", "a.c", "b", "b.b", "a.", "[]", "ab.c", "c"];
const PLUGINS: &[&str] = &["p", "q", "r"];

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe { pattern: u8, plugin: u8, high: bool },
    Unsubscribe { pattern: u8, plugin: u8 },
    UnsubscribeAll { plugin: u8 },
    Publish { name: u8 },
    Flush,
}

struct Sub {
    id: u64,
    pattern: &'static str,
    plugin: &'static str,
    high: bool,
}

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[i as usize % list.len()]
}

fuzz_target!(|ops: Vec<Op>| {
    let bus = Bus::builder().workers(1).capacity(64).build().unwrap();
    let log: Arc<Mutex<Vec<(u64, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut model: Vec<Sub> = Vec::new();
    let mut expected: Vec<(u64, usize)> = Vec::new();
    let mut published = 0usize;
    for op in ops.iter().take(200) {
        match *op {
            Op::Subscribe { pattern, plugin, high } => {
                bus.flush();
                let (pattern, plugin) = (pick(PATTERNS, pattern), pick(PLUGINS, plugin));
                let log = log.clone();
                let prio = if high { Priority::High } else { Priority::Normal };
                let slot = Arc::new(Mutex::new(0u64));
                let s = slot.clone();
                let sid = bus
                    .subscribe_with(pattern, plugin, SubscribeOptions::new().priority(prio), move |e: &Event| {
                        let me = *s.lock().unwrap();
                        log.lock().unwrap().push((me, e.data().as_u64().unwrap() as usize));
                        Ok(())
                    })
                    .unwrap();
                *slot.lock().unwrap() = sid.as_u64();
                model.push(Sub { id: sid.as_u64(), pattern, plugin, high });
            }
            Op::Unsubscribe { pattern, plugin } => {
                bus.flush();
                let (pattern, plugin) = (pick(PATTERNS, pattern), pick(PLUGINS, plugin));
                let before = model.len();
                model.retain(|s| !(s.pattern == pattern && s.plugin == plugin));
                assert_eq!(bus.unsubscribe(pattern, plugin), before - model.len());
            }
            Op::UnsubscribeAll { plugin } => {
                bus.flush();
                let plugin = pick(PLUGINS, plugin);
                let before = model.len();
                model.retain(|s| s.plugin != plugin);
                assert_eq!(bus.unsubscribe_all(plugin), before - model.len());
            }
            Op::Publish { name } => {
                let name = pick(NAMES, name);
                let seq = published;
                published += 1;
                let mut hits: Vec<&Sub> =
                    model.iter().filter(|s| reference::is_match(s.pattern, name)).collect();
                hits.sort_by_key(|s| (!s.high, s.id));
                expected.extend(hits.iter().map(|s| (s.id, seq)));
                bus.publish(Event::new(name, serde_json::Value::from(seq as u64), "fuzz")).unwrap();
            }
            Op::Flush => {
                bus.flush();
                assert_eq!(*log.lock().unwrap(), expected);
            }
        }
    }
    bus.flush();
    assert_eq!(*log.lock().unwrap(), expected);
    let stats = bus.stats();
    assert_eq!(stats.published, published as u64);
    assert_eq!(stats.dispatched, expected.len() as u64);
    assert_eq!(stats.subscriptions, model.len() as u64);
    bus.shutdown();
});
