//! The one place the crate takes its synchronisation primitives from.
//!
//! Under `cfg(loom)` every atomic, lock, condition variable, thread and
//! thread-local comes from `loom`, and the two structures loom cannot see
//! into (crossbeam's `ArrayQueue` and arc-swap's `ArcSwap`) are replaced by
//! stand-ins built on loom's `Mutex`, so the models in `loom_tests.rs`
//! explore *our* protocols: snapshot swap, the call slots and reclamation, flush
//! epochs, parking and shutdown. Code elsewhere never names `std::sync`.

#[cfg(not(loom))]
mod imp {
    use std::time::Instant;

    pub(crate) use std::sync::atomic::{
        compiler_fence, fence, AtomicBool, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use std::thread::JoinHandle;
    pub(crate) use std::thread_local;

    /// An `UnsafeCell` with loom's closure interface.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) fn new(value: T) -> UnsafeCell<T> {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        #[inline]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// A mutex without poisoning: a panicking handler can never poison it
    /// (handlers never run under it anyway).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Mutex<T> {
            Mutex(parking_lot::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }

        /// Locks, or gives up at `deadline` (`None`: never gives up).
        pub(crate) fn lock_until(&self, deadline: Option<Instant>) -> Option<MutexGuard<'_, T>> {
            match deadline {
                None => Some(self.0.lock()),
                Some(deadline) => self.0.try_lock_until(deadline),
            }
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(parking_lot::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Condvar {
            Condvar(parking_lot::Condvar::new())
        }

        pub(crate) fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(&mut guard);
            guard
        }

        /// Waits for a notification or `deadline` (`None`: no deadline);
        /// `true` when the deadline passed.
        pub(crate) fn wait_until<'a, T>(
            &self,
            mut guard: MutexGuard<'a, T>,
            deadline: Option<Instant>,
        ) -> (MutexGuard<'a, T>, bool) {
            let timed_out = match deadline {
                None => {
                    self.0.wait(&mut guard);
                    false
                }
                Some(deadline) => self.0.wait_until(&mut guard, deadline).timed_out(),
            };
            (guard, timed_out)
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    pub(crate) fn spawn<F>(name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        std::thread::Builder::new().name(name).spawn(f)
    }

    /// How many rounds of [`backoff`] a publisher waits for room before it
    /// sleeps on the room condition variable.
    pub(crate) const ROOM_SPINS: u32 = 64;

    /// Waits a little before trying again: spins first, then yields, then
    /// sleeps, so a waiter costs nothing when the wait is long.
    pub(crate) fn backoff(round: &mut u32) {
        *round = round.saturating_add(1);
        if *round < 64 {
            std::hint::spin_loop();
        } else if *round < 128 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// One turn of a busy wait.
    pub(crate) fn spin_hint() {
        std::hint::spin_loop();
    }

    /// The `round`-th empty look of an idle worker: spin a little, then
    /// yield the processor a little; `false` once it is time to park.
    /// Parking costs a futex wake-up (microseconds) on the next event, so a
    /// short grace period keeps bursts cheap; past it an idle bus uses no CPU.
    /// A worker's short wait after a batch smaller than it could take,
    /// while events keep coming: up to `LINGER` (a few microseconds),
    /// asking `enough()` every `LINGER_SPINS` spins, so the next batch is a
    /// full one. Taking events as fast as one publisher makes them had the
    /// worker take one or two at a time, each take a write to the lines the
    /// publisher writes per event (the queue's count and head): on a 2-core
    /// Intel VM the bus ran at 0.4x-0.5x of a bare channel that way, and at
    /// 0.7x-1.0x with this (`--quick`, same runs). The cost: an event that
    /// comes while the worker lingers waits up to `LINGER` more, unless it
    /// is `High` (then `enough()` says so at the next look).
    pub(crate) fn linger(mut enough: impl FnMut() -> bool) {
        const LINGER: std::time::Duration = std::time::Duration::from_micros(5);
        const LINGER_SPINS: u32 = 128;
        let until = Instant::now() + LINGER;
        loop {
            for _ in 0..LINGER_SPINS {
                std::hint::spin_loop();
            }
            if enough() || Instant::now() >= until {
                return;
            }
        }
    }

    pub(crate) fn idle_turn(round: u32) -> bool {
        const SPINS: u32 = 64;
        const YIELDS: u32 = 32;
        if round <= SPINS {
            std::hint::spin_loop();
            true
        } else if round <= SPINS + YIELDS {
            std::thread::yield_now();
            true
        } else {
            false
        }
    }
}

#[cfg(loom)]
mod imp {
    use std::time::Instant;

    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::thread::JoinHandle;
    pub(crate) use loom::thread_local;

    /// loom has no compiler fence; the barrier module never uses it under
    /// loom (it models the light barrier as a full fence).
    #[allow(dead_code)]
    pub(crate) fn compiler_fence(_order: Ordering) {}

    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Models never use deadlines: this locks.
        pub(crate) fn lock_until(&self, _deadline: Option<Instant>) -> Option<MutexGuard<'_, T>> {
            Some(self.lock())
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Condvar {
            Condvar(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(guard).unwrap_or_else(|e| e.into_inner())
        }

        /// Models never use deadlines: this waits.
        pub(crate) fn wait_until<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            _deadline: Option<Instant>,
        ) -> (MutexGuard<'a, T>, bool) {
            (self.wait(guard), false)
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    pub(crate) fn spawn<F>(_name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        Ok(loom::thread::spawn(f))
    }

    /// Under loom a publisher sleeps on the room condition variable at once:
    /// the models explore that protocol, not the spinning before it.
    pub(crate) const ROOM_SPINS: u32 = 0;

    pub(crate) fn backoff(round: &mut u32) {
        *round = round.saturating_add(1);
        loom::thread::yield_now();
    }

    /// Under loom a worker parks at once: the model explores the parking
    /// protocol, not the grace period.
    pub(crate) fn idle_turn(_round: u32) -> bool {
        false
    }

    /// Models take the next batch at once.
    pub(crate) fn linger(_enough: impl FnMut() -> bool) {}

    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }
}

pub(crate) use imp::*;

/// A bounded MPMC queue: crossbeam's `ArrayQueue`, or under loom a locked
/// `VecDeque` with the same interface.
#[cfg(not(loom))]
pub(crate) type BoundedQueue<T> = crossbeam_queue::ArrayQueue<T>;

#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct BoundedQueue<T> {
    items: loom::sync::Mutex<std::collections::VecDeque<T>>,
    capacity: usize,
}

#[cfg(loom)]
impl<T> BoundedQueue<T> {
    pub(crate) fn new(capacity: usize) -> BoundedQueue<T> {
        BoundedQueue { items: loom::sync::Mutex::new(Default::default()), capacity }
    }

