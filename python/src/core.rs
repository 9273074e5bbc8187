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
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::PyTraverseError;
use serde::{Serialize, Serializer};
use switchboard::{Bus, BusBuilder, Event, Handler, Priority};
use switchboard_matcher::{Pattern, PatternSet};

use crate::inbox::{Entry, Inbox, InboxShared, Overflow};

/// How many patterns seen since the pattern set was last compiled are
/// tried one by one, before the set is compiled again over all of them: a
/// new pattern costs a compile of the whole set only once in this many.
const RECENT_MAX: usize = 64;

/// One pattern's subscriptions, in subscription order, with their plugin
/// names. Copy-on-write: indexes share it until the pattern's subscriptions
/// change, so a subscribe or an unsubscribe copies one pattern's list, not
/// every pattern's.
#[derive(Debug, Default)]
pub(crate) struct Subs {
    /// References only, taken under the registry's lock (which never makes
    /// a Python object).
    subs: Vec<Py<PyAny>>,
    names: Vec<Arc<str>>,
    /// The subscriptions as the tuple handed to Python, made on first use,
    /// outside every lock: an event matching one pattern reuses it.
    tuple: OnceLock<Py<PyTuple>>,
}

impl Subs {
    /// A copy with `f` applied (references only: no Python object made).
    fn edited(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Vec<Py<PyAny>>, &mut Vec<Arc<str>>),
    ) -> Subs {
        let mut subs: Vec<Py<PyAny>> = self.subs.iter().map(|s| s.clone_ref(py)).collect();
        let mut names = self.names.clone();
        f(&mut subs, &mut names);
        Subs { subs, names, tuple: OnceLock::new() }
    }
}

/// How many patterns' lists share one chunk of `Lists`.
const CHUNK: usize = 64;

/// Every pattern's list, in chunks shared copy-on-write: a copy costs one
/// reference count per chunk, a change copies one chunk.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lists {
    chunks: Vec<Arc<Vec<Arc<Subs>>>>,
    len: usize,
}

impl Lists {
    fn get(&self, at: usize) -> &Arc<Subs> {
        &self.chunks[at / CHUNK][at % CHUNK]
    }

    fn push(&mut self, subs: Arc<Subs>) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let last = self.chunks.last_mut().expect("a chunk was just pushed");
        Arc::make_mut(last).push(subs);
        self.len += 1;
    }

    /// The list at `at`, to edit in place, when no index (nor any other
    /// chunk) shares it.
    fn get_mut(&mut self, at: usize) -> Option<&mut Subs> {
        let chunk = Arc::get_mut(&mut self.chunks[at / CHUNK])?;
        Arc::get_mut(&mut chunk[at % CHUNK])
    }

    /// Puts `subs` at `at`; returns what was there (for the caller to drop
    /// outside the lock).
    fn replace(&mut self, at: usize, subs: Arc<Subs>) -> Arc<Subs> {
        std::mem::replace(&mut Arc::make_mut(&mut self.chunks[at / CHUNK])[at % CHUNK], subs)
    }
}

/// The subscriptions as one routing of an event sees them: every pattern
/// ever subscribed, in first-seen order (so matches, which come in index
/// order, are in the seed's dispatch order), and each pattern's
/// subscriptions in subscription order. The first patterns are compiled
/// into one set; those seen since (at most `RECENT_MAX`) are tried one by
/// one, after it (their indices follow its).
#[derive(Debug)]
pub(crate) struct Index {
    main: Arc<PatternSet>,
    recent: Arc<[Pattern]>,
    subs: Lists,
}

