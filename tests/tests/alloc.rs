//! The dispatch path allocates nothing per event beyond the event itself.
//!
//! A counting global allocator counts every allocation of the process (the
//! workers' included) while events that are already built are published and
//! dispatched to many handlers across several snapshot levels. This file
//! holds one test, so no other test allocates meanwhile.

#[path = "integration/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use switchboard::{Bus, Event, Handler, Priority, SubscribeOptions};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated and not yet freed.
static LIVE: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn publishing_and_dispatching_allocate_only_the_event_itself() {
    support::watchdog(60, || {
        let bus = Bus::builder().workers(2).history_size(100).build().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        // 300 matching handlers over several levels, mixed priorities, and
        // 2,000 that do not match.
        for i in 0..300 {
            let c = calls.clone();
            let pattern = match i % 3 {
                0 => "fan.out",
                1 => "fan.*",
                _ => "*",
            };
            let options = SubscribeOptions::new().priority(Priority::ALL[i % 3]);
            bus.subscribe(
                pattern,
                Handler::sync(move |_| {
                    c.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }),
                options.plugin(&format!("plugin{i}")),
            )
            .unwrap();
        }
        for i in 0..2_000 {
            bus.subscribe(&format!("other{i}.*"), Handler::sync(|_| Ok(())), &format!("other{i}"))
                .unwrap();
        }
        let event = || Event::new("fan.out", serde_json::Value::Null, "test");
        // Warm up: worker buffers grow to their working size, threads park.
        for _ in 0..2_000 {
            bus.publish(event()).unwrap();
        }
        bus.flush();

        const EVENTS: u64 = 20_000;
        let events: Vec<Event> = (0..EVENTS).map(|_| event()).collect();
        calls.store(0, Ordering::SeqCst);
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for e in events {
            bus.publish(e).unwrap();
        }
        bus.flush();
        let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
        assert_eq!(calls.load(Ordering::SeqCst), EVENTS * 300);
        // One allocation per event: the `Arc` the event moves into when
        // published. A little slack for the threads' parking.
        assert!(
            allocations <= EVENTS + 64,
            "{allocations} allocations for {EVENTS} events: {:.2} per event",
            allocations as f64 / EVENTS as f64
        );
        bus.shutdown();

        // Finished event blocks kept for publishers to fill again hold
        // little: not the long sources and names of the events they held.
        let bus = Bus::builder().workers(1).history_size(0).build().unwrap();
        bus.subscribe("*", Handler::sync(|_| Ok(())), "all").unwrap();
        for _ in 0..2_000 {
            bus.publish(event()).unwrap();
        }
        bus.flush();
        let before = LIVE.load(Ordering::SeqCst);
        let source = "s".repeat(64 * 1024);
        for i in 0..600 {
            let name = format!("big.{i}.{}", "n".repeat(900));
            bus.publish(Event::new(name, serde_json::Value::Null, source.as_str())).unwrap();
        }
        bus.flush();
        let kept = LIVE.load(Ordering::SeqCst).saturating_sub(before);
        // 600 such events are 39 MB; what the spare blocks may keep is
        // about 220 KiB.
        assert!(kept < 1 << 20, "{kept} bytes still held after the flush");
        bus.shutdown();
    });
}
