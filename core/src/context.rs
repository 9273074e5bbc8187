//! The handler context: what this thread knows about the bus whose handler
//! it runs, as crossbeam's `context.rs` and tokio's `runtime/context` do.
//!
//! A dispatch worker is marked as its bus's for its whole life; any other
//! thread (a blocking subscription's, a tokio thread running an async
//! call, the thread of a replay) is marked for one call by a
//! [`HandlerScope`]. From the mark, the bus knows that a publish is one
//! level deeper than the event being handled, counts in its flush bucket
//! and has it as its parent (`Event::parent`), that `flush` and `shutdown` must not wait for the thread's own
//! work, which call an unsubscribe-and-wait excuses, and which bus
//! `Bus::current` is.
//!
//! The context names a bus by its id and holds it as an [`Owner`] (type
//! erased), so that nothing here depends on what a bus is made of.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::event::{Event, EventId};
use crate::loom::thread_local;

/// A bus's shared state, type-erased: `Bus::current` downcasts it.
pub(crate) type Owner = Arc<dyn Any + Send + Sync>;

/// What a thread knows about the bus it works for.
#[derive(Default)]
struct Context {
    /// The id of the bus this thread is a worker of (0: none).
    bus: usize,
    /// This worker's index (its call slot).
    worker: usize,
    /// The bus, for `Bus::current`.
    owner: Option<Owner>,
    /// The event being handled.
    handling: Handling,
    /// The bus whose mailbox handler this thread is running, when it is not
    /// one of its workers (a blocking subscription's thread, a tokio task).
    handler_bus: usize,
    /// The mailbox subscription whose handler this thread is running.
    call: usize,
}

/// What a thread knows of the event it is handling: what an event it
/// publishes inherits.
#[derive(Clone, Copy, Default)]
struct Handling {
    /// Its depth.
    depth: u32,
    /// Its flush bucket: events its handlers publish are counted in the
    /// same one, so a flush waits for cascades.
    bucket: usize,
    /// Its id and sequence number: the parent of the events its handlers
    /// publish (`None` before the first event, or for one never numbered).
    event: Option<(EventId, u64)>,
}

impl Handling {
    #[inline]
    fn of(event: &Event, bucket: usize) -> Handling {
        Handling {
            depth: event.depth(),
            bucket,
            event: event.sequence().map(|seq| (event.id(), seq)),
        }
    }
}

/// What an event published from a handler inherits from the event being
/// handled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inherited {
    /// One level deeper than the event being handled.
    pub(crate) depth: u32,
    /// The event's flush bucket.
    pub(crate) bucket: usize,
    /// The event's id and sequence number: the parent.
    pub(crate) parent: Option<(EventId, u64)>,
}

thread_local! {
    static CONTEXT: RefCell<Context> = RefCell::new(Context::default());
}

// Not modelled by loom: the models run no tokio.
std::thread_local! {
    static OFF_RUNTIME: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as a worker of bus `bus` (index `worker`) until
/// [`leave_worker`].
pub(crate) fn enter_worker(bus: usize, worker: usize, owner: Owner) {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        c.bus = bus;
        c.worker = worker;
        c.owner = Some(owner);
    });
}

/// Clears a worker's mark as it leaves.
pub(crate) fn leave_worker() {
    CONTEXT.with(|c| *c.borrow_mut() = Context::default());
}

/// A worker is about to handle `event`, counted in `bucket`.
#[inline]
pub(crate) fn set_event(event: &Event, bucket: usize) {
    let handling = Handling::of(event, bucket);
    CONTEXT.with(|c| c.borrow_mut().handling = handling);
}

/// Marks this thread as running a mailbox subscription's handler for the
/// guard's lifetime: publishes from it are one level deeper, in the
/// event's flush bucket and caused by the event, `flush` and `shutdown` from it do not wait on it,
/// and `Bus::current` finds the bus. The previous context comes back on drop
/// (a tokio thread runs tasks of many buses).
pub(crate) struct HandlerScope {
    saved: Option<Saved>,
}

/// What a [`HandlerScope`] changes: handler bus, owner (`None`: left as
/// it is, as on the bus's own worker, whose owner is its bus: no reference
/// count is touched), the event being handled, call.
struct Saved {
    handler_bus: usize,
    owner: Option<Option<Owner>>,
    handling: Handling,
    call: usize,
}

/// Puts `s` in this thread's context; returns what it replaced.
fn swap_in(c: &mut Context, s: Saved) -> Saved {
    Saved {
        handler_bus: std::mem::replace(&mut c.handler_bus, s.handler_bus),
        owner: s.owner.map(|owner| std::mem::replace(&mut c.owner, owner)),
        handling: std::mem::replace(&mut c.handling, s.handling),
        call: std::mem::replace(&mut c.call, s.call),
    }
}

