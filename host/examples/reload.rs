//! Hot reload: a plugin registered with a factory is replaced by a fresh
//! instance while events keep coming, and every event is handled once, by
//! the old instance or the new one.
//!
//! Run with `cargo run -p switchboard-host --example reload`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use switchboard::{Bus, Event, Handler};
use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};

/// Records each event's number; the record outlives its instances, because
/// the factory hands every instance the same one.
struct Counter {
    seen: Arc<Mutex<Vec<u64>>>,
    generation: u32,
}

impl Plugin for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let seen = self.seen.clone();
        ctx.subscribe(
            "tick",
            Handler::sync(move |event: &Event| {
                seen.lock().unwrap().push(event.data().as_u64().unwrap_or(u64::MAX));
                Ok(())
            }),
            (),
        )?;
        println!("counter generation {} set up", self.generation);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = PluginManager::new(Bus::builder().workers(2).build()?);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let generations = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (s, g) = (seen.clone(), generations.clone());
    manager.register(move || Counter {
        seen: s.clone(),
        generation: g.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
    })?;

    let total = 20_000u64;
    let bus = manager.bus().clone();
    let publisher = std::thread::spawn(move || {
        for n in 0..total {
            bus.publish(Event::new("tick", n.into(), "clock")).expect("published");
        }
    });
    for _ in 0..3 {
        manager.reload("counter")?; // while the publisher runs
    }
    publisher.join().expect("the publisher finished");
    manager.bus().flush();

    let seen = seen.lock().unwrap();
    let distinct: HashSet<u64> = seen.iter().copied().collect();
    println!(
        "{} events, {} calls, {} distinct, across 3 reloads",
        total,
        seen.len(),
        distinct.len()
    );
    assert_eq!(seen.len() as u64, total, "an event was lost or handled twice");
    assert_eq!(distinct.len() as u64, total, "an event was handled twice");
    manager.shutdown();
    Ok(())
}
