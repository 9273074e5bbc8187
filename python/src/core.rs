//! The registry, the index, the publish sequence and history, and the bus
//! that carries events published without waiting.
//!
//! Every method runs with the GIL held, called from Python; the registry's
//! lock is never held across a call into Python or a wait.
//!
//! **Invariant:** no Python object is made, and no Python reference
//! dropped, while the registry's lock is held: under it only references
//! are copied (an increment) and Rust data. Making a Python object may run
//! the garbage collector, whose finalizers may call back into the bus (the
//! lock is not reentrant: a hang) or hand the GIL to a thread that then
//! waits for the lock holding it (a hang across threads).
//!
//! **Invariant:** an event's sequence number and the index it is routed
//! with are taken in one critical section, the same one a subscribe takes
//! its seam in: every event numbered below a subscription's seam was routed
//! without it, every event at or above it with it. A replay of history
//! below the seam therefore meets the live events with no gap and no
//! duplicate, and the plugin manager's hand-over cuts over at seams.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::PyTraverseError;
use serde::{Serialize, Serializer};
use switchboard::{Bus, BusBuilder, Event, Handler, Priority};
use switchboard_matcher::{Pattern, PatternSet};

use crate::inbox::{Entry, Inbox, InboxShared, Overflow};

/// The subscriptions as one routing of an event sees them: a pattern set
/// over the patterns that have subscribers, in first-seen order (so its
/// matches, which come in index order, are in the seed's dispatch order),
/// and each pattern's subscriptions in subscription order.
#[derive(Debug)]
pub(crate) struct Index {
    set: PatternSet,
    /// Each pattern's subscriptions: references only, taken under the
    /// registry's lock (which never makes a Python object).
    subs: Vec<Vec<Py<PyAny>>>,
    /// Each pattern's subscriptions as the tuple handed to Python, made on
    /// first use, outside every lock: an event matching one pattern reuses it.
    tuples: Vec<OnceLock<Py<PyTuple>>>,
}

impl Index {
    /// The subscriptions of the patterns at `matches` (ascending), in
    /// dispatch order: the pattern's own tuple when there is one.
    pub(crate) fn subs_of<'py>(
        &self,
        py: Python<'py>,
        matches: impl ExactSizeIterator<Item = usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut matches = matches;
        match matches.len() {
            0 => Ok(PyTuple::empty(py).into_any()),
            1 => {
                let m = matches.next().unwrap_or(0);
                let cell = &self.tuples[m];
                if let Some(tuple) = cell.get() {
                    return Ok(tuple.bind(py).clone().into_any());
                }
                // Never waits on the cell (another thread making the same
                // tuple, having released the GIL, would wait for this one):
                // the first tuple set is kept, a second one dropped.
                let tuple = PyTuple::new(py, self.subs[m].iter().map(|s| s.bind(py)))?;
                let _ = cell.set(tuple.clone().unbind());
                Ok(tuple.into_any())
            }
            _ => {
                let out = PyList::empty(py);
                for m in matches {
                    for sub in &self.subs[m] {
                        out.append(sub.bind(py))?;
                    }
                }
                Ok(out.into_any())
            }
        }
    }

    fn empty() -> Index {
        Index { set: PatternSet::empty(), subs: Vec::new(), tuples: Vec::new() }
    }
}

/// What a Rust event carries for Python: the Python event, its number, the
/// index it was routed with and the inbox of the loop it goes to.
#[derive(Debug)]
pub(crate) struct Carried {
    pub(crate) event: Py<PyAny>,
    pub(crate) seq: u64,
    /// Its flush generation (see `inbox.rs`).
    pub(crate) gen: u64,
    name: Box<str>,
    pub(crate) index: Arc<Index>,
    inbox: Arc<InboxShared>,
    delivered: AtomicBool,
}

impl Drop for Carried {
    fn drop(&mut self) {
        // The bus dropped it without dispatching it (it never does under
        // `Block`, which is what this bus uses; counted if it ever did).
        if !self.delivered.load(Ordering::Relaxed) {
            self.inbox.counters.lost_closed.fetch_add(1, Ordering::Relaxed);
            self.inbox.done([self.gen]);
        }
    }
}

