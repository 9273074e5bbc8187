//! Three bounded queues, one per priority, sharing one capacity; workers
//! park on them when idle and publishers wait on them when full.
//!
//! # Protocols (modelled in `loom_tests.rs`)
//!
//! *Reservation.* A publisher first reserves a slot: a compare-and-swap
//! that raises `queued` only while it is below the publisher's limit, so a
//! refused reservation never touches the counter (a counter bumped and
//! undone would make a room waiter see "full" when it is not, and sleep
//! through its only wake-up). Then it checks `closed`, then pushes.
//! Shutdown sets `closed`, then workers drain until `queued == 0`.
//! Sequential consistency on `queued` and `closed` means a publisher either
//! sees `closed` and backs out, or its reservation is seen by the draining
//! workers, which wait for the push. No accepted event is stranded.
//!
//! *Headroom.* Each priority may fill the capacity only up to its own
//! limit: `capacity - 2 * reserve` for `Low`, `capacity - reserve` for
//! `Normal`, all of it for `High`. A flood of lower-priority events
//! therefore never makes a higher-priority publisher wait for room: the
//! reserve above the flood's limit is free for it.
//!
//! *Overshoot.* A handler must never wait for room (it would wait on its own
//! worker), so under `Overflow::Block` a publish from a handler may reserve
//! past the capacity, up to `capacity` more events. Those events go into the
//! same lane as any other, so they keep their place in publish order and
//! their priority. Outside publishers still wait until `queued` is below
//! their priority's limit.
//!
//! *Parking.* A worker that found nothing registers as a sleeper
//! (`sleepers += 1`) under the park lock, then re-reads `queued`, and only
//! then waits. A publisher reserves (`queued += 1`), pushes, then reads
//! `sleepers` and, if any, takes the lock and notifies. Either the worker
//! sees the reservation and does not sleep, or the publisher sees the
//! sleeper and its notification (under the lock) cannot be lost.
//!
//! *Room.* A blocked publisher registers in `room_waiters` under the room
//! lock, re-checks for room, then waits; anything that lowers `queued` (a
//! worker taking a batch, a reservation backed out at shutdown) then reads
//! `room_waiters` and notifies under the lock. Same handshake.

use crate::event::Priority;
use crate::loom::{
    backoff, fence, spin_hint, AtomicBool, AtomicUsize, BoundedQueue, Condvar, Mutex, Ordering,
    ROOM_SPINS,
};

/// What publish does when the queues are full: at the event's priority's
/// limit, which for `Low` and `Normal` is short of the capacity by the
/// [priority reserve](crate::BusBuilder::priority_reserve).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// The publisher waits for room; nothing is lost. The default.
    #[default]
    Block,
    /// Publish returns [`PublishError::Full`](crate::PublishError::Full) with
    /// the event.
    Error,
    /// Make room by dropping the oldest queued event of the lowest priority
    /// below the new event's; if no queued event has a lower priority, the new
    /// event is the one dropped. Every drop is counted in
    /// [`Stats::dropped`](crate::Stats::dropped).
    Shed,
}

/// One queued event and the flush epoch it belongs to.
#[derive(Debug)]
pub(crate) struct Queued<T> {
    pub(crate) item: T,
    pub(crate) epoch: usize,
}

/// The outcome of offering an event to the queues.
#[derive(Debug)]
pub(crate) enum Offer<T> {
    /// Queued. If a queued event was dropped to make room, here it is.
    Accepted { dropped: Option<Queued<T>> },
    /// Not queued: full (policy `Error`, or a handler's overshoot used up).
    Full(T),
    /// Not queued: the bus is closed.
    Closed(T),
    /// Not queued and nothing queued: under `Shed`, the new event itself was
    /// the lowest and was dropped.
    Shed(T),
    /// Not queued: full under `Block`, for an outside publisher, which waits
    /// ([`Queues::wait_for_room_at`]) and offers again.
    Wait(T),
}

#[derive(Debug)]
pub(crate) struct Queues<T> {
    lanes: [BoundedQueue<Queued<T>>; 3],
    /// What outside publishers may fill (High events; lower priorities
    /// stop `reserve` per step below).
    capacity: usize,
    reserve: usize,
    /// What handlers may fill under `Overflow::Block` (see *Overshoot*).
    overshoot_limit: usize,
    /// Reserved or queued events, across all lanes.
    queued: AtomicUsize,
    closed: AtomicBool,
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    room_waiters: AtomicUsize,
    room: Mutex<()>,
    room_freed: Condvar,
}

impl<T> Queues<T> {
    /// Queues holding `capacity` events; `reserve` (with `2 * reserve <
    /// capacity`) is kept above `Low`'s limit for `Normal` and `High`, and
    /// as much again above `Normal`'s for `High` (see *Headroom*).
    pub(crate) fn new(capacity: usize, reserve: usize) -> Queues<T> {
        debug_assert!(reserve.saturating_mul(2) < capacity.max(1));
        let overshoot_limit = capacity.saturating_mul(2);
        Queues {
            // Each lane can hold everything: all events may be of one priority.
            lanes: [
                BoundedQueue::new(overshoot_limit),
                BoundedQueue::new(overshoot_limit),
                BoundedQueue::new(overshoot_limit),
            ],
            capacity,
            reserve,
            overshoot_limit,
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            room_waiters: AtomicUsize::new(0),
            room: Mutex::new(()),
            room_freed: Condvar::new(),
        }
    }

