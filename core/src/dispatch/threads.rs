//! The thread runner: a blocking subscription has threads of its own
//! (`concurrency` of them, one when ordered), so a slow handler never holds
//! a dispatch worker. They wait on the mailbox for events, and leave once
//! the subscription is retired, or the mailbox sealed and empty.

use std::sync::Arc;

use crate::shared::Shared;
use crate::subscription::Subscription;

/// Starts `n` threads for `sub`'s mailbox.
///
/// # Errors
///
/// The reason a thread could not be started (those started leave when the
/// subscription is retired).
pub(crate) fn spawn(shared: &Arc<Shared>, sub: &Arc<Subscription>, n: usize) -> Result<(), String> {
    for i in 0..n {
        let (shared, s) = (shared.clone(), sub.clone());
        let name = format!("{}-{}-{}.{i}", shared.config.name, sub.plugin, sub.id);
        crate::loom::spawn(name, move || run(shared, s)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The body of a blocking subscription's thread.
fn run(shared: Arc<Shared>, sub: Arc<Subscription>) {
    let Some(mailbox) = &sub.mailbox else { return };
    let env = shared.env();
    while let Some((entry, work)) = mailbox.next_blocking(&env) {
        if let Some(f) = work.sync() {
            super::call_sync(&shared, &sub, &entry, f);
        }
        // Once the call is counted out: a payload's `Drop` (the last
        // reference may be this one) that flushes or drops the last `Bus`
        // must not wait for its own event. (A handler scope around it did
        // the same, at the cost of one more scope, on a thread with no
        // bus of its own an `Arc` count, per call.)
        mailbox.done(&env, entry.bucket, Some(work));
        shared.recycle_caught(entry.event);
    }
}
