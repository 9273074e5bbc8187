//! Stats: trivia participation and wins per user, and a count of chat
//! lines per user.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard::{Event, Handler};
use switchboard_host::{Plugin, PluginContext, PluginError};

use crate::{payload, ChatMessage, TriviaAnswer, TriviaEnded, TriviaStarted};

/// What stats knows, shared by every instance of the plugin (a reload keeps
/// it) and by whoever queries it.
#[derive(Debug, Default)]
pub struct StatsStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rounds: u64,
    participation: HashMap<String, u64>,
    wins: HashMap<String, u64>,
    lines: HashMap<String, u64>,
    /// Per chat origin, how many times each sequence number was seen.
    seen: HashMap<u32, Vec<u8>>,
}

/// Lost and duplicated chat messages, by their gateway sequence numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Messages seen.
    pub seen: u64,
    /// Numbers below the highest seen that were never seen.
    pub lost: u64,
    /// Numbers seen more than once.
    pub duplicated: u64,
}

impl StatsStore {
    /// An empty store.
    pub fn new() -> Arc<StatsStore> {
        Arc::default()
    }

    /// Trivia rounds started.
    pub fn rounds(&self) -> u64 {
        self.inner.lock().rounds
    }

    /// How many answers `user` gave.
    pub fn participation(&self, user: &str) -> u64 {
        self.inner.lock().participation.get(user).copied().unwrap_or(0)
    }

    /// How many rounds `user` won.
    pub fn wins(&self, user: &str) -> u64 {
        self.inner.lock().wins.get(user).copied().unwrap_or(0)
    }

    /// The `n` users with most wins, most first (ties by name).
    pub fn top_winners(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> =
            self.inner.lock().wins.iter().map(|(u, w)| (u.clone(), *w)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Chat lines seen from `user`.
    pub fn lines(&self, user: &str) -> u64 {
        self.inner.lock().lines.get(user).copied().unwrap_or(0)
    }

    /// Chat messages seen against their sequence numbers: `expected[o]` is
    /// how many origin `o` sent.
    pub fn delivery(&self, expected: &[u64]) -> Delivery {
        let inner = self.inner.lock();
        let mut d = Delivery::default();
        for (origin, &sent) in expected.iter().enumerate() {
            let seen = inner.seen.get(&(origin as u32)).map(Vec::as_slice).unwrap_or(&[]);
            for seq in 0..sent as usize {
                match seen.get(seq).copied().unwrap_or(0) {
                    0 => d.lost += 1,
                    1 => d.seen += 1,
                    n => {
                        d.seen += 1;
                        d.duplicated += u64::from(n) - 1;
                    }
                }
            }
        }
        d
    }
}

/// The stats plugin. Listens to `trivia.*` and `chat.message`.
#[derive(Debug)]
pub struct StatsPlugin {
    store: Arc<StatsStore>,
}

impl StatsPlugin {
    /// A stats plugin keeping its numbers in `store`.
    pub fn new(store: Arc<StatsStore>) -> StatsPlugin {
        StatsPlugin { store }
    }
}

impl Plugin for StatsPlugin {
    fn name(&self) -> &str {
        "stats"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let store = self.store.clone();
        let on_trivia = Handler::sync(move |event: &Event| {
            let mut inner = store.inner.lock();
            match event.name() {
                "trivia.started" if payload::<TriviaStarted>(event).is_some() => inner.rounds += 1,
                "trivia.answer" => {
                    if let Some(answer) = payload::<TriviaAnswer>(event) {
                        *inner.participation.entry(answer.user).or_default() += 1;
                    }
                }
                "trivia.ended" => {
                    if let Some(TriviaEnded { winner: Some(winner), .. }) =
                        payload::<TriviaEnded>(event)
                    {
                        *inner.wins.entry(winner).or_default() += 1;
                    }
                }
                _ => {}
            }
            Ok(())
        });
        ctx.subscribe("trivia.*", on_trivia, ())?;
        let store = self.store.clone();
        let on_message = Handler::sync(move |event: &Event| {
            let Some(message) = event.downcast_ref::<ChatMessage>() else { return Ok(()) };
            let mut inner = store.inner.lock();
            *inner.lines.entry(message.user.clone()).or_default() += 1;
            let seen = inner.seen.entry(message.origin).or_default();
            let seq = message.seq as usize;
            if seen.len() <= seq {
                seen.resize(seq + 1, 0);
            }
            seen[seq] = seen[seq].saturating_add(1);
            Ok(())
        });
        ctx.subscribe("chat.message", on_message, ())?;
        Ok(())
    }
}
