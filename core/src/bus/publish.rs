//! Publishing: the name and depth checks, the room checks of ordered
//! backlogs and the gate, the sequence number and history, the queues
//! under the overflow policy, and the waits `Block` asks for.

use std::sync::Arc;

use smallvec::SmallVec;

use super::Bus;
use crate::context::parent_of;
use crate::dispatch;
use crate::error::{NameError, PublishError};
use crate::event::{Cause, Event, EventId, Priority};
use crate::loom::Ordering;
use crate::mailbox::Room;
use crate::queue::{Offer, Overflow};
use crate::stats::Count;
use crate::subscription::Subscription;

/// What one try at publishing came back with.
enum Attempt {
    Done(Result<EventId, PublishError>),
    /// It would have had to wait for room: the event, and what to wait for.
    Wait(Box<Event>, WaitFor),
}

enum WaitFor {
    /// Room in the queues at this priority.
    Queue(Priority),
    /// Room in this ordered subscription's backlog.
    Backlog(Arc<Subscription>),
    /// Room in every blocking or async subscription's backlog (the gate).
    Gate,
}

fn unwrap_event(event: Arc<Event>) -> Box<Event> {
    Box::new(Arc::try_unwrap(event).unwrap_or_else(|shared| (*shared).clone()))
}

impl Bus {
    /// Queues `event` and returns without waiting for any handler.
    ///
    /// Under [`Overflow::Block`](crate::Overflow::Block) (the default) it
    /// waits while the queues are full, and while the backlog of an ordered
    /// subscription the event matches is full (its
    /// [policy](crate::SubscribeOptions::overflow) is the bus's unless it chose
    /// another), so nothing accepted is ever dropped. On a multi-thread
    /// tokio runtime's thread it waits in `block_in_place`; on a
    /// current-thread runtime's thread, while async handlers run on a
    /// current-thread runtime, it does not wait but returns
    /// [`PublishError::WouldBlock`] (use `publish_async`
    /// there).
    ///
    /// From inside a handler the event is one level deeper than the event
    /// being handled, has it as its [parent](Event::parent), and it is
    /// queued like any other (handlers never run
    /// nested). A handler never waits for room (it would wait on its own
    /// worker, or on itself): under `Block` its event may go past the
    /// capacity of the queues, or of an ordered subscription's backlog, by
    /// as many events again, keeping its place in publish order and its
    /// priority; past that, or under [`Overflow::Error`](crate::Overflow::Error),
    /// it gets [`PublishError::Full`].
    ///
    /// Once this returns `Ok`, the event is in [`history`](Bus::history) and
    /// has its [sequence number](Event::sequence).
    ///
    /// # Errors
    ///
    /// [`PublishError`], which gives the event back: the bus is closed, the
    /// queues are full (policy `Error`), an ordered subscription's backlog is
    /// full (its policy `Error`), waiting would block a current-thread
    /// runtime, the name is empty, too long or holds a NUL, or the handler
    /// chain is deeper than the bus's `max_depth`.
    pub fn publish(&self, mut event: Event) -> Result<EventId, PublishError> {
        let shared = self.shared();
        loop {
            let (back, wait_for) = match self.attempt(event) {
                Attempt::Done(result) => return result,
                Attempt::Wait(back, wait_for) => (back, wait_for),
            };
            let waited = shared.wait_here(|| match &wait_for {
                WaitFor::Queue(priority) => shared.queues.wait_for_room_at(*priority),
                WaitFor::Gate => shared.gate.wait_open(|| shared.is_shut()),
                WaitFor::Backlog(sub) => {
                    if let Some(mailbox) = &sub.mailbox {
                        // Released when the bus closes: the next try then
                        // says `Closed`.
                        mailbox.wait_for_room(|| shared.is_shut());
                    }
                }
            });
            if waited.is_none() {
                shared.counters.bump(Count::Rejected);
                return Err(PublishError::WouldBlock(back));
            }
            event = *back;
        }
    }

