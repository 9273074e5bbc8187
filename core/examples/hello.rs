//! The smallest bus: subscribe with a glob, publish, flush, read history.
//!
//! Run with `cargo run -p switchboard --example hello`.

use serde_json::json;
use switchboard::{Bus, Event, Handler, HistoryQuery, Priority, Target};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().workers(2).history_size(100).build()?;

    // Every `trivia.*` event, on behalf of the plugin "stats".
    let stats = bus.subscribe(
        "trivia.*",
        Handler::sync(|event: &Event| {
            println!("stats saw {} from {}: {}", event.name(), event.source(), event.data());
            Ok(())
        }),
        "stats",
    )?;

    bus.publish(Event::new("trivia.started", json!({"question": "2+2?"}), "trivia"))?;
    bus.publish(
        Event::new("trivia.answered", json!({"answer": 4}), "trivia").with_priority(Priority::High),
    )?;
    bus.publish(Event::new("quote.added", json!({"id": 7}), "quotes"))?; // no subscriber
    bus.flush(); // every event published so far has been dispatched

    let trivia = bus.history(HistoryQuery::new().matching("trivia.*"))?;
    println!("history holds {} trivia events, newest {}", trivia.len(), trivia[0].name());
    println!("{:?}", bus.stats());

    // Remove it, waiting for a call that may still run.
    assert_eq!(bus.unsubscribe(stats).wait(), 1);
    assert!(bus.subscriptions(Target::All).is_empty());
    bus.shutdown(); // drains, joins the workers
    Ok(())
}
