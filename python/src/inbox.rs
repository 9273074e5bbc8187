//! One event loop's inbox: the calls the bus's worker matched for it,
//! handed to the loop in batches.
//!
//! The worker pushes an entry (the event and the indices of the patterns it
//! matched) under a short lock; only the push that finds the inbox idle
//! writes a byte to the pipe the loop watches, so a burst costs one
//! cross-thread wake-up, however many events it holds. The loop takes what
//! is there, runs it, and takes again; the take that finds the inbox empty
//! marks it idle under the same lock, which closes the lost-wake-up race
//! (a push after it writes a new byte).
//!
//! **Invariant:** no thread but the loop's ever takes the GIL for the inbox;
//! the worker touches only Rust data and moves `Py` references it never
//! dereferences.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use switchboard::Priority;

use crate::core::{Carried, Index};

/// The tuple the loop takes for one event: `(event, seq, subscriptions,
/// generation)`.
fn ready_tuple<'py>(
    py: Python<'py>,
    event: &Bound<'py, PyAny>,
    seq: u64,
    subs: Bound<'py, PyAny>,
    gen: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [event.clone(), seq.into_pyobject(py)?.into_any(), subs, gen.into_pyobject(py)?.into_any()],
    )
}

/// This thread's identity as Python's `threading.get_ident()` gives it.
fn current_ident() -> u64 {
    // SAFETY: `pthread_self` has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// What publishers do when a loop's backlog is full (the names of
/// `switchboard::Overflow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    Block,
    Error,
    Shed,
}

impl Overflow {
    pub(crate) fn parse(name: &str) -> Option<Overflow> {
        match name {
            "block" => Some(Overflow::Block),
            "error" => Some(Overflow::Error),
            "shed" => Some(Overflow::Shed),
            _ => None,
        }
    }
}

/// One event matched for this loop.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Matched by the bus's worker, without the GIL: what the event carries
    /// and which patterns (indices into the index it was routed with)
    /// matched; made into Python objects when the loop takes it.
    Routed { carried: Arc<Carried>, matches: Vec<u32> },
    /// Matched on the loop's own thread: the event and its subscriptions
    /// (the tuple the loop takes is made when it takes it: made at publish
    /// time, a whole backlog of tuples would live long enough to burden the
    /// garbage collector).
    Ready {
        event: Py<PyAny>,
        seq: u64,
        gen: u64,
        priority: Priority,
        index: Arc<Index>,
        matches: Vec<u32>,
    },
}

impl Entry {
    /// Its flush generation.
    pub(crate) fn gen(&self) -> u64 {
        match self {
            Entry::Routed { carried, .. } => carried.gen,
            Entry::Ready { gen, .. } => *gen,
        }
    }

    fn priority(&self) -> Priority {
        match self {
            Entry::Routed { carried, .. } => carried.priority,
            Entry::Ready { priority, .. } => *priority,
        }
    }
}

/// The entries waiting for the loop, one lane per priority: the loop takes
/// the highest priority first, and within a priority in the order they
/// came (as the engine's queues do).
#[derive(Debug, Default)]
struct Lanes([VecDeque<Entry>; 3]);

impl Lanes {
    fn push(&mut self, entry: Entry) {
        self.0[entry.priority().index()].push_back(entry);
    }

    fn len(&self) -> usize {
        self.0.iter().map(VecDeque::len).sum()
    }

    /// Up to `n` entries, highest priority first.
    fn take(&mut self, n: usize) -> Vec<Entry> {
        let mut out = Vec::with_capacity(n.min(self.len()));
        for lane in self.0.iter_mut().rev() {
            let k = lane.len().min(n - out.len());
            out.extend(lane.drain(..k));
            if out.len() == n {
                break;
            }
        }
        out
    }

    /// The oldest entry of the lowest lane below `priority`, if any.
    fn shed_below(&mut self, priority: Priority) -> Option<Entry> {
        self.0[..priority.index()].iter_mut().find_map(VecDeque::pop_front)
    }

    fn drain_all(&mut self) -> Vec<Entry> {
        self.take(usize::MAX)
    }
}

/// Flush generations: a flush starts a new one and waits until no event of
/// its generation or an older one is left. An event belongs to the
/// generation current when it was accepted, or, published by a handler the
/// loop runs, to that of the event being handled (so a flush waits for
/// cascades). Counting by generation, not a global count, keeps a flush
/// from waiting for events published after it: a flood from another thread
/// cannot hold it forever.
#[derive(Debug, Default)]
struct Gens {
    current: u64,
    /// Events not yet done, by generation, oldest first.
    counts: VecDeque<(u64, usize)>,
    /// The generations of the entries the loop took and has not marked
    /// done, in the order it took them (the order it runs them).
    taken: VecDeque<u64>,
}

