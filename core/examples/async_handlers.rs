//! Async handlers on tokio (feature `tokio`): an async handler never blocks
//! a dispatch worker, an ordered one runs one call at a time in publish
//! order, and the `_async` forms wait without blocking the runtime.
//!
//! Run with `cargo run -p switchboard --features tokio --example async_handlers`.

use std::sync::Arc;
use std::time::Duration;

use switchboard::{Bus, Event, Handler, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Async handlers run on the runtime current where they subscribe.
    let bus = Bus::builder().workers(2).build()?;

    bus.subscribe(
        "quote.added",
        Handler::future(|event: Arc<Event>| async move {
            tokio::time::sleep(Duration::from_millis(5)).await; // index the quote...
            println!("indexed quote {}", event.data());
            Ok(())
        }),
        SubscribeOptions::new().plugin("search").concurrency(4).timeout(Duration::from_secs(1)),
    )?;
    bus.subscribe(
        "trivia.*",
        Handler::future(|event: Arc<Event>| async move {
            println!("score kept for {}", event.name()); // one at a time, in order
            Ok(())
        }),
        SubscribeOptions::new().plugin("scores").ordered(),
    )?;

    for id in 0..4 {
        bus.publish_async(Event::new("quote.added", serde_json::json!({"id": id}), "quotes"))
            .await?;
    }
    bus.publish_async(Event::new("trivia.won", serde_json::json!({"by": "ada"}), "trivia")).await?;
    bus.flush_async().await; // every call above has finished
    println!("dispatched {}", bus.stats().dispatched);
    bus.shutdown_async().await;
    Ok(())
}