    /// Offers `item` at `priority`; never waits (a full queue under `Block`
    /// gives [`Offer::Wait`]). `from_handler` marks a publish from a
    /// handler: under `Overflow::Block` it may overshoot the capacity
    /// instead (see *Overshoot*). `accepted` is called once the item is sure
    /// to be queued, before any worker can take it.
    pub(crate) fn offer(
        &self,
        item: T,
        priority: Priority,
        epoch: usize,
        policy: Overflow,
        from_handler: bool,
        accepted: impl FnOnce(&T),
    ) -> Offer<T> {
        let mut accepted = Some(accepted);
        let mut accept = |item: &T| {
            if let Some(f) = accepted.take() {
                f(item);
            }
        };
        let limit = if from_handler && policy == Overflow::Block {
            self.overshoot_limit
        } else {
            self.limit(priority)
        };
        let mut shed_tried = false;
        loop {
            match self.reserve(limit) {
                Reserve::Closed => return Offer::Closed(item),
                Reserve::Ok => {
                    accept(&item);
                    self.push_reserved(Queued { item, epoch }, priority);
                    return Offer::Accepted { dropped: None };
                }
                Reserve::Full => {}
            }
            match policy {
                Overflow::Error => return Offer::Full(item),
                Overflow::Block if from_handler => return Offer::Full(item),
                Overflow::Block => return Offer::Wait(item),
                Overflow::Shed if shed_tried => return Offer::Shed(item),
                Overflow::Shed => {
                    // Drop the oldest event of the lowest lane below ours;
                    // its slot (still counted in `queued`) becomes ours.
                    for lane in &self.lanes[..priority.index()] {
                        if let Some(victim) = lane.pop() {
                            accept(&item);
                            self.push_reserved(Queued { item, epoch }, priority);
                            return Offer::Accepted { dropped: Some(victim) };
                        }
                    }
                    // Nothing lower is queued: one more try, in case room
                    // appeared meanwhile, then the new event is the one shed.
                    shed_tried = true;
                }
            }
        }
    }

    /// [`offer`](Queues::offer), waiting for room and offering again while
    /// it says [`Offer::Wait`]: what `Bus::publish` does.
    #[cfg(test)]
    pub(crate) fn offer_waiting(
        &self,
        mut item: T,
        priority: Priority,
        epoch: usize,
        policy: Overflow,
        from_handler: bool,
        accepted: impl Fn(&T),
    ) -> Offer<T> {
        loop {
            match self.offer(item, priority, epoch, policy, from_handler, &accepted) {
                Offer::Wait(back) => {
                    self.wait_for_room_at(priority);
                    item = back;
                }
                other => return other,
            }
        }
    }

    /// How full the queues may be for an outside publisher at `priority`
    /// to get in (see *Headroom*).
    fn limit(&self, priority: Priority) -> usize {
        self.capacity - self.reserve * (Priority::High.index() - priority.index())
    }

    fn reserve(&self, limit: usize) -> Reserve {
        // A closed bus refuses as closed, full or not.
        if self.closed.load(Ordering::SeqCst) {
            return Reserve::Closed;
        }
        // SeqCst: the reservation handshake with shutdown and with parking.
        let mut current = self.queued.load(Ordering::SeqCst);
        loop {
            if current >= limit {
                return Reserve::Full;
            }
            match self.queued.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        fence(Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            // Backed out: the drain may be waiting for this slot, and a
            // room waiter for the room it frees.
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.wake_all();
            return Reserve::Closed;
        }
        Reserve::Ok
    }

    fn push_reserved(&self, queued: Queued<T>, priority: Priority) {
        // The reservation guarantees room: the lanes' total never exceeds
        // the overshoot limit, and each lane alone can hold that many.
        if self.lanes[priority.index()].push(queued).is_err() {
            unreachable!("a reserved slot is always free");
        }
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.park.lock();
            self.wake.notify_one();
        }
    }

    /// Waits until an outside publisher at `priority` may find room, or the
    /// queues close.
    pub(crate) fn wait_for_room_at(&self, priority: Priority) {
        self.wait_for_room(self.limit(priority));
    }

    fn wait_for_room(&self, limit: usize) {
        let mut round = 0;
        while round < ROOM_SPINS {
            if self.queued.load(Ordering::SeqCst) < limit || self.closed.load(Ordering::SeqCst) {
                return;
            }
            backoff(&mut round);
        }
        let guard = self.room.lock();
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let guard =
            if self.queued.load(Ordering::SeqCst) >= limit && !self.closed.load(Ordering::SeqCst) {
                self.room_freed.wait(guard)
            } else {
                guard
            };
        self.room_waiters.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
    }