impl Gens {
    fn add(&mut self, gen: u64) {
        match self.counts.iter().position(|&(g, _)| g >= gen) {
            Some(i) if self.counts[i].0 == gen => self.counts[i].1 += 1,
            Some(i) => self.counts.insert(i, (gen, 1)),
            None => self.counts.push_back((gen, 1)),
        }
    }

    /// Whether the oldest generation emptied.
    fn remove(&mut self, gen: u64) -> bool {
        let Some(i) = self.counts.iter().position(|&(g, _)| g == gen) else { return false };
        self.counts[i].1 -= 1;
        if self.counts[i].1 == 0 {
            self.counts.remove(i);
            return i == 0;
        }
        false
    }

    fn flushed(&self, gen: u64) -> bool {
        self.counts.front().is_none_or(|&(g, _)| g > gen)
    }
}

#[derive(Debug, Default)]
struct State {
    queue: Lanes,
    /// A wake-up is on its way, or the loop is taking: pushes stay quiet.
    scheduled: bool,
    /// The loop closed or the bus did: pushes are dropped, counted.
    closed: bool,
}

/// Counters of one inbox (relaxed: statistics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) wakes: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) lost_closed: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct InboxShared {
    state: Mutex<State>,
    /// Signalled when `pending` falls or the inbox closes.
    room: Condvar,
    room_lock: Mutex<()>,
    /// Accepted for this loop and not yet done with: in the bus's queues,
    /// here, or being run.
    pending: AtomicUsize,
    gens: Mutex<Gens>,
    pub(crate) capacity: usize,
    pub(crate) overflow: Overflow,
    pub(crate) loop_thread: u64,
    pub(crate) counters: Counters,
    read_fd: i32,
    write_fd: i32,
    fds_closed: AtomicBool,
    /// A flush waits on the loop: the `done` that empties the inbox wakes
    /// the loop even with nothing to take, so the flush sees it.
    flush_waiting: AtomicBool,
}

impl InboxShared {
    /// Called by the worker: queue `entry`, waking the loop if it was idle.
    fn wake(&self) {
        self.counters.wakes.fetch_add(1, Ordering::Relaxed);
        let byte = 1u8;
        // SAFETY: `write_fd` is the open, non-blocking write end of the
        // pipe this inbox owns (closed only in `Drop`), and `byte` is a
        // live one-byte buffer. A full pipe (EAGAIN) already holds a
        // wake-up, which is all a byte means.
        unsafe {
            libc::write(self.write_fd, (&byte as *const u8).cast(), 1);
        }
    }

    /// Called on the loop's own thread: queue `entry` without a wake-up;
    /// `true` when the inbox was idle (the caller schedules the loop's look).
    pub(crate) fn push_quiet(&self, entry: Entry) -> bool {
        let mut state = self.state.lock();
        if state.closed {
            drop(state);
            self.counters.lost_closed.fetch_add(1, Ordering::Relaxed);
            self.done([entry.gen()]);
            return false;
        }
        state.queue.push(entry);
        !std::mem::replace(&mut state.scheduled, true)
    }

    pub(crate) fn push(&self, entry: Entry) {
        let wake = {
            let mut state = self.state.lock();
            if state.closed {
                drop(state);
                self.counters.lost_closed.fetch_add(1, Ordering::Relaxed);
                self.done([entry.gen()]);
                return;
            }
            state.queue.push(entry);
            !std::mem::replace(&mut state.scheduled, true)
        };
        if wake {
            self.wake();
        }
    }

