//! The pool runner: an ordered synchronous subscription is run by the
//! dispatch workers. A mailbox with events is on the bus's ready queue at
//! most once; a worker takes it and runs a batch of its events, so its
//! handler never runs concurrently with itself.

use std::sync::Arc;

use crate::shared::Shared;
use crate::subscription::Subscription;

/// A worker's turn at a ready mailbox: up to `max` of its events, then
/// back on the ready queue (whoever next finds it empty unschedules it).
pub(crate) fn run_on_worker(shared: &Arc<Shared>, sub: &Arc<Subscription>, max: usize) {
    let Some(mailbox) = &sub.mailbox else { return };
    let env = shared.env();
    for _ in 0..max {
        let Some((entry, work)) = mailbox.next(&env) else { return };
        if let Some(f) = work.sync() {
            super::call_sync(shared, sub, &entry, f);
        }
        mailbox.done(&env, entry.bucket, Some(work));
    }
    shared.make_ready(sub.clone());
}