    /// [`publish`](Bus::publish) for async code: where `publish` would wait
    /// for room (under [`Overflow::Block`], the queues or an ordered
    /// subscription's backlog full), it waits without blocking a runtime
    /// thread (on tokio's blocking pool), on any runtime flavour. From
    /// inside a handler, which never waits, it is `publish`.
    ///
    /// # Errors
    ///
    /// As [`publish`](Bus::publish), but never [`PublishError::WouldBlock`].
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn publish_async(&self, event: Event) -> Result<EventId, PublishError> {
        match self.attempt(event) {
            Attempt::Done(result) => result,
            Attempt::Wait(event, _) => {
                let bus = self.clone();
                crate::dispatch::tokio::on_blocking_pool(move || bus.publish(*event)).await
            }
        }
    }

    /// One try at publishing `event` that never waits: what would wait comes
    /// back, for the caller to wait as its context allows and try again.
    fn attempt(&self, mut event: Event) -> Attempt {
        let shared = self.shared();
        if let Err(reason) = NameError::check(event.name()) {
            shared.counters.bump(Count::Rejected);
            return Attempt::Done(Err(PublishError::InvalidName {
                event: Box::new(event),
                reason,
            }));
        }
        // From a handler: one level deeper, and in the flush bucket of the
        // event being handled, so a flush also waits for the cascade.
        let parent = parent_of(shared.id);
        let depth = parent.map_or(0, |parent| parent.depth);
        if depth > shared.config.max_depth {
            shared.counters.bump(Count::DepthRefused);
            return Attempt::Done(Err(PublishError::DepthExceeded {
                event: Box::new(event),
                depth,
                max: shared.config.max_depth,
            }));
        }
        let from_handler = parent.is_some();
        // A blocking or async subscription's backlog is full under `Block`:
        // outside publishers wait until its runner has made room (workers
        // never wait for a backlog; handlers never wait at all).
        if !from_handler && shared.gate.is_held() {
            if shared.is_shut() {
                shared.counters.bump(Count::Rejected);
                return Attempt::Done(Err(PublishError::Closed(Box::new(event))));
            }
            return Attempt::Wait(Box::new(event), WaitFor::Gate);
        }
        // Counted in flush before the snapshot is loaded: a flush that starts
        // after this (a reload's, once the new instance subscribed) waits
        // for this publish, so whichever subscriptions the snapshot holds
        // are still live when it pushes (a retired one skips the push).
        let bucket = match parent {
            Some(parent) => shared.epochs.begin_in(parent.bucket),
            None => shared.epochs.begin(),
        };
        // Ordered subscriptions get the event from this thread, in its
        // publish order (see `mailbox.rs`); their backlogs are checked for
        // room before anything is reserved, so a wait holds nothing.
        // Borrowed from the snapshot, which outlives them here: no count of
        // each subscription touched per event.
        let routed =
            (shared.ordered_live.load(Ordering::SeqCst) > 0).then(|| shared.snapshot.load_full());
        let mut ordered: SmallVec<[&Arc<Subscription>; 16]> = SmallVec::new();
        if let Some(snapshot) = &routed {
            snapshot.route_ordered(event.name(), |sub| ordered.push(sub));
            for &sub in &ordered {
                let Some(mailbox) = &sub.mailbox else { continue };
                let refusal = match mailbox.room_for(from_handler) {
                    Room::Free => continue,
                    // A closed bus refuses as closed, full or not.
                    Room::Wait if shared.is_shut() => PublishError::Closed(Box::new(event)),
                    Room::Wait => {
                        shared.epochs.end(bucket, 1);
                        return Attempt::Wait(Box::new(event), WaitFor::Backlog(sub.clone()));
                    }
                    // Never accepted: counted in `rejected`, not as a loss.
                    Room::Refused if mailbox.overflow == Overflow::Error => {
                        PublishError::BacklogFull { event: Box::new(event), subscription: sub.id }
                    }
                    Room::Refused => PublishError::Full(Box::new(event)),
                };
                shared.epochs.end(bucket, 1);
                shared.counters.bump(Count::Rejected);
                return Attempt::Done(Err(refusal));
            }
        }
        event.set_depth(depth);
        event.clear_sequence();
        // Its parent: the event being handled, numbered on this bus. With
        // dispatch tracing on, the publisher's span goes with it, the parent
        // of its dispatch spans (see `trace.rs`).
        let cause = parent
            .and_then(|parent| parent.parent)
            .map(|(id, seq)| Cause::new(id).with_sequence(shared.instance, seq));
        let span = if shared.config.trace_dispatch { crate::trace::publisher() } else { None };
        event.inherit(cause, span);
        let id = event.id();
        let priority = event.priority();
        let event = shared.event_block(event);
        // Numbered and in history once it is sure to be accepted, before any
        // worker can take it.
        let record = |event: &Arc<Event>| {
            let seq = shared.next_sequence();
            event.set_sequence(seq);
            if let Some(history) = &shared.history {
                if let Some(evicted) = history.record(event, seq) {
                    shared.recycle_caught(evicted);
                }
            }
        };
        let route = |event: &Arc<Event>| {
            record(event);
            if !ordered.is_empty() {
                shared.epochs.begin_in_n(bucket, ordered.len());
                // A panic out of a push (a logging subscriber's, counting a
                // shed) counts the pushes not made out again.
                let mut unmade =
                    dispatch::Unmade { epochs: &shared.epochs, bucket, left: ordered.len() };
                for &sub in &ordered {
                    unmade.left -= 1;
                    dispatch::push_counted(&self.handle.shared, sub, event, bucket);
                }
            }
            // An ordered subscription made between the routing above and the
            // number just taken gets the event too: every event numbered at
            // or above the sequence end read after a subscribe returned
            // reaches the subscription (the seam of `subscribe_replay` rests
            // on it; workers meet the same rule by loading their snapshot
            // after taking the event). Its backlog's room was not checked:
            // it may overshoot by one, as with racing publishers.
            if shared.ordered_live.load(Ordering::SeqCst) > 0 {
                let now = shared.snapshot.load();
                if routed.as_ref().is_none_or(|before| !Arc::ptr_eq(before, &now)) {
                    now.route_ordered(event.name(), |sub| {
                        if !ordered.iter().any(|&known| Arc::ptr_eq(known, sub)) {
                            dispatch::push(&self.handle.shared, sub, event, bucket);
                        }
                    });
                }
            }
        };
        let overflow = shared.config.overflow;
        let offer = shared.queues.offer(event, priority, bucket, overflow, from_handler, route);
        let refused = match offer {
            Offer::Accepted { dropped } => {
                if let Some(victim) = dropped {
                    shared.epochs.end(victim.epoch, 1);
                    shared.counters.bump(Count::Dropped);
                    shared.log_shed(&victim.item);
                    // The victim was counted as published when it was accepted.
                    shared.drop_caught(victim);
                }
                shared.counters.bump(Count::Published(priority as usize));
                return Attempt::Done(Ok(id));
            }
            Offer::Shed(event) => {
                // Accepted and dropped at once: published, in history, and
                // counted as dropped.
                record(&event);
                shared.epochs.end(bucket, 1);
                shared.counters.bump(Count::Published(priority as usize));
                shared.counters.bump(Count::Dropped);
                shared.log_shed(&event);
                shared.drop_caught(event);
                return Attempt::Done(Ok(id));
            }
            Offer::Wait(event) => {
                shared.epochs.end(bucket, 1);
                return Attempt::Wait(unwrap_event(event), WaitFor::Queue(priority));
            }
            Offer::Full(event) => PublishError::Full(unwrap_event(event)),
            Offer::Closed(event) => PublishError::Closed(unwrap_event(event)),
        };
        shared.epochs.end(bucket, 1);
        shared.counters.bump(Count::Rejected);
        Attempt::Done(Err(refused))
    }
}