impl Index {
    /// The indices of the patterns with subscribers that match `name`,
    /// ascending, into `out` (cleared first).
    pub(crate) fn matches_into(&self, name: &str, out: &mut Vec<usize>) {
        self.main.matches_into(name, out);
        let base = self.main.len();
        for (i, pattern) in self.recent.iter().enumerate() {
            if pattern.is_match(name) {
                out.push(base + i);
            }
        }
        out.retain(|&m| !self.subs.get(m).subs.is_empty());
    }

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
                let cell = &self.subs.get(m).tuple;
                if let Some(tuple) = cell.get() {
                    return Ok(tuple.bind(py).clone().into_any());
                }
                // Never waits on the cell (another thread making the same
                // tuple, having released the GIL, would wait for this one):
                // the first tuple set is kept, a second one dropped.
                let tuple = PyTuple::new(py, self.subs.get(m).subs.iter().map(|s| s.bind(py)))?;
                let _ = cell.set(tuple.clone().unbind());
                Ok(tuple.into_any())
            }
            _ => {
                let out = PyList::empty(py);
                for m in matches {
                    for sub in &self.subs.get(m).subs {
                        out.append(sub.bind(py))?;
                    }
                }
                Ok(out.into_any())
            }
        }
    }

    fn empty() -> Index {
        Index { main: Arc::new(PatternSet::empty()), recent: Arc::from([]), subs: Lists::default() }
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
    pub(crate) priority: Priority,
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

/// The indices of `index`'s patterns with subscribers that match `name`.
fn matched(index: &Index, name: &str) -> Vec<u32> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        index.matches_into(name, &mut scratch);
        scratch.iter().map(|&i| i as u32).collect()
    })
}

/// Runs on the bus's worker, without the GIL: match the event's name and
/// hand the calls to its loop.
fn deliver(carried: &Arc<Carried>) {
    carried.delivered.store(true, Ordering::Relaxed);
    let matches = matched(&carried.index, &carried.name);
    // Pushed even with no match: the loop counts it done, in its batch.
    carried.inbox.push(Entry::Routed { carried: carried.clone(), matches });
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
    /// a pattern's key after its last subscriber leaves, and so its place),
    /// and each one's subscriptions.
    patterns: Vec<Pattern>,
    subs: Lists,
    by_text: HashMap<Box<str>, usize>,
    /// For each plugin name, the patterns it has subscriptions under (and
    /// how many there): what unsubscribing by name looks at.
    by_plugin: HashMap<Arc<str>, BTreeMap<usize, usize>>,
    /// How many subscriptions there are.
    count: usize,
    /// The compiled set over `patterns[..main.len()]`, and the later ones.
    main: Arc<PatternSet>,
    recent: Arc<[Pattern]>,
    /// `patterns` grew since `recent` was taken.
    grown: bool,
    /// The index no longer reflects the subscriptions: made again on the
    /// next routing.
    dirty: bool,
    index: Arc<Index>,
    history: VecDeque<Recorded>,
    next_seq: u64,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            patterns: Vec::new(),
            subs: Lists::default(),
            by_text: HashMap::new(),
            by_plugin: HashMap::new(),
            count: 0,
            main: Arc::new(PatternSet::empty()),
            recent: Arc::from([]),
            grown: false,
            dirty: false,
            index: Arc::new(Index::empty()),
            history: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// The current index, made again if stale; the replaced one is put in
    /// `dead` (dropped by the caller once the lock is released: dropping
    /// Python references may run Python code, which may call back). Costs
    /// one reference count per chunk of patterns, plus, once in
    /// `RECENT_MAX` new patterns, a compile of the pattern set.
    fn index(&mut self, dead: &mut Dead) -> Arc<Index> {
        if self.dirty {
            if self.grown {
                if self.patterns.len() - self.main.len() > RECENT_MAX {
                    self.main = Arc::new(PatternSet::from_patterns(self.patterns.iter().cloned()));
                }
                self.recent = self.patterns[self.main.len()..].iter().cloned().collect();
                self.grown = false;
            }
            let index = Index {
                main: self.main.clone(),
                recent: self.recent.clone(),
                subs: self.subs.clone(),
            };
            dead.index = Some(std::mem::replace(&mut self.index, Arc::new(index)));
            self.dirty = false;
        }
        self.index.clone()
    }

    /// Numbers `event`, records it, and returns its number and the index
    /// to route it with (one critical section: see the module docs).
    fn record(
        &mut self,
        event: &Bound<'_, PyAny>,
        name: &str,
        keep: usize,
        dead: &mut Dead,
    ) -> (u64, Arc<Index>) {
        let index = self.index(dead);
        let seq = self.next_seq;
        self.next_seq += 1;
        if keep > 0 {
            if self.history.len() >= keep {
                dead.recorded = self.history.pop_front();
            }
            self.history.push_back(Recorded {
                seq,
                event: event.clone().unbind(),
                name: name.into(),
            });
        }
        (seq, index)
    }

    /// The interned plugin name.
    fn plugin(&mut self, name: &str) -> Arc<str> {
        match self.by_plugin.get_key_value(name) {
            Some((interned, _)) => interned.clone(),
            None => {
                let interned: Arc<str> = name.into();
                self.by_plugin.insert(interned.clone(), BTreeMap::new());
                interned
            }
        }
    }

    /// Replaces pattern `at`'s subscriptions with an edited copy; the old
    /// list goes to `dead`.
    fn edit(
        &mut self,
        py: Python<'_>,
        at: usize,
        dead: &mut Dead,
        f: impl FnOnce(&mut Vec<Py<PyAny>>, &mut Vec<Arc<str>>),
    ) {
        self.dirty = true;
        // Not shared (nothing routed since the last change): edited in place,
        // so a run of subscribes to one pattern costs one copy, not one each.
        if let Some(subs) = self.subs.get_mut(at) {
            if let Some(tuple) = subs.tuple.take() {
                dead.tuples.push(tuple);
            }
            f(&mut subs.subs, &mut subs.names);
            return;
        }
        let edited = Arc::new(self.subs.get(at).edited(py, f));
        dead.subs.push(self.subs.replace(at, edited));
    }
}

