//! How to test code that uses the bus in a `#[tokio::test]` (feature
//! `tokio`). Such a test runs on a current-thread runtime: a blocking wait
//! there would starve the async handlers it waits for, so use the `_async`
//! forms (`publish_async`, `flush_async`, `shutdown_async`, and
//! `Bus::run_blocking` for a waiting unsubscribe).
//!
//! Run with `cargo test -p switchboard --features tokio --example in_tokio_test`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use switchboard::{Bus, Event, Handler};

/// Counts `greet` events with an async handler.
pub fn subscribe_counter(
    bus: &Bus,
    seen: Arc<AtomicUsize>,
) -> Result<(), switchboard::SubscribeError> {
    bus.subscribe(
        "greet",
        Handler::future(move |_event: Arc<Event>| {
            let seen = seen.clone();
            async move {
                tokio::task::yield_now().await;
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }),
        "counter",
    )?;
    Ok(())
}

fn main() {
    println!("run me with `cargo test --features tokio --example in_tokio_test`");
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard::Target;

    #[tokio::test]
    async fn every_greeting_is_counted() {
        let bus = Bus::new().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        subscribe_counter(&bus, seen.clone()).unwrap();
        for _ in 0..10 {
            bus.publish_async(Event::new("greet", serde_json::json!("hi"), "test")).await.unwrap();
        }
        bus.flush_async().await;
        assert_eq!(seen.load(Ordering::SeqCst), 10);

        let waiter = bus.clone();
        let removed =
            bus.run_blocking(move || waiter.unsubscribe(Target::Plugin("counter")).wait()).await;
        assert_eq!(removed, 1);
        bus.shutdown_async().await;
    }
}