    /// Accepted events of these generations are done with (run, dropped or
    /// lost).
    pub(crate) fn done(&self, gens: impl IntoIterator<Item = u64>) {
        let (n, oldest_emptied) = {
            let mut g = self.gens.lock();
            let mut n = 0;
            let mut emptied = false;
            for gen in gens {
                emptied |= g.remove(gen);
                n += 1;
            }
            (n, emptied)
        };
        if n == 0 {
            return;
        }
        self.pending.fetch_sub(n, Ordering::SeqCst);
        // A flush waiting on the loop is woken when it may be over; the
        // loop's own `done`s are followed by its own look.
        if oldest_emptied
            && self.flush_waiting.load(Ordering::SeqCst)
            && current_ident() != self.loop_thread
        {
            self.wake();
        }
        let _guard = self.room_lock.lock();
        self.room.notify_all();
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Room for one more event under the bound: `Ok(())`, or why not:
    /// `Err(true)` means "drop the new one" (`Shed`), `Err(false)` "refuse
    /// it". `loop_closed` tells a thread waiting for room (`Block`) that the
    /// loop is gone: it stops waiting, closes the inbox (what waits in it is
    /// lost, counted) and counts its own event as lost too.
    pub(crate) fn admit(
        &self,
        py: Python<'_>,
        priority: Priority,
        loop_closed: impl Fn(Python<'_>) -> PyResult<bool>,
    ) -> PyResult<Result<(), bool>> {
        if self.pending() < self.capacity {
            return Ok(Ok(()));
        }
        match self.overflow {
            Overflow::Error => Ok(Err(false)),
            // As the engine's `Shed` does: the oldest waiting event of the
            // lowest priority below the new one's makes room (it is in
            // history, numbered, and counted, but no handler sees it); with
            // none waiting, the new event is the one dropped. What is still
            // on its way from another thread is not waiting here yet.
            Overflow::Shed => {
                let victim = self.state.lock().queue.shed_below(priority);
                match victim {
                    Some(victim) => {
                        let gen = victim.gen();
                        // Dropped with the GIL and no lock held: its Python
                        // references may run Python code.
                        drop(victim);
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        self.done([gen]);
                        Ok(Ok(()))
                    }
                    None => Ok(Err(true)),
                }
            }
            Overflow::Block if current_ident() == self.loop_thread => {
                // The loop's own thread must never wait for itself: it may
                // go past the bound by as much again (as a handler may in
                // the Rust bus), then it is refused.
                if self.pending() < self.capacity.saturating_mul(2) {
                    Ok(Ok(()))
                } else {
                    Ok(Err(false))
                }
            }
            Overflow::Block => {
                // Another thread waits for the loop to make room, without
                // the GIL, looking at signals every 50 ms so Ctrl-C reaches it.
                loop {
                    let room = py.detach(|| {
                        let mut guard = self.room_lock.lock();
                        if self.pending() >= self.capacity && !self.is_closed() {
                            self.room.wait_for(&mut guard, Duration::from_millis(50));
                        }
                        self.pending() < self.capacity || self.is_closed()
                    });
                    if room {
                        return Ok(Ok(()));
                    }
                    py.check_signals()?;
                    if loop_closed(py)? {
                        self.close();
                        self.counters.lost_closed.fetch_add(1, Ordering::Relaxed);
                        return Ok(Ok(()));
                    }
                }
            }
        }
    }

    /// Counts an accepted event in, in generation `gen` (the current one
    /// when `None`); returns its generation.
    pub(crate) fn accepted(&self, gen: Option<u64>) -> u64 {
        let mut g = self.gens.lock();
        let gen = gen.map_or(g.current, |p| p.min(g.current));
        g.add(gen);
        self.pending.fetch_add(1, Ordering::SeqCst);
        gen
    }

    /// Closes the inbox: what waits is dropped and counted as lost.
    fn close(&self) -> usize {
        let lost = {
            let mut state = self.state.lock();
            state.closed = true;
            state.queue.drain_all()
        };
        let n = lost.len();
        let gens: Vec<u64> = lost.iter().map(Entry::gen).collect();
        drop(lost);
        if n > 0 {
            self.counters.lost_closed.fetch_add(n as u64, Ordering::Relaxed);
            self.done(gens);
        } else {
            let _guard = self.room_lock.lock();
            self.room.notify_all();
        }
        n
    }
}

impl Drop for InboxShared {
    fn drop(&mut self) {
        if !self.fds_closed.swap(true, Ordering::SeqCst) {
            // SAFETY: both descriptors were opened by `wake_pipe` for
            // `Inbox::new` and are closed only here, once.
            unsafe {
                libc::close(self.read_fd);
                libc::close(self.write_fd);
            }
        }
    }
}

/// A non-blocking, close-on-exec pipe (`pipe` and `fcntl`, which every
/// Unix has; `pipe2` is not on macOS).
fn wake_pipe() -> std::io::Result<[i32; 2]> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid two-int buffer for `pipe` to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for fd in fds {
        // SAFETY: `fd` was just opened by `pipe` and is owned here; the
        // calls only read and set its flags.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0
                && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
                && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
        };
        if !ok {
            let error = std::io::Error::last_os_error();
            // SAFETY: both were opened above and are not used after this.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            return Err(error);
        }
    }
    Ok(fds)
}

/// An event loop's inbox (created by `Core.inbox`); see the module docs.
#[pyclass(frozen, module = "switchboard_bus._native")]
#[derive(Debug)]
pub struct Inbox {
    pub(crate) shared: Arc<InboxShared>,
    /// A weak reference to the loop (`weakref.ref(loop)`), if it takes one:
    /// a thread waiting for room stops when the loop is gone or closed.
    loop_ref: Option<Py<PyAny>>,
}

impl Inbox {
    /// Whether the loop this inbox is for is gone or closed (it will never
    /// make room again).
    pub(crate) fn loop_closed(&self, py: Python<'_>) -> PyResult<bool> {
        let Some(loop_ref) = &self.loop_ref else { return Ok(false) };
        let event_loop = loop_ref.bind(py).call0()?;
        if event_loop.is_none() {
            return Ok(true);
        }
        event_loop.call_method0(pyo3::intern!(py, "is_closed"))?.is_truthy()
    }
}