/// The typed payload of the Rust events: never serialised on the
/// in-process path (its JSON form, should anything ask, is `null`).
#[derive(Clone, Debug)]
struct Payload(Arc<Carried>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Runs on the bus's worker, without the GIL: match the event's name and
/// hand the calls to its loop.
fn deliver(carried: &Arc<Carried>) {
    carried.delivered.store(true, Ordering::Relaxed);
    let matches: Vec<u32> = SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        carried.index.set.matches_into(&carried.name, &mut scratch);
        scratch.iter().map(|&i| i as u32).collect()
    });
    // Pushed even with no match: the loop counts it done, in its batch.
    carried.inbox.push(Entry::Routed { carried: carried.clone(), matches });
}

#[derive(Debug)]
struct PatternEntry {
    pattern: Pattern,
    subs: Vec<Py<PyAny>>,
}

#[derive(Debug)]
struct Recorded {
    seq: u64,
    event: Py<PyAny>,
    name: Box<str>,
}

#[derive(Debug)]
struct Registry {
    /// Every pattern ever subscribed, in first-seen order (the seed keeps
    /// a pattern's key after its last subscriber leaves, and so its place).
    patterns: Vec<PatternEntry>,
    by_text: HashMap<String, usize>,
    /// The index no longer reflects `patterns`: rebuilt on the next routing.
    dirty: bool,
    index: Arc<Index>,
    history: VecDeque<Recorded>,
    next_seq: u64,
}

impl Registry {
    /// The current index, rebuilt if stale; the replaced one is put in
    /// `dead` (dropped by the caller once the lock is released: dropping
    /// Python references may run Python code, which may call back).
    fn index(&mut self, py: Python<'_>, dead: &mut Dead) -> PyResult<Arc<Index>> {
        if self.dirty {
            let live: Vec<&PatternEntry> =
                self.patterns.iter().filter(|p| !p.subs.is_empty()).collect();
            let set = PatternSet::from_patterns(live.iter().map(|p| p.pattern.clone()));
            // References only: no Python object is made under the lock.
            let subs: Vec<Vec<Py<PyAny>>> =
                live.iter().map(|p| p.subs.iter().map(|s| s.clone_ref(py)).collect()).collect();
            let tuples = subs.iter().map(|_| OnceLock::new()).collect();
            dead.index =
                Some(std::mem::replace(&mut self.index, Arc::new(Index { set, subs, tuples })));
            self.dirty = false;
        }
        Ok(self.index.clone())
    }

    /// Numbers `event`, records it, and returns its number and the index
    /// to route it with (one critical section: see the module docs).
    fn record(
        &mut self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        name: &str,
        keep: usize,
        dead: &mut Dead,
    ) -> PyResult<(u64, Arc<Index>)> {
        let index = self.index(py, dead)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        if keep > 0 {
            if self.history.len() == keep {
                dead.recorded = self.history.pop_front();
            }
            self.history.push_back(Recorded {
                seq,
                event: event.clone().unbind(),
                name: name.into(),
            });
        }
        Ok((seq, index))
    }
}

/// What a registry operation replaced, dropped after its lock is released.
#[derive(Debug, Default)]
struct Dead {
    index: Option<Arc<Index>>,
    recorded: Option<Recorded>,
}

/// The engine behind one `EventBus`.
#[pyclass(frozen, module = "switchboard_bus._native")]
#[derive(Debug)]
pub struct Core {
    registry: Mutex<Registry>,
    bus: Bus,
    history_size: usize,
    capacity: usize,
    overflow: Overflow,
}

fn check_pattern(pattern: &str) -> PyResult<Pattern> {
    if pattern.is_empty() {
        return Err(PyValueError::new_err("invalid pattern '': a pattern must not be empty"));
    }
    if pattern.contains('\0') {
        return Err(PyValueError::new_err(format!(
            "invalid pattern {pattern:?}: a pattern must not contain a NUL character"
        )));
    }
    Pattern::new(pattern).map_err(|e| {
        let shown: String = pattern.chars().take(40).collect();
        PyValueError::new_err(format!("invalid pattern {shown:?}...: {e}"))
    })
}

