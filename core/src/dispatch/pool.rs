//! The pool runner: an ordered synchronous subscription is run by the
//! dispatch workers. A mailbox with events is on the bus's ready queue at
//! most once; a worker takes it and runs a batch of its events, so its
//! handler never runs concurrently with itself.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::mailbox::Entry;

use crate::shared::Shared;
use crate::subscription::Subscription;

/// A worker's turn at a ready mailbox: up to `max` of its events, taken
/// at once and called in order, then back on the ready queue (whoever next
/// finds it empty unschedules it). A retire meanwhile stops the batch: its
/// events not yet called are counted out of flush and dropped, as the
/// retire discarded the backlog.
pub(crate) fn run_on_worker(shared: &Arc<Shared>, sub: &Arc<Subscription>, max: usize) {
    let Some(mailbox) = &sub.mailbox else { return };
    let env = shared.env();
    let mut batch: SmallVec<[Entry; 32]> = SmallVec::new();
    let Some(work) = mailbox.next_batch(&env, max, &mut batch) else { return };
    let mut ended = [0usize; 2];
    let mut uncalled = 0;
    // Let go of once the batch is counted out (see `threads::run`).
    let mut finished: SmallVec<[Arc<crate::event::Event>; 32]> = SmallVec::new();
    let mut entries = batch.into_iter();
    for entry in entries.by_ref() {
        if mailbox.is_retired() {
            ended[entry.bucket] += 1;
            uncalled += 1;
            break;
        }
        if let Some(f) = work.sync() {
            super::call_sync(shared, sub, &entry, f);
        }
        ended[entry.bucket] += 1;
        finished.push(entry.event);
    }
    // The retired rest, if any.
    let rest: SmallVec<[Entry; 32]> = entries.collect();
    for entry in &rest {
        ended[entry.bucket] += 1;
    }
    uncalled += rest.len();
    if uncalled > 0 && mailbox.retired_losing() {
        shared.drain_lost(sub, uncalled);
    }
    shared.drop_caught(rest);
    mailbox.done_batch(&env, ended, Some(work));
    for event in finished {
        shared.recycle_caught(event);
    }
    shared.make_ready(sub.clone());
}
