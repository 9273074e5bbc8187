//! Search: indexes every `quote.added` and answers word queries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use switchboard::{Event, Handler};
use switchboard_host::{Plugin, PluginContext, PluginError};

use crate::{payload, QuoteAdded};

/// The words of every quote, shared by the plugin and whoever queries it.
#[derive(Debug, Default)]
pub struct SearchIndex {
    words: RwLock<HashMap<String, BTreeSet<u64>>>,
    quotes: RwLock<HashMap<u64, QuoteAdded>>,
}

impl SearchIndex {
    /// An empty index.
    pub fn new() -> Arc<SearchIndex> {
        Arc::default()
    }

    fn add(&self, quote: QuoteAdded) {
        {
            let mut words = self.words.write();
            for word in tokens(&quote.text) {
                words.entry(word).or_default().insert(quote.id);
            }
        }
        self.quotes.write().insert(quote.id, quote);
    }

    /// The quotes holding every word of `query` (case-insensitive), by id.
    pub fn search(&self, query: &str) -> Vec<QuoteAdded> {
        let words = self.words.read();
        let mut hits: Option<BTreeSet<u64>> = None;
        for word in tokens(query) {
            let ids = words.get(&word).cloned().unwrap_or_default();
            hits = Some(match hits {
                None => ids,
                Some(h) => h.intersection(&ids).copied().collect(),
            });
        }
        let quotes = self.quotes.read();
        hits.unwrap_or_default().iter().filter_map(|id| quotes.get(id).cloned()).collect()
    }

    /// How many quotes are indexed.
    pub fn len(&self) -> usize {
        self.quotes.read().len()
    }

    /// Whether no quote is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// The search plugin. Listens to `quote.added`; on load it catches up with
/// the quotes still in the bus's history (a late joiner).
#[derive(Debug)]
pub struct SearchPlugin {
    index: Arc<SearchIndex>,
}

impl SearchPlugin {
    /// A search plugin filling `index`.
    pub fn new(index: Arc<SearchIndex>) -> SearchPlugin {
        SearchPlugin { index }
    }
}

impl Plugin for SearchPlugin {
    fn name(&self) -> &str {
        "search"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let index = self.index.clone();
        let on_added = Handler::sync(move |event: &Event| {
            let quote =
                payload::<QuoteAdded>(event).ok_or("search: quote.added without a quote")?;
            index.add(quote);
            Ok(())
        });
        ctx.subscribe_replay("quote.added", on_added, (), 1_000)?;
        Ok(())
    }
}
