//! The example plugins of the chat bot Switchboard grew from: trivia,
//! stats, quote and search. They know each other only through events.
//!
//! # The events (the plugins' public contract)
//!
//! | event | payload | published by | used by |
//! | --- | --- | --- | --- |
//! | `chat.message` | [`ChatMessage`] | the bot's chat gateway | trivia, quote, stats |
//! | `trivia.started` | [`TriviaStarted`] | trivia | stats |
//! | `trivia.answer` | [`TriviaAnswer`] | trivia | stats |
//! | `trivia.ended` | [`TriviaEnded`] | trivia | stats |
//! | `quote.added` | [`QuoteAdded`] | quote | search |
//!
//! Payloads are typed (`Event::typed`): a Rust subscriber gets the struct
//! as is; a JSON subscriber (or another process) sees its serde form.
//!
//! Chat commands: `!trivia` starts a round, a message equal to the answer
//! wins it; `!quote <text>` adds a quote by the sender.
//!
//! The plugins keep their state in a *store* shared with whoever created
//! them, so a reload (a fresh instance from the same factory) keeps it, as
//! a database would, and the bot can query it.

use serde::{Deserialize, Serialize};

pub mod quote;
pub mod search;
pub mod stats;
pub mod trivia;

/// The plugin host these plugins run in ([`host::PluginManager`],
/// [`host::Plugin`], [`host::PluginContext`]), re-exported for whoever looks
/// for it here.
pub use switchboard_host as host;

pub use quote::QuotePlugin;
pub use search::{SearchIndex, SearchPlugin};
pub use stats::{StatsPlugin, StatsStore};
pub use trivia::TriviaPlugin;

/// `chat.message`: a line of chat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The channel it was said in.
    pub channel: String,
    /// Who said it.
    pub user: String,
    /// What was said.
    pub text: String,
    /// Which gateway connection delivered it (a bot may have several).
    pub origin: u32,
    /// The gateway's sequence number for it, per origin: consecutive, so a
    /// subscriber can prove it lost or doubled nothing.
    pub seq: u64,
}

/// `trivia.started`: a round began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriviaStarted {
    /// The round's number (from 1).
    pub round: u64,
    /// The question.
    pub question: String,
    /// Seconds to answer.
    pub timeout: u64,
}

/// `trivia.answer`: somebody answered the current round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriviaAnswer {
    /// The round.
    pub round: u64,
    /// Who answered.
    pub user: String,
    /// Whether it was right (the first right answer wins).
    pub correct: bool,
}

/// `trivia.ended`: a round ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriviaEnded {
    /// The round.
    pub round: u64,
    /// Who won, if anybody did.
    pub winner: Option<String>,
    /// The right answer.
    pub answer: String,
}

/// `quote.added`: a quote was saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteAdded {
    /// Its number (from 1).
    pub id: u64,
    /// The quote.
    pub text: String,
    /// Who said it.
    pub author: String,
}

/// The payload of `event` as a `T`: the typed value when it carries one,
/// else its JSON decoded.
pub fn payload<T>(event: &switchboard::Event) -> Option<T>
where
    T: Clone + serde::de::DeserializeOwned + 'static,
{
    event.downcast_ref::<T>().cloned().or_else(|| T::deserialize(event.data()).ok())
}
