//! Quote: `!quote <text>` in chat saves a quote by the sender.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use switchboard::{Event, Handler};
use switchboard_host::{Plugin, PluginContext, PluginError};

use crate::{payload, ChatMessage, QuoteAdded};

/// The quote plugin. Publishes `quote.added`; listens to `chat.message`.
#[derive(Debug, Default)]
pub struct QuotePlugin {
    next_id: Arc<AtomicU64>,
}

impl QuotePlugin {
    /// A quote plugin with no quote saved.
    pub fn new() -> QuotePlugin {
        QuotePlugin::default()
    }
}

impl Plugin for QuotePlugin {
    fn name(&self) -> &str {
        "quote"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let (next_id, me) = (self.next_id.clone(), ctx.clone());
        let on_message = Handler::sync(move |event: &Event| {
            let Some(message) = payload::<ChatMessage>(event) else { return Ok(()) };
            let Some(text) = message.text.strip_prefix("!quote ") else { return Ok(()) };
            let id = next_id.fetch_add(1, Ordering::Relaxed) + 1;
            let added = QuoteAdded { id, text: text.trim().to_owned(), author: message.user };
            me.publish_typed("quote.added", added)?;
            Ok(())
        });
        ctx.subscribe("chat.message", on_message, ())?;
        Ok(())
    }
}