/// What a registry operation replaced, dropped after its lock is released.
#[derive(Debug, Default)]
struct Dead {
    index: Option<Arc<Index>>,
    recorded: Option<Recorded>,
    subs: Vec<Arc<Subs>>,
    tuples: Vec<Py<PyTuple>>,
    removed: Option<Py<PyAny>>,
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
    /// `history_size`: `None` keeps every event (the seed's `deque` with
    /// no `maxlen`).
    #[new]
    #[pyo3(signature = (history_size, capacity, overflow, workers))]
    fn new(
        history_size: Option<usize>,
        capacity: usize,
        overflow: &str,
        workers: usize,
    ) -> PyResult<Core> {
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
            registry: Mutex::new(Registry::new()),
            bus,
            history_size: history_size.unwrap_or(usize::MAX),
            capacity,
            overflow,
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never blocks: a collection that finds the registry busy sees no
        // edges this time.
        let Some(reg) = self.registry.try_lock() else { return Ok(()) };
        // What is this object's alone: the registry's lists, and the
        // index's while no event in flight holds the index; a chunk, or a
        // list, shared with anything else is not (its references are
        // someone else's too).
        let index_ours = Arc::strong_count(&reg.index) == 1;
        let visit_subs = |subs: &Subs| -> Result<(), PyTraverseError> {
            for sub in &subs.subs {
                visit.call(sub)?;
            }
            if let Some(tuple) = subs.tuple.get() {
                visit.call(tuple)?;
            }
            Ok(())
        };
        for (c, mine) in reg.subs.chunks.iter().enumerate() {
            let theirs = if index_ours { reg.index.subs.chunks.get(c) } else { None };
            let shared = theirs.is_some_and(|t| Arc::ptr_eq(t, mine));
            let mine_ours = Arc::strong_count(mine) == 1 + usize::from(shared);
            let theirs_ours = theirs.filter(|t| !shared && Arc::strong_count(t) == 1);
            for (k, subs) in mine.iter().enumerate() {
                if !mine_ours {
                    break;
                }
                let also =
                    theirs_ours.is_some_and(|t| t.get(k).is_some_and(|s| Arc::ptr_eq(s, subs)));
                if Arc::strong_count(subs) == 1 + usize::from(also) {
                    visit_subs(subs)?;
                }
            }
            if let Some(theirs) = theirs_ours {
                for (k, subs) in theirs.iter().enumerate() {
                    let in_mine = mine.get(k).is_some_and(|s| Arc::ptr_eq(s, subs));
                    if !in_mine && Arc::strong_count(subs) == 1 {
                        visit_subs(subs)?;
                    }
                }
            }
        }
        for recorded in &reg.history {
            visit.call(&recorded.event)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let cleared = {
            let mut reg = self.registry.lock();
            std::mem::replace(&mut *reg, Registry::new())
        };
        // Dropped outside the lock: a drop may run Python code that calls back.
        drop(cleared);
    }

    /// A new inbox for the event loop running on the thread `loop_thread`
    /// (its `threading.get_ident()`); `loop_ref`, a weak reference to the
    /// loop, lets a thread waiting for room see it close.
    #[pyo3(signature = (loop_thread, loop_ref=None))]
    fn inbox(&self, loop_thread: u64, loop_ref: Option<Py<PyAny>>) -> PyResult<Inbox> {
        Inbox::new(self.capacity, self.overflow, loop_thread, loop_ref)
    }

    /// Adds `sub` (a `Subscription` of `plugin`) under `pattern`; returns
    /// the seam (the number of the first event routed with it) and up to
    /// `replay` of the latest matching events in history, oldest first.
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        pattern: &str,
        sub: Py<PyAny>,
        plugin: &str,
        replay: usize,
    ) -> PyResult<(u64, Bound<'py, PyList>)> {
        let compiled = check_pattern(pattern)?;
        let mut dead = Dead::default();
        let mut reg = self.registry.lock();
        // References and numbers only under the lock; the list is made
        // once it is released (see the module docs).
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
                reg.patterns.push(compiled);
                reg.subs.push(Arc::new(Subs::default()));
                reg.by_text.insert(pattern.into(), at);
                reg.grown = true;
                at
            }
        };
        let plugin = reg.plugin(plugin);
        *reg.by_plugin.get_mut(&plugin).expect("interned").entry(at).or_insert(0) += 1;
        reg.edit(py, at, &mut dead, |subs, names| {
            subs.push(sub);
            names.push(plugin);
        });
        reg.count += 1;
        let seam = reg.next_seq;
        drop(reg);
        drop(dead);
        let replayed = PyList::empty(py);
        for (event, seq) in found {
            replayed.append((event, seq))?;
        }
        Ok((seam, replayed))
    }

    /// Removes `sub` from `pattern`; whether it was there.
    fn remove(&self, py: Python<'_>, pattern: &str, sub: &Bound<'_, PyAny>) -> bool {
        let mut dead = Dead::default();
        {
            let mut reg = self.registry.lock();
            let Some(&at) = reg.by_text.get(pattern) else { return false };
            let Some(i) = reg.subs.get(at).subs.iter().position(|s| s.as_ptr() == sub.as_ptr())
            else {
                return false;
            };
            let plugin = reg.subs.get(at).names[i].clone();
            let mut removed = None;
            reg.edit(py, at, &mut dead, |subs, names| {
                removed = Some(subs.remove(i));
                names.remove(i);
            });
            dead.removed = removed;
            reg.count -= 1;
            if let Some(patterns) = reg.by_plugin.get_mut(&plugin) {
                if let Some(n) = patterns.get_mut(&at) {
                    *n -= 1;
                    if *n == 0 {
                        patterns.remove(&at);
                    }
                }
                if patterns.is_empty() {
                    reg.by_plugin.remove(&plugin);
                }
            }
        }
        // Dropped outside the lock: a drop may run Python code that calls back.
        drop(dead);
        true
    }

    /// `plugin`'s subscriptions, under `pattern` only when one is given,
    /// in dispatch order: as many steps as it has, whatever the others.
    #[pyo3(signature = (plugin, pattern=None))]
    fn of_plugin<'py>(
        &self,
        py: Python<'py>,
        plugin: &str,
        pattern: Option<&str>,
    ) -> PyResult<Bound<'py, PyList>> {
        let found: Vec<Py<PyAny>> = {
            let reg = self.registry.lock();
            let Some(under) = reg.by_plugin.get(plugin) else { return Ok(PyList::empty(py)) };
            let only = match pattern {
                Some(p) => match reg.by_text.get(p) {
                    Some(&at) => Some(at),
                    None => return Ok(PyList::empty(py)),
                },
                None => None,
            };
            let mut found = Vec::new();
            for &at in under.keys().filter(|&&at| only.is_none_or(|o| o == at)) {
                let subs = reg.subs.get(at);
                for (sub, name) in subs.subs.iter().zip(&subs.names) {
                    if &**name == plugin {
                        found.push(sub.clone_ref(py));
                    }
                }
            }
            found
        };
        PyList::new(py, found)
    }

    /// The seed's `get_subscriptions`: `{pattern: [plugin name, ...]}` in
    /// first-seen order, only `plugin`'s when one is given (as many steps
    /// as it has subscriptions).
    #[pyo3(signature = (plugin=None))]
    fn names<'py>(&self, py: Python<'py>, plugin: Option<&str>) -> PyResult<Bound<'py, PyDict>> {
        let copied: Vec<(String, Vec<Arc<str>>)> = {
            let reg = self.registry.lock();
            let pick = |at: usize| -> Option<(String, Vec<Arc<str>>)> {
                let subs = reg.subs.get(at);
                let names: Vec<Arc<str>> = subs
                    .names
                    .iter()
                    .filter(|n| plugin.is_none_or(|p| &***n == p))
                    .cloned()
                    .collect();
                (!names.is_empty()).then(|| (reg.patterns[at].as_str().to_owned(), names))
            };
            match plugin {
                Some(p) => reg
                    .by_plugin
                    .get(p)
                    .map(|under| under.keys().filter_map(|&at| pick(at)).collect())
                    .unwrap_or_default(),
                None => (0..reg.patterns.len()).filter_map(pick).collect(),
            }
        };
        let out = PyDict::new(py);
        for (pattern, names) in copied {
            out.set_item(pattern, PyList::new(py, names.iter().map(|n| &**n))?)?;
        }
        Ok(out)
    }

    /// How many subscriptions there are.
    #[getter]
    fn count(&self) -> usize {
        self.registry.lock().count
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
        let (seq, index) = self.registry.lock().record(event, name, self.history_size, &mut dead);
        drop(dead);
        let subs = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            index.matches_into(name, &mut scratch);
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
        match shared.admit(py, priority, |py| inbox.loop_closed(py))? {
            Ok(()) => {}
            Err(false) => {
                shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                return Ok((-1, false));
            }
            Err(true) => {
                let mut dead = Dead::default();
                self.registry.lock().record(event, name, self.history_size, &mut dead);
                drop(dead);
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
        let (seq, index) = self.registry.lock().record(event, name, self.history_size, &mut dead);
        drop(dead);
        let gen = shared.accepted(gen);
        if local {
            // From the loop's own thread: matched here and queued for the
            // loop (no thread to cross, no wake-up to send); the caller
            // schedules the dispatcher when the inbox was idle.
            let matches = matched(&index, name);
            let entry =
                Entry::Ready { event: event.clone().unbind(), seq, gen, priority, index, matches };
            let idle = shared.push_quiet(entry);
            return Ok((seq as i64, idle));
        }
        let carried = Arc::new(Carried {
            event: event.clone().unbind(),
            seq,
            gen,
            priority,
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