    pub(crate) fn push(&self, value: T) -> Result<(), T> {
        let mut items = self.items.lock().unwrap();
        if items.len() == self.capacity {
            return Err(value);
        }
        items.push_back(value);
        Ok(())
    }

    pub(crate) fn pop(&self) -> Option<T> {
        self.items.lock().unwrap().pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.lock().unwrap().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An unbounded MPMC queue: crossbeam's `SegQueue`, or under loom a locked
/// `VecDeque` with the same interface.
#[cfg(not(loom))]
pub(crate) type UnboundedQueue<T> = crossbeam_queue::SegQueue<T>;

#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct UnboundedQueue<T>(loom::sync::Mutex<std::collections::VecDeque<T>>);

#[cfg(loom)]
impl<T> UnboundedQueue<T> {
    pub(crate) fn new() -> UnboundedQueue<T> {
        UnboundedQueue(loom::sync::Mutex::new(Default::default()))
    }

    pub(crate) fn push(&self, value: T) {
        self.0.lock().unwrap().push_back(value);
    }

    pub(crate) fn pop(&self) -> Option<T> {
        self.0.lock().unwrap().pop_front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}

/// An atomically replaceable `Arc<T>`: arc-swap's `ArcSwap`, or under loom a
/// locked `Arc` with the same interface.
#[cfg(not(loom))]
pub(crate) type ArcCell<T> = arc_swap::ArcSwap<T>;

#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct ArcCell<T>(loom::sync::Mutex<std::sync::Arc<T>>);

/// What [`ArcCell::load`] gives under loom.
#[cfg(loom)]
pub(crate) struct ArcGuard<T>(std::sync::Arc<T>);

#[cfg(loom)]
impl<T> std::ops::Deref for ArcGuard<T> {
    type Target = std::sync::Arc<T>;

    fn deref(&self) -> &std::sync::Arc<T> {
        &self.0
    }
}

#[cfg(loom)]
impl<T> ArcCell<T> {
    pub(crate) fn from_pointee(value: T) -> ArcCell<T> {
        ArcCell(loom::sync::Mutex::new(std::sync::Arc::new(value)))
    }

    pub(crate) fn load_full(&self) -> std::sync::Arc<T> {
        self.0.lock().unwrap().clone()
    }

    /// As arc-swap's `load`: a guard that derefs to the `Arc`.
    pub(crate) fn load(&self) -> ArcGuard<T> {
        ArcGuard(self.load_full())
    }

    pub(crate) fn store(&self, value: std::sync::Arc<T>) {
        *self.0.lock().unwrap() = value;
    }

    pub(crate) fn swap(&self, value: std::sync::Arc<T>) -> std::sync::Arc<T> {
        std::mem::replace(&mut *self.0.lock().unwrap(), value)
    }
}
