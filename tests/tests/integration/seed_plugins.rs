//! The seed's example plugins working together through the bus.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::{by_pattern, watchdog};
use switchboard::{Bus, Event, Handler, Overflow, SubscribeOptions, Target};
use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};
use switchboard_plugins::{
    ChatMessage, QuotePlugin, SearchIndex, SearchPlugin, StatsPlugin, StatsStore, TriviaPlugin,
};

fn say(bus: &Bus, origin: u32, seq: u64, user: &str, text: &str) {
    let message = ChatMessage {
        channel: "#general".into(),
        user: user.into(),
        text: text.into(),
        origin,
        seq,
    };
    bus.publish(Event::typed("chat.message", message, "chat")).unwrap();
}

fn bot(workers: usize) -> (PluginManager, Arc<StatsStore>, Arc<SearchIndex>) {
    let manager =
        PluginManager::new(Bus::builder().workers(workers).history_size(1_000).build().unwrap());
    let (store, index) = (StatsStore::new(), SearchIndex::new());
    manager.register(TriviaPlugin::new).unwrap();
    let s = store.clone();
    manager.register(move || StatsPlugin::new(s.clone())).unwrap();
    manager.register(QuotePlugin::new).unwrap();
    let i = index.clone();
    manager.register(move || SearchPlugin::new(i.clone())).unwrap();
    (manager, store, index)
}

#[test]
fn trivia_feeds_stats_and_quote_feeds_search() {
    let (manager, store, index) = bot(2);
    let bus = manager.bus().clone();
    let lines = [
        ("ada", "!trivia"),
        ("bob", "5"),
        ("ada", "4"),
        ("bob", "!quote The quick brown fox"),
        ("ada", "!quote A lazy brown dog"),
        ("bob", "!trivia"),
        ("bob", "blue"),
    ];
    for (seq, (user, text)) in lines.iter().enumerate() {
        say(&bus, 0, seq as u64, user, text);
        // One line at a time, as a chat would: each reaches trivia after
        // the previous one's effects.
        bus.flush();
    }
    assert_eq!(store.rounds(), 2);
    assert_eq!((store.wins("ada"), store.wins("bob")), (1, 1));
    assert_eq!((store.participation("ada"), store.participation("bob")), (1, 2));
    assert_eq!(store.top_winners(1), vec![("ada".to_owned(), 1)]);
    assert_eq!(index.len(), 2);
    let brown: Vec<u64> = index.search("BROWN").iter().map(|q| q.id).collect();
    assert_eq!(brown, [1, 2]);
    assert_eq!(index.search("lazy dog")[0].author, "ada");
    assert!(index.search("cat").is_empty());
    manager.shutdown();
}

#[test]
fn a_search_loaded_late_catches_up_from_history() {
    let (manager, _store, _index) = bot(2);
    let bus = manager.bus().clone();
    manager.unload("search").unwrap();
    for (seq, text) in ["!quote first words", "!quote second words"].iter().enumerate() {
        say(&bus, 0, seq as u64, "cy", text);
    }
    bus.flush();
    let late = SearchIndex::new();
    manager.load(SearchPlugin::new(late.clone())).unwrap();
    assert_eq!(late.search("words").len(), 2, "replayed from history");
    say(&bus, 0, 2, "cy", "!quote third words");
    bus.flush();
    assert_eq!(late.search("words").len(), 3, "and live after");
    manager.shutdown();
}

#[test]
fn reloading_stats_under_a_chat_flood_loses_and_duplicates_nothing() {
    watchdog(120, || {
        let (manager, store, _index) = bot(4);
        let bus = manager.bus().clone();
        const ORIGINS: u32 = 3;
        const PER_ORIGIN: u64 = 20_000;
        let gateways: Vec<_> = (0..ORIGINS)
            .map(|origin| {
                let bus = bus.clone();
                thread::spawn(move || {
                    for seq in 0..PER_ORIGIN {
                        say(&bus, origin, seq, &format!("user{}", seq % 50), "hello");
                    }
                })
            })
            .collect();
        for _ in 0..5 {
            thread::sleep(Duration::from_millis(10));
            manager.reload("stats").unwrap();
            let stats = manager.list().into_iter().find(|p| p.name == "stats").unwrap();
            assert_eq!(stats.subscriptions, ["trivia.*", "chat.message"]);
        }
        for g in gateways {
            g.join().unwrap();
        }
        bus.flush();
        let delivery = store.delivery(&[PER_ORIGIN; ORIGINS as usize]);
        assert_eq!((delivery.lost, delivery.duplicated), (0, 0));
        assert_eq!(delivery.seen, PER_ORIGIN * ORIGINS as u64);
        manager.shutdown();
    });
}

/// Fails, panics, or dawdles, as told.
struct Faulty {
    calls: Arc<AtomicU64>,
    token: Arc<()>,
}

impl Plugin for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let (calls, token) = (self.calls.clone(), self.token.clone());
        ctx.subscribe(
            "chat.message",
            Handler::sync(move |_| {
                let _held = &token;
                match calls.fetch_add(1, Ordering::SeqCst) % 3 {
                    0 => Err("faulty: no luck".into()),
                    1 => panic!("faulty: boom"),
                    _ => Ok(()),
                }
            }),
            (),
        )?;
        // A dawdler that asked to fall behind alone (under the default
        // `Block` it would slow the whole bot to its pace).
        let dawdler = SubscribeOptions::new().blocking().backlog(8).overflow(Overflow::Shed);
        ctx.subscribe(
            "chat.message",
            Handler::sync(|_| {
                thread::sleep(Duration::from_millis(20));
                Ok(())
            }),
            dawdler,
        )?;
        Ok(())
    }
}

#[test]
fn a_faulty_plugin_disturbs_nobody_and_unloading_it_releases_it() {
    watchdog(60, || {
        let (manager, store, _index) = bot(2);
        let bus = manager.bus().clone();
        let (calls, token) = (Arc::new(AtomicU64::new(0)), Arc::new(()));
        manager.load(Faulty { calls: calls.clone(), token: token.clone() }).unwrap();
        const LINES: u64 = 3_000;
        for seq in 0..LINES {
            say(&bus, 0, seq, "dee", "hello");
        }
        support::eventually(10, "stats to see every line", || store.lines("dee") == LINES);
        let delivery = store.delivery(&[LINES]);
        assert_eq!((delivery.lost, delivery.duplicated), (0, 0));
        assert_eq!(calls.load(Ordering::SeqCst), LINES);
        let faulty = manager.list().into_iter().find(|p| p.name == "faulty").unwrap();
        assert_eq!(faulty.handler_errors, 2 * LINES / 3, "its errors and panics are its own");
        for other in manager.list().into_iter().filter(|p| p.name != "faulty") {
            assert_eq!(other.handler_errors, 0, "{} was disturbed", other.name);
        }
        manager.unload("faulty").unwrap();
        assert_eq!(Arc::strong_count(&token), 1, "unloading released what it held");
        assert_eq!(by_pattern(bus.subscriptions(Target::Plugin("faulty"))).len(), 0);
        manager.shutdown();
    });
}