fn priority_of(p: i64) -> PyResult<Priority> {
    match p {
        0 => Ok(Priority::Low),
        1 => Ok(Priority::Normal),
        2 => Ok(Priority::High),
        _ => Err(PyValueError::new_err(format!(
            "invalid priority {p}: expected EventPriority.LOW (0), NORMAL (1) or HIGH (2)"
        ))),
    }
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (history_size, capacity, overflow, workers))]
    fn new(history_size: usize, capacity: usize, overflow: &str, workers: usize) -> PyResult<Core> {
        let overflow = Overflow::parse(overflow).ok_or_else(|| {
            PyValueError::new_err(format!("invalid overflow policy {overflow:?}"))
        })?;
        if capacity == 0 || capacity > BusBuilder::MAX_CAPACITY / 2 - 16 {
            return Err(PyValueError::new_err(format!(
                "invalid capacity {capacity}: expected 1 to {}",
                BusBuilder::MAX_CAPACITY / 2 - 16
            )));
        }
        if workers == 0 || workers > 64 {
            return Err(PyValueError::new_err(format!(
                "invalid workers {workers}: expected 1 to 64"
            )));
        }
        // The bound is the loops' backlog (see `Inbox`); the bus's queues
        // only carry events from other threads to the worker, which empties
        // them into the inboxes without ever waiting, so they stay small
        // (each is allocated whole).
        let bus = Bus::builder()
            .workers(workers)
            .capacity(capacity.clamp(64, 8192))
            .history_size(0)
            .name("switchboard-py")
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the bus: {e}")))?;
        let route = Handler::sync(|event: &Event| {
            if let Some(payload) = event.downcast_ref::<Payload>() {
                deliver(&payload.0);
            }
            Ok(())
        });
        bus.subscribe("*", route, "switchboard_bus")
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the bus: {e}")))?;
        Ok(Core {
            registry: Mutex::new(Registry {
                patterns: Vec::new(),
                by_text: HashMap::new(),
                dirty: true,
                index: Arc::new(Index::empty()),
                history: VecDeque::new(),
                next_seq: 0,
            }),
            bus,
            history_size,
            capacity,
            overflow,
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never blocks: a collection that finds the registry busy sees no
        // edges this time.
        let Some(reg) = self.registry.try_lock() else { return Ok(()) };
        for entry in &reg.patterns {
            for sub in &entry.subs {
                visit.call(sub)?;
            }
        }
        // The index's references are this object's only while no event in
        // flight shares it.
        if Arc::strong_count(&reg.index) == 1 {
            for subs in &reg.index.subs {
                for sub in subs {
                    visit.call(sub)?;
                }
            }
            for tuple in reg.index.tuples.iter().filter_map(OnceLock::get) {
                visit.call(tuple)?;
            }
        }
        for recorded in &reg.history {
            visit.call(&recorded.event)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let (patterns, history, index) = {
            let mut reg = self.registry.lock();
            reg.by_text.clear();
            reg.dirty = true;
            (
                std::mem::take(&mut reg.patterns),
                std::mem::take(&mut reg.history),
                std::mem::replace(&mut reg.index, Arc::new(Index::empty())),
            )
        };
        // Dropped outside the lock: a drop may run Python code that calls back.
        drop((patterns, history, index));
    }

    /// A new inbox for the event loop running on the thread `loop_thread`
    /// (its `threading.get_ident()`); `loop_ref`, a weak reference to the
    /// loop, lets a thread waiting for room see it close.
    #[pyo3(signature = (loop_thread, loop_ref=None))]
    fn inbox(&self, loop_thread: u64, loop_ref: Option<Py<PyAny>>) -> PyResult<Inbox> {
        Inbox::new(self.capacity, self.overflow, loop_thread, loop_ref)
    }

    /// Adds `sub` (a `Subscription`) under `pattern`; returns the seam (the
    /// number of the first event routed with it) and up to `replay` of the
    /// latest matching events in history, oldest first.
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        pattern: &str,
        sub: Py<PyAny>,
        replay: usize,
    ) -> PyResult<(u64, Bound<'py, PyList>)> {
        let compiled = check_pattern(pattern)?;
        let mut reg = self.registry.lock();
        // References and numbers only under the lock; the list is made
        // once it is released (see `subscriptions`).
        let mut found: Vec<(Py<PyAny>, u64)> = if replay > 0 {
            reg.history
                .iter()
                .rev()
                .filter(|r| compiled.is_match(&r.name))
                .take(replay)
                .map(|r| (r.event.clone_ref(py), r.seq))
                .collect()
        } else {
            Vec::new()
        };
        found.reverse();
        let at = match reg.by_text.get(pattern) {
            Some(&at) => at,
            None => {
                let at = reg.patterns.len();
                reg.patterns.push(PatternEntry { pattern: compiled, subs: Vec::new() });
                reg.by_text.insert(pattern.to_owned(), at);
                at
            }
        };
        reg.patterns[at].subs.push(sub);
        reg.dirty = true;
        let seam = reg.next_seq;
        drop(reg);
        let replayed = PyList::empty(py);
        for (event, seq) in found {
            replayed.append((event, seq))?;
        }
        Ok((seam, replayed))
    }

    /// Removes `sub` from `pattern`; whether it was there.
    fn remove(&self, pattern: &str, sub: &Bound<'_, PyAny>) -> bool {
        let removed = {
            let mut reg = self.registry.lock();
            let Some(&at) = reg.by_text.get(pattern) else { return false };
            let subs = &mut reg.patterns[at].subs;
            let Some(i) = subs.iter().position(|s| s.as_ptr() == sub.as_ptr()) else {
                return false;
            };
            let removed = subs.remove(i);
            reg.dirty = true;
            removed
        };
        // Dropped outside the lock: a drop may run Python code that calls back.
        drop(removed);
        true
    }

    /// The patterns with subscribers, in first-seen order, each with its
    /// subscriptions in subscription order.
    fn subscriptions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Copied out under the lock as Rust data and references, turned
        // into Python objects after: making a Python object may run the
        // garbage collector, and so finalizers that call back into the bus
        // (the lock is not reentrant) or let another thread take the GIL.
        let copied: Vec<(String, Vec<Py<PyAny>>)> = {
            let reg = self.registry.lock();
            let by_index: HashMap<usize, &str> =
                reg.by_text.iter().map(|(t, &i)| (i, t.as_str())).collect();
            reg.patterns
                .iter()
                .enumerate()
                .filter(|(_, entry)| !entry.subs.is_empty())
                .map(|(i, entry)| {
                    (by_index[&i].to_owned(), entry.subs.iter().map(|s| s.clone_ref(py)).collect())
                })
                .collect()
        };
        let out = PyList::empty(py);
        for (pattern, subs) in copied {
            out.append((pattern, PyList::new(py, subs)?))?;
        }
        Ok(out)
    }

    /// The awaited path: numbers and records `event`, and returns its
    /// number and the subscriptions its name matches, in dispatch order.
    fn route<'py>(
        &self,
        py: Python<'py>,
        event: &Bound<'py, PyAny>,
        name: &str,
    ) -> PyResult<(u64, Bound<'py, PyAny>)> {
        let mut dead = Dead::default();
        let recorded = self.registry.lock().record(py, event, name, self.history_size, &mut dead);
        drop(dead);
        let (seq, index) = recorded?;
        let subs = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            index.set.matches_into(name, &mut scratch);
            index.subs_of(py, scratch.iter().copied())
        })?;
        Ok((seq, subs))
    }

    /// The non-waiting path: numbers and records `event` and hands it to
    /// the bus, whose worker matches it and queues its calls in `inbox`.
    /// Returns its number, `-1` when the bound refused it, `-2` when `Shed`
    /// dropped it at once (it is in history, numbered, and counted). `gen`:
    /// the flush generation of the event a handler publishing it handles.
    /// `local`: called on the loop's own thread (matched here, no worker).
    #[pyo3(signature = (event, inbox, local, gen=None))]
    fn publish_nowait(
        &self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        inbox: &Inbox,
        local: bool,
        gen: Option<u64>,
    ) -> PyResult<(i64, bool)> {
        let name_obj = event.getattr(pyo3::intern!(py, "name"))?;
        let name = name_obj.cast::<pyo3::types::PyString>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "Event.name must be a str, not {}",
                name_obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
        let name = name.to_cow()?;
        let name: &str = &name;
        let priority =
            priority_of(event.getattr(pyo3::intern!(py, "priority"))?.extract::<i64>()?)?;
        let shared = &inbox.shared;
        if self.bus.is_closed() {
            return Err(PyRuntimeError::new_err("the bus is closed"));
        }
        if shared.is_closed() {
            return Err(PyRuntimeError::new_err("the event loop of this inbox is closed"));
        }
        match shared.admit(py, |py| inbox.loop_closed(py))? {
            Ok(()) => {}
            Err(false) => {
                shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                return Ok((-1, false));
            }
            Err(true) => {
                let mut dead = Dead::default();
                let recorded =
                    self.registry.lock().record(py, event, name, self.history_size, &mut dead);
                drop(dead);
                recorded?;
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok((-2, false));
            }
        }
        if shared.is_closed() {
            return Err(PyRuntimeError::new_err(
                "the bus or the event loop closed while waiting for room",
            ));
        }
        let mut dead = Dead::default();
        let recorded = self.registry.lock().record(py, event, name, self.history_size, &mut dead);
        drop(dead);
        let (seq, index) = recorded?;
        let gen = shared.accepted(gen);
        if local {
            // From the loop's own thread: matched here and queued for the
            // loop (no thread to cross, no wake-up to send); the caller
            // schedules the dispatcher when the inbox was idle.
            let matches: Vec<u32> = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                index.set.matches_into(name, &mut scratch);
                scratch.iter().map(|&i| i as u32).collect()
            });
            let entry = Entry::Ready { event: event.clone().unbind(), seq, gen, index, matches };
            let idle = shared.push_quiet(entry);
            return Ok((seq as i64, idle));
        }
        let carried = Arc::new(Carried {
            event: event.clone().unbind(),
            seq,
            gen,
            name: name.into(),
            index,
            inbox: shared.clone(),
            delivered: AtomicBool::new(false),
        });
        let rust_event = Event::typed("py", Payload(carried), "python").with_priority(priority);
        // From another thread: it may wait, briefly, for the worker to make
        // room in the bus's queues; never with the GIL.
        match py.detach(|| self.bus.publish(rust_event)) {
            Ok(_) => Ok((seq as i64, false)),
            // The event is dropped with the error, and counted out of
            // `pending` (as lost) by `Carried`'s `Drop`.
            Err(_) => Err(PyRuntimeError::new_err("the bus is closed")),
        }
    }

    /// The latest events, most recent first: at most `count`, only those
    /// whose name matches `pattern` when one is given.
    #[pyo3(signature = (count=None, pattern=None))]
    fn history<'py>(
        &self,
        py: Python<'py>,
        count: Option<usize>,
        pattern: Option<&str>,
    ) -> PyResult<Bound<'py, PyList>> {
        let compiled = pattern.map(check_pattern).transpose()?;
        let events: Vec<Py<PyAny>> = {
            let reg = self.registry.lock();
            reg.history
                .iter()
                .rev()
                .filter(|r| compiled.as_ref().is_none_or(|p| p.is_match(&r.name)))
                .take(count.unwrap_or(usize::MAX))
                .map(|r| r.event.clone_ref(py))
                .collect()
        };
        PyList::new(py, events)
    }

    /// The number the next event will get.
    #[getter]
    fn sequence(&self) -> u64 {
        self.registry.lock().next_seq
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.bus.is_closed()
    }

    /// The bus's own counters: `(published, dispatched, dropped)`.
    fn bus_stats(&self) -> (u64, u64, u64) {
        let s = self.bus.stats();
        (s.published, s.dispatched, s.dropped)
    }

    /// Stops the bus: what its queues hold is delivered to the inboxes,
    /// then the worker is joined, without the GIL (the worker never takes
    /// it, so this cannot deadlock with Python).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.bus.shutdown());
    }
}
