//! The gate: bus-wide back-pressure from the backlogs the workers feed.

use std::time::Instant;

use crate::loom::{fence, AtomicUsize, Condvar, Mutex, Ordering};

/// Back-pressure from the backlogs workers feed: while a blocking or async
/// subscription's backlog is full under `Overflow::Block`, the gate is held,
/// and outside publishers wait at it before they reserve anything. A worker
/// never waits for a backlog (the request it would wait behind may be in
/// its own queue): it hands the event over past the capacity, which is
/// bounded by what the queues hold, and holds the gate until the backlog's
/// runner has made room.
///
/// The handshake is the queue's *Room* one: a waiter registers, then
/// re-checks `held`, then waits under the lock; whatever lowers `held` to
/// zero reads `waiters` after it and notifies under the lock.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Backlogs holding it.
    held: AtomicUsize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    opened: Condvar,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            held: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            opened: Condvar::new(),
        }
    }

    pub(crate) fn hold(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn release(&self) {
        if self.held.fetch_sub(1, Ordering::SeqCst) == 1 {
            fence(Ordering::SeqCst);
            if self.waiters.load(Ordering::SeqCst) > 0 {
                let _guard = self.lock.lock();
                self.opened.notify_all();
            }
        }
    }

    /// Whether some backlog holds it.
    #[inline]
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst) > 0
    }

    /// Waits until no backlog holds it, or `give_up()` (asked every 50 ms).
    pub(crate) fn wait_open(&self, mut give_up: impl FnMut() -> bool) {
        let mut guard = self.lock.lock();
        loop {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.held.load(Ordering::SeqCst) == 0 || give_up() {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let slice = Instant::now().checked_add(std::time::Duration::from_millis(50));
            guard = self.opened.wait_until(guard, slice).0;
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