impl HandlerScope {
    /// Enters a call of subscription `call` (its reclamation key) of bus
    /// `bus` for `event` counted in `bucket`; `owner` is asked for only on
    /// a thread that is not the bus's worker.
    pub(crate) fn enter(
        bus: usize,
        owner: impl FnOnce() -> Owner,
        call: usize,
        event: &Event,
        bucket: usize,
    ) -> HandlerScope {
        let handling = Handling::of(event, bucket);
        let saved = CONTEXT.with(|c| {
            let mut c = c.borrow_mut();
            let own_worker = c.bus == bus;
            // On its own worker the owner is the bus's already, unless a
            // scope of another bus (a replay of it, say) is open around
            // this one.
            let owner_ours = own_worker && (c.handler_bus == 0 || c.handler_bus == bus);
            let scope = Saved {
                handler_bus: if own_worker { c.handler_bus } else { bus },
                owner: (!owner_ours).then(|| Some(owner())),
                handling,
                call,
            };
            swap_in(&mut c, scope)
        });
        HandlerScope { saved: Some(saved) }
    }
}

impl Drop for HandlerScope {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            // What the scope put in (its owner, if any) is dropped after the
            // context is released: a drop may run user code.
            let replaced = CONTEXT.with(|c| swap_in(&mut c.borrow_mut(), saved));
            drop(replaced);
        }
    }
}

/// The handler context of this thread, to carry into work it hands to
/// another thread on its behalf (`Bus::run_blocking`): there, waiting
/// excuses the call it is part of, as it would here.
#[cfg(feature = "tokio")]
pub(crate) struct CarriedContext {
    saved: Saved,
}

#[cfg(feature = "tokio")]
impl CarriedContext {
    /// This thread's context, if it is running a mailbox handler of bus
    /// `bus` (the calls that can hand work to another thread and wait).
    pub(crate) fn capture(bus: usize) -> Option<CarriedContext> {
        CONTEXT.with(|c| {
            let c = c.borrow();
            (c.handler_bus == bus && c.call != 0).then(|| CarriedContext {
                saved: Saved {
                    handler_bus: c.handler_bus,
                    owner: Some(c.owner.clone()),
                    handling: c.handling,
                    call: c.call,
                },
            })
        })
    }

    /// Makes this thread run in the carried context until the guard drops.
    pub(crate) fn enter(self) -> HandlerScope {
        let saved = CONTEXT.with(|c| swap_in(&mut c.borrow_mut(), self.saved));
        HandlerScope { saved: Some(saved) }
    }
}

/// Whether this thread is running a handler of the bus `bus` (as one of its
/// workers, or in a mailbox call): it must not wait for that bus's work.
pub(crate) fn in_handler_of(bus: usize) -> bool {
    CONTEXT.with(|c| {
        let c = c.borrow();
        c.bus == bus || c.handler_bus == bus
    })
}

/// The handler context of this thread for bus `bus`: what an event
/// published from it on that bus inherits (`None` outside its handlers).
#[inline]
pub(crate) fn parent_of(bus: usize) -> Option<Inherited> {
    CONTEXT.with(|c| {
        let c = c.borrow();
        (c.bus == bus || c.handler_bus == bus).then_some(Inherited {
            depth: c.handling.depth + 1,
            bucket: c.handling.bucket,
            parent: c.handling.event,
        })
    })
}

/// The mailbox subscription whose handler this thread is running (0: none).
pub(crate) fn mailbox_call() -> usize {
    CONTEXT.with(|c| c.borrow().call)
}

/// This thread's worker index, if it is a worker of the bus `bus`.
pub(crate) fn worker_index(bus: usize) -> Option<usize> {
    CONTEXT.with(|c| {
        let c = c.borrow();
        (c.bus == bus).then_some(c.worker)
    })
}

/// The bus whose handler this thread runs, if any.
pub(crate) fn owner() -> Option<Owner> {
    CONTEXT.with(|c| c.borrow().owner.clone())
}

/// Whether this thread runs one of the bus's own `spawn_blocking` closures
/// (`Bus::run_blocking`'s and the `_async` forms'), where waiting is what
/// it is there for, whatever the runtime's flavour.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn off_runtime() -> bool {
    OFF_RUNTIME.with(|c| c.get())
}

/// Marks this thread as [`off_runtime`] until the guard drops.
#[cfg(feature = "tokio")]
pub(crate) fn enter_off_runtime() -> impl Drop {
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            OFF_RUNTIME.with(|c| c.set(false));
        }
    }
    OFF_RUNTIME.with(|c| c.set(true));
    Mark
}