impl Inbox {
    pub(crate) fn new(
        capacity: usize,
        overflow: Overflow,
        loop_thread: u64,
        loop_ref: Option<Py<PyAny>>,
    ) -> PyResult<Inbox> {
        let fds = wake_pipe()
            .map_err(|e| PyOSError::new_err(format!("cannot create the wake-up pipe: {e}")))?;
        Ok(Inbox {
            shared: Arc::new(InboxShared {
                state: Mutex::new(State::default()),
                room: Condvar::new(),
                room_lock: Mutex::new(()),
                pending: AtomicUsize::new(0),
                gens: Mutex::new(Gens::default()),
                capacity,
                overflow,
                loop_thread,
                counters: Counters::default(),
                read_fd: fds[0],
                write_fd: fds[1],
                fds_closed: AtomicBool::new(false),
                flush_waiting: AtomicBool::new(false),
            }),
            loop_ref,
        })
    }
}

#[pymethods]
impl Inbox {
    /// The descriptor the loop watches (`loop.add_reader`).
    fn fileno(&self) -> i32 {
        self.shared.read_fd
    }

    /// Reads every wake-up byte (the loop calls it when the pipe is readable).
    fn clear_wake(&self) {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: `read_fd` is this inbox's open, non-blocking read end;
            // `buf` is a live buffer of the length given.
            let n = unsafe { libc::read(self.shared.read_fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 || (n as usize) < buf.len() {
                break;
            }
        }
    }

    /// Up to `max` entries, oldest first, each `(event, seq, [subscription,
    /// ...], generation)`; an empty list means the inbox was empty, and is
    /// now idle.
    fn take<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let taken: Vec<Entry> = {
            let mut state = self.shared.state.lock();
            let n = state.queue.len().min(max.max(1));
            if n == 0 {
                state.scheduled = false;
            }
            state.queue.take(n)
        };
        if !taken.is_empty() {
            self.shared.gens.lock().taken.extend(taken.iter().map(Entry::gen));
        }
        if !taken.is_empty() {
            self.shared.counters.batches.fetch_add(1, Ordering::Relaxed);
        }
        let out = PyList::empty(py);
        for entry in taken {
            match entry {
                Entry::Ready { event, seq, gen, index, matches, .. } => {
                    let subs = index.subs_of(py, matches.iter().map(|&m| m as usize))?;
                    out.append(ready_tuple(py, event.bind(py), seq, subs, gen)?)?
                }
                Entry::Routed { carried, matches } => {
                    let subs = carried.index.subs_of(py, matches.iter().map(|&m| m as usize))?;
                    out.append(ready_tuple(
                        py,
                        carried.event.bind(py),
                        carried.seq,
                        subs,
                        carried.gen,
                    )?)?;
                }
            }
        }
        Ok(out)
    }

    /// Whether a flush waits on the loop (see `flush_waiting`).
    fn set_flush_waiting(&self, waiting: bool) {
        self.shared.flush_waiting.store(waiting, Ordering::SeqCst);
    }

    /// Marks the `n` oldest taken entries as done with (they ran).
    fn done(&self, n: usize) {
        if n > 0 {
            let gens: Vec<u64> = {
                let mut g = self.shared.gens.lock();
                let n = n.min(g.taken.len());
                g.taken.drain(..n).collect()
            };
            self.shared.done(gens);
        }
    }

    /// Starts a flush: returns the generation it waits for.
    fn flush_begin(&self) -> u64 {
        let mut g = self.shared.gens.lock();
        let gen = g.current;
        g.current += 1;
        gen
    }

    /// Whether no event of generation `gen` or older is left.
    fn flushed(&self, gen: u64) -> bool {
        self.shared.gens.lock().flushed(gen)
    }

    /// Waiting here for the loop to take them.
    #[getter]
    fn queued(&self) -> usize {
        self.shared.state.lock().queue.len()
    }

    /// Accepted for this loop and not yet done with.
    #[getter]
    fn pending(&self) -> usize {
        self.shared.pending()
    }

    /// Whether the inbox is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Closes the inbox (its loop closed, or the bus did); returns how many
    /// waiting entries were dropped, counted as lost.
    fn close(&self) -> usize {
        self.shared.close()
    }

    /// `(wakes, batches, dropped, rejected, lost_closed)`.
    fn counters(&self) -> (u64, u64, u64, u64, u64) {
        let c = &self.shared.counters;
        (
            c.wakes.load(Ordering::Relaxed),
            c.batches.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
            c.rejected.load(Ordering::Relaxed),
            c.lost_closed.load(Ordering::Relaxed),
        )
    }
}