    /// Takes up to `max` events from lane `lane` into `batch`. Returns how many.
    pub(crate) fn take(&self, lane: usize, max: usize, batch: &mut Vec<Queued<T>>) -> usize {
        let mut n = 0;
        while n < max {
            match self.lanes[lane].pop() {
                Some(q) => {
                    batch.push(q);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.room_waiters.load(Ordering::SeqCst) > 0 {
                let _guard = self.room.lock();
                self.room_freed.notify_all();
            }
        }
        n
    }

    /// Which lanes hold events, lowest priority first.
    pub(crate) fn nonempty(&self) -> [bool; 3] {
        [!self.lanes[0].is_empty(), !self.lanes[1].is_empty(), !self.lanes[2].is_empty()]
    }

    /// Events queued per lane, lowest priority first.
    pub(crate) fn depths(&self) -> [usize; 3] {
        [self.lanes[0].len(), self.lanes[1].len(), self.lanes[2].len()]
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether nothing is queued or reserved.
    pub(crate) fn is_drained(&self) -> bool {
        fence(Ordering::SeqCst);
        self.queued.load(Ordering::SeqCst) == 0
    }

    /// Wakes a parked worker, if any, for work that is not in the lanes
    /// (a ready mailbox). The caller has made the work visible first; the
    /// handshake is the publisher's (see *Parking*).
    pub(crate) fn notify_worker(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.park.lock();
            self.wake.notify_one();
        }
    }

    /// Parks the calling worker until an event may be there, other work
    /// (`more_work`) is, or the bus closes.
    pub(crate) fn park(&self, more_work: impl Fn() -> bool) {
        let guard = self.park.lock();
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let idle = self.queued.load(Ordering::SeqCst) == 0
            && !self.closed.load(Ordering::SeqCst)
            && !more_work();
        let guard = if idle { self.wake.wait(guard) } else { guard };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        if !idle {
            // Something is reserved or queued (or the bus is closing): look
            // again instead of sleeping.
            spin_hint();
        }
    }

    /// Refuses new events from now on and wakes every worker and waiter.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.wake_all();
    }

    fn wake_all(&self) {
        {
            let _guard = self.park.lock();
            self.wake.notify_all();
        }
        let _guard = self.room.lock();
        self.room_freed.notify_all();
    }
}

enum Reserve {
    Ok,
    Full,
    Closed,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn offer(q: &Queues<u32>, item: u32, priority: Priority, policy: Overflow) -> bool {
        matches!(q.offer_waiting(item, priority, 0, policy, false, |_| {}), Offer::Accepted { .. })
    }

    /// Each priority fills only up to its limit; nothing drains here, so a
    /// High publish under `Block` that had to wait would never return.
    #[test]
    fn a_low_flood_leaves_room_for_normal_and_high() {
        let q: Queues<u32> = Queues::new(8, 2);
        let accepted = (0..10).filter(|&i| offer(&q, i, Priority::Low, Overflow::Error)).count();
        assert_eq!(accepted, 4, "Low stops at capacity - 2 * reserve");
        assert!(offer(&q, 20, Priority::Normal, Overflow::Block));
        assert!(offer(&q, 21, Priority::Normal, Overflow::Block));
        assert!(
            !offer(&q, 22, Priority::Normal, Overflow::Error),
            "Normal stops at capacity - reserve"
        );
        assert!(offer(&q, 30, Priority::High, Overflow::Block));
        assert!(offer(&q, 31, Priority::High, Overflow::Block));
        assert!(!offer(&q, 32, Priority::High, Overflow::Error), "High stops at the capacity");
        assert_eq!(q.depths(), [4, 2, 2]);
    }

    /// Without a reserve, every priority competes for the whole capacity.
    #[test]
    fn no_reserve_lets_low_fill_everything() {
        let q: Queues<u32> = Queues::new(4, 0);
        assert_eq!((0..6).filter(|&i| offer(&q, i, Priority::Low, Overflow::Error)).count(), 4);
        assert!(!offer(&q, 9, Priority::High, Overflow::Error));
    }

    /// Under `Shed`, a Normal event at its limit displaces the oldest Low
    /// one rather than taking High's reserve.
    #[test]
    fn shed_at_a_limit_displaces_a_lower_event() {
        let q: Queues<u32> = Queues::new(8, 2);
        for i in 0..4 {
            assert!(offer(&q, i, Priority::Low, Overflow::Shed));
        }
        assert!(offer(&q, 10, Priority::Normal, Overflow::Shed));
        assert!(offer(&q, 11, Priority::Normal, Overflow::Shed));
        match q.offer(12, Priority::Normal, 0, Overflow::Shed, false, |_| {}) {
            Offer::Accepted { dropped: Some(victim) } => assert_eq!(victim.item, 0),
            other => panic!("expected the oldest Low event shed, got {other:?}"),
        }
        assert_eq!(q.depths(), [3, 3, 0]);
    }
}
