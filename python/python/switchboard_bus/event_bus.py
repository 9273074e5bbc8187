"""The seed's ``EventBus``, on the switchboard engine.

Everything the seed's bus does, with the same signatures, log lines and
statistics, plus:

* ``publish_nowait(event)`` and ``await flush()``: the event goes through the
  engine's queue and worker thread, which matches it (without the GIL) and
  hands its calls to the event loop in batches, one wake-up per batch;
* ``subscribe(..., replay=n)``: a late joiner first gets the last ``n``
  matching events from history, with no gap and no duplicate at the seam;
* a bound on what waits for a loop, with the engine's overflow policies
  (``Overflow.BLOCK``, ``ERROR``, ``SHED``) and every drop counted;
* ``engine_stats()``, ``close()`` and ``aclose()``.

>>> import asyncio
>>> from switchboard_bus import Event, EventBus
>>> async def main() -> list[str]:
...     bus = EventBus()
...     seen: list[str] = []
...     async def on_trivia(event: Event) -> None:
...         seen.append(event.name)
...     bus.subscribe('trivia.*', on_trivia, 'stats')
...     await bus.publish(Event('trivia.started', {'question': '2+2?'}, 'trivia'))
...     bus.close()
...     return seen
>>> asyncio.run(main())
['trivia.started']
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import enum
import inspect
import logging
import sys
import threading
import weakref
from typing import Any, Awaitable, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

from . import _native
from .event import Event, EventPriority

__all__ = ["EventBus", "Handler", "Overflow", "QueueFull", "Subscription"]

#: A handler: a coroutine function of the event, or a plain callable of it
#: (whatever awaitable a plain callable returns is awaited too).
Handler = Callable[[Event], Union[Awaitable[Any], Any]]

# What logs the bus's lines: a logger, or an adapter of one (any object with
# their ``debug``, ``error`` and ``warning`` methods is taken too).
_Logger = Union[logging.Logger, "logging.LoggerAdapter[Any]"]

# A sequence number no event reaches: "no cut".
_NEVER = 1 << 62

# Set in the context the dispatcher of a loop runs handlers in (and so in
# every task those handlers start): a flush from there returns at once, as
# it would wait for the very call that waits.
_IN_DISPATCH: contextvars.ContextVar[Optional["_Dispatcher"]] = contextvars.ContextVar(
    "switchboard_bus_in_dispatch", default=None
)

# Set by the dispatcher of a loop, in its own context, to the number of the
# event whose handlers it runs, so a task a handler starts carries the number
# of the event it was started for (see ``publish_nowait``).
_HANDLING: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("switchboard_bus_handling", default=None)

# Held while a replay's buffer of live events is filled or emptied (a
# replay and the dispatchers of other threads' loops meet there; only
# subscriptions in a replay are ever looked at under it).
_BUFFER_LOCK = threading.Lock()

# Set in the context of a coroutine handler's replay task (and so of every
# task it starts): a flush from there does not wait for the running replays,
# which may be waiting for it.
_IN_REPLAY: contextvars.ContextVar[bool] = contextvars.ContextVar("switchboard_bus_in_replay", default=False)

# Set by a reload around the replaced instance's teardown: the ids of that
# instance's subscriptions, the only ones unsubscribing by name may remove
# meanwhile (a newer instance has the same name).
_TEARDOWN_SCOPE: contextvars.ContextVar[Optional[FrozenSet[int]]] = contextvars.ContextVar(
    "switchboard_bus_teardown_scope", default=None
)

_live_buses: "weakref.WeakSet[EventBus]" = weakref.WeakSet()

# The buffer of a subscription whose replay failed: what a dispatcher that
# routed an event to it before its removal offers is dropped, never run (a
# dispatcher on another thread may have looked at it before the removal).
_FAILED: List[Any] = []

#: What an awaiting publisher waits on while a replaying subscription holds
#: its event: the publisher's loop and a future there.
_Waiter = Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]
#: One event a replay runs: the event, its number, its waiter, and whether it
#: came live (``False``: from history).
_Buffered = Tuple[Event, int, Optional[_Waiter], bool]


def _set_done(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def _release(waiter: Optional[_Waiter]) -> None:
    """Tells an awaiting publisher its event's call on a replaying
    subscription is over (run, or not to be run)."""
    if waiter is None:
        return
    loop, future = waiter
    if loop is _get_running_loop():
        _set_done(future)
        return
    try:
        loop.call_soon_threadsafe(_set_done, future)
    except RuntimeError:  # its loop closed: nobody waits any more
        pass


def _on_readable(ref: "weakref.ReferenceType[_Dispatcher]", inbox: Any, loop: asyncio.AbstractEventLoop) -> None:
    """The loop's reader of an inbox's pipe: it holds its dispatcher (and so
    the bus) weakly, so a bus nobody holds is collected while the loop runs."""
    dispatcher = ref()
    if dispatcher is not None:
        dispatcher.on_wake()
        return
    inbox.clear_wake()
    _unwatch_loop(loop, inbox, threading.get_ident())


def _unwatch_loop(loop: asyncio.AbstractEventLoop, inbox: Any, ident: int) -> None:
    """Stops the loop watching the pipe of a collected dispatcher's inbox
    (on the loop's thread; from another, by handing it the call)."""
    if loop.is_closed():
        return
    if threading.get_ident() == ident or loop is _get_running_loop():
        try:
            loop.remove_reader(inbox.fileno())
        except Exception:  # a loop being torn down
            pass
        return
    try:
        loop.call_soon_threadsafe(_unwatch_loop, loop, inbox, ident)
    except RuntimeError:  # it closed meanwhile
        pass


class Overflow(str, enum.Enum):
    """What ``publish_nowait`` does when the events waiting for a loop reach
    the bus's ``capacity`` (the engine's policies, by the same names)."""

    #: The publisher waits for room (other threads; without the GIL, and
    #: Ctrl-C interrupts it). The loop's own thread never waits for itself: it
    #: may go past the bound by as much again, then gets ``QueueFull``.
    BLOCK = "block"
    #: ``publish_nowait`` raises ``QueueFull``; nothing is accepted.
    ERROR = "error"
    #: As the engine's ``Shed``: the oldest event of the lowest priority
    #: below the new one's that waits for the loop is dropped to make room;
    #: when none waits, the new event is the one dropped. A dropped event is
    #: numbered and in history, but no handler sees it; each is counted in
    #: ``engine_stats()['dropped']``.
    SHED = "shed"


class QueueFull(Exception):
    """``publish_nowait`` refused the event: the loop's backlog is full."""


class Subscription:
    """One subscription, as ``EventBus.subscribe`` returns it.

    ``pattern``, ``handler`` and ``plugin_name`` are as subscribed;
    ``replayed`` says how many events history replayed to it; ``seam`` is
    the sequence number of the first event it gets live.
    """

    __slots__ = (
        "pattern",
        "handler",
        "plugin_name",
        "seam",
        "replayed",
        "cut",
        "windows",
        "live",
        "buffer",
        "_bus",
        "__weakref__",
    )

    def __init__(self, bus: "EventBus", pattern: str, handler: Handler, plugin_name: str) -> None:
        self.pattern = pattern
        self.handler = handler
        self.plugin_name = plugin_name
        self.seam = 0
        self.replayed = 0
        # Windows of sequence numbers that are not for this subscription: all
        # of them once unsubscribed, those a successor took over in a reload.
        # ``cut`` is where the first one starts (the one comparison a call
        # makes when there is none).
        self.windows: List[Tuple[int, int]] = []
        self.cut = _NEVER
        self.live = True
        # While a replay runs: the live events that came meanwhile (each
        # with what an awaiting publisher waits on), run after it.
        self.buffer: Optional[List[_Buffered]] = None
        self._bus = bus

    @property
    def active(self) -> bool:
        """Whether the subscription is still subscribed."""
        return self.live

    def skips(self, seq: int) -> bool:
        """Whether the event numbered ``seq`` is not for this subscription."""
        for start, end in self.windows:
            if start <= seq < end:
                return True
        return False

    def skip_from(self, start: int, end: int = _NEVER) -> None:
        """Events numbered in ``[start, end)`` are not for this subscription."""
        self.windows.append((start, end))
        self.cut = min(self.cut, start)

    def skip_except(self, kept: Sequence[int]) -> None:
        """Every event but those numbered in ``kept`` (ascending) is not for
        this subscription."""
        start = 0
        for seq in kept:
            if seq > start:
                self.skip_from(start, seq)
            start = max(start, seq + 1)
        self.skip_from(start)

    def offer(self, event: Event, seq: int, waiter: Optional[_Waiter]) -> bool:
        """During a replay, buffers a live event, run once the replay is
        over; ``False`` when it is over already (the caller runs it). After a
        failed replay the event is dropped (``True``: not to be run)."""
        with _BUFFER_LOCK:
            buffer = self.buffer
            if buffer is None:
                return False
            if buffer is _FAILED:
                _release(waiter)
                return True
            buffer.append((event, seq, waiter, True))
            return True

    def end_skip(self, start: int, end: int) -> None:
        """The open window from ``start`` now ends at ``end``."""
        self.windows = [(s, end if s == start and e == _NEVER else e) for s, e in self.windows]

    def unsubscribe(self) -> bool:
        """Removes this subscription alone; once this returns its handler is
        never called again. ``False`` if it was already removed."""
        return self._bus._remove(self, 0)

    def __repr__(self) -> str:
        return f"Subscription({self.pattern!r}, plugin={self.plugin_name!r}, active={self.active})"


def _check_str(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}: {value!r}")
    return value


def _check_count(what: str, value: object, allow_none: bool) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int{' or None' if allow_none else ''}, not {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    return value


def _check_event(event: object) -> Event:
    if not isinstance(event, Event):
        raise TypeError(f"expected an Event, not {type(event).__name__}: {event!r}")
    if not isinstance(event.name, str):
        raise TypeError(f"Event.name must be a str, not {type(event.name).__name__}: {event.name!r}")
    return event


_log = logging.getLogger("switchboard_bus")

# The running loop or None (asyncio's own, without the exception).
_get_running_loop: Callable[[], Any] = asyncio.events._get_running_loop


def _retrieve(task: "asyncio.Task[None]") -> None:
    # A BaseException that ended the dispatcher already reached the loop's
    # caller; anything else is a bug of this package, and said so.
    if not task.cancelled():
        exc = task.exception()
        if isinstance(exc, Exception):
            _log.error("the event loop's dispatcher failed", exc_info=exc)


if sys.version_info >= (3, 11):

    def _dispatcher_cancelled() -> bool:
        """Whether the running task (a dispatcher) was asked to cancel, as
        opposed to a handler's own ``CancelledError`` (it awaited something
        that was cancelled)."""
        task = asyncio.current_task()
        return task is None or task.cancelling() > 0

    def _new_dispatcher_task(loop: asyncio.AbstractEventLoop, coro: Any) -> "asyncio.Task[None]":
        return loop.create_task(coro)

else:

    class _DispatcherTask(asyncio.Task):  # type: ignore[type-arg]
        """A dispatcher's task that remembers being asked to cancel (what
        ``Task.cancelling()`` tells from Python 3.11 on)."""

        cancel_requested = False

        def cancel(self, *args: Any, **kwargs: Any) -> bool:
            self.cancel_requested = True
            return super().cancel(*args, **kwargs)

    def _dispatcher_cancelled() -> bool:
        task = asyncio.current_task()
        return getattr(task, "cancel_requested", True)

    def _new_dispatcher_task(loop: asyncio.AbstractEventLoop, coro: Any) -> "asyncio.Task[None]":
        return _DispatcherTask(coro, loop=loop)


class _Dispatcher:
    """One loop's side of the bus: watches its inbox's pipe and runs the
    calls the engine's worker matched, a batch at a time, in one task."""

    def __init__(self, bus: "EventBus", loop: asyncio.AbstractEventLoop, ident: int) -> None:
        self.bus = bus
        self.loop = loop
        self.ident = ident
        try:
            loop_ref: Optional[Callable[[], Any]] = weakref.ref(loop)
        except TypeError:  # a loop that takes no weak reference
            loop_ref = None
        # A thread waiting for room under BLOCK stops when the loop closes.
        self.inbox = bus._core.inbox(ident, loop_ref)
        self.task: Optional["asyncio.Task[None]"] = None
        self.leftover: List[Tuple[Event, int, Sequence[Subscription], int]] = []
        # Flushes waiting, each for its generation.
        self.waiters: List[Tuple[int, "asyncio.Future[None]"]] = []
        # The flush generation of the event whose handlers run now: what they
        # publish belongs to it (a flush waits for cascades).
        self.current_gen: Optional[int] = None
        # The number of the event whose handlers run now (``None`` between
        # events): an unsubscribe keeps it, as the seed's snapshot does.
        self.current_seq: Optional[int] = None
        self.closed = False
        self.stopped = False
        self.context = contextvars.copy_context()
        self.context.run(_IN_DISPATCH.set, self)

    def start(self) -> None:
        """Registers the pipe with the loop (on the loop's thread). The
        loop's reader holds this weakly: once the bus is collected, it stops
        watching."""
        if not self.closed and not self.loop.is_closed():
            self.loop.add_reader(self.inbox.fileno(), _on_readable, weakref.ref(self), self.inbox, self.loop)
            weakref.finalize(self, _unwatch_loop, self.loop, self.inbox, self.ident)

    def on_wake(self) -> None:
        self.inbox.clear_wake()
        if self.task is None and not self.closed:
            self.task = self.context.run(_new_dispatcher_task, self.loop, self.drain())
            # A BaseException that ended it already reached the loop's caller.
            self.task.add_done_callback(_retrieve)

    async def drain(self) -> None:
        bus = self.bus
        stats = bus._stats
        inbox = self.inbox
        try:
            while True:
                if self.leftover:
                    batch, self.leftover = self.leftover, []
                else:
                    batch = inbox.take(512)
                    if not batch:
                        break
                for k, (event, seq, subs, gen) in enumerate(batch):
                    self.current_gen = gen
                    self.current_seq = seq
                    _HANDLING.set(seq)
                    for m, sub in enumerate(subs):
                        if seq >= sub.cut and sub.skips(seq):
                            continue
                        if sub.buffer is not None and sub.offer(event, seq, None):
                            continue
                        try:
                            stats["events_dispatched"] += 1
                            result = sub.handler(event)
                            if result is not None and inspect.isawaitable(result):
                                await result
                        except Exception as e:
                            stats["handler_errors"] += 1
                            bus.logger.error(f"Error in {sub.plugin_name} handling {event.name}: {e}")
                        except asyncio.CancelledError as e:
                            if not _dispatcher_cancelled():
                                # The handler's own (it awaited something
                                # cancelled): its error, like any other.
                                stats["handler_errors"] += 1
                                bus.logger.error(
                                    f"Error in {sub.plugin_name} handling {event.name}: {e!r} (cancelled)"
                                )
                                continue
                            # The dispatcher was cancelled (its loop is being
                            # shut down, most likely): what is left of the batch
                            # is kept for the next wake-up, or counted as lost
                            # when the loop closes first.
                            self.stopped = True
                            self.leftover = [(event, seq, subs[m + 1 :], gen)] + batch[k + 1 :]
                            inbox.done(k)
                            raise
                        except BaseException:
                            # Counted; what is left of the batch is kept and
                            # runs when the loop runs the dispatcher again.
                            bus._base_exceptions += 1
                            self.leftover = [(event, seq, subs[m + 1 :], gen)] + batch[k + 1 :]
                            inbox.done(k)
                            raise
                self.current_seq = None
                self.current_gen = None
                inbox.done(len(batch))
                self.settle()
                # Let the loop's other work in between batches.
                await asyncio.sleep(0)
        finally:
            self.task = None
            self.current_gen = None
            self.current_seq = None
            if self.leftover and not self.stopped and not self.closed and not self.loop.is_closed():
                self.loop.call_soon(self.on_wake)
            self.stopped = False
        self.settle()

    def flushed(self, gen: int) -> bool:
        return not self.leftover and self.inbox.flushed(gen)

    def settle(self) -> None:
        if not self.waiters:
            return
        still = []
        for gen, waiter in self.waiters:
            if self.flushed(gen):
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((gen, waiter))
        self.waiters = still
        if not still:
            self.inbox.set_flush_waiting(False)

    def close(self) -> Tuple[int, int]:
        """Stops watching the loop; returns how many accepted events were
        dropped (counted as lost): from the inbox, and left over."""
        if self.closed:
            return 0, 0
        self.closed = True
        from_inbox = self.inbox.close()
        # An entry whose remaining calls are none was handled.
        left = sum(1 for _, _, subs, _ in self.leftover if subs)
        if self.leftover:
            self.inbox.done(len(self.leftover))
            self.leftover = []
        waiters, self.waiters = self.waiters, []
        if threading.get_ident() == self.ident:
            self.unwatch(waiters)
        elif not self.loop.is_closed():
            # The loop's own APIs are not for other threads: it does this
            # itself, woken (a flush waiting on it returns at once).
            try:
                self.loop.call_soon_threadsafe(self.unwatch, waiters)
            except RuntimeError:  # it closed meanwhile
                pass
        return from_inbox, left

    def unwatch(self, waiters: List[Tuple[int, "asyncio.Future[None]"]]) -> None:
        """On the loop's thread: stops watching the pipe, wakes the flushes."""
        if self.loop.is_closed():
            return
        try:
            self.loop.remove_reader(self.inbox.fileno())
        except Exception:  # a loop being torn down
            pass
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class EventBus:
    """Pub/sub event bus for plugins: the seed's API, on the switchboard engine.

    Args:
        history_size: Number of events to keep in history (default: 100;
            ``None`` keeps every event, as the seed's ``deque`` does)
        logger: Optional logger instance (handler errors are logged to it): a
            ``logging.Logger``, a ``logging.LoggerAdapter``, or any object
            with a logger's ``debug``, ``error`` and ``warning`` methods
        capacity: How many events published with ``publish_nowait`` may wait
            for one event loop (default: 65,536)
        overflow: What ``publish_nowait`` does past ``capacity`` (default
            ``Overflow.BLOCK``: wait, losing nothing)
        workers: Engine threads matching ``publish_nowait`` events (default 1,
            which keeps each publisher's events in order)

    Handlers are coroutine functions or plain callables of the event. They
    run on the event loop of the code that publishes: ``await publish`` runs
    them before it returns, in subscription order; ``publish_nowait`` hands
    the event to the engine, and its handlers run on the loop soon after,
    higher priorities first and in publish order within a priority, as the
    engine's queues run them (``await flush()`` waits for them).
    """

    def __init__(
        self,
        history_size: Optional[int] = 100,
        logger: Optional[_Logger] = None,
        *,
        capacity: int = 65536,
        overflow: Union[Overflow, str] = Overflow.BLOCK,
        workers: int = 1,
    ) -> None:
        _check_count("history_size", history_size, True)
        _check_count("capacity", capacity, False)
        _check_count("workers", workers, False)
        if logger is not None and not all(callable(getattr(logger, m, None)) for m in ("debug", "error", "warning")):
            raise TypeError(
                f"logger must be a logging.Logger, a logging.LoggerAdapter or an object with their "
                f"debug, error and warning methods, not {type(logger).__name__}: {logger!r}"
            )
        try:
            policy = Overflow(overflow)
        except ValueError:
            raise ValueError(f"overflow must be one of 'block', 'error', 'shed', got {overflow!r}") from None
        self.logger: _Logger = logger or logging.getLogger("plugin.event_bus")
        self._core = _native.Core(history_size, capacity, policy.value, workers)
        self._capacity = capacity
        self._stats: Dict[str, int] = {"events_dispatched": 0, "handler_errors": 0}
        self._base_exceptions = 0
        self._lost_loop_closed = 0
        self._lost_at_close = 0
        self._lost_by_inbox_close = 0
        # The counters of the inboxes of loops gone, summed.
        self._retired = [0, 0, 0, 0, 0]
        self._dispatchers: Dict[asyncio.AbstractEventLoop, _Dispatcher] = {}
        self._home: Optional[_Dispatcher] = None
        # Running coroutine replays, each with its subscription.
        self._replays: "Dict[asyncio.Task[None], Subscription]" = {}
        # The numbers of the events ``await publish`` calls are dispatching
        # now: an unsubscribe by name keeps them (the seed's snapshot).
        self._in_flight: "set[int]" = set()
        _live_buses.add(self)

    # -- subscriptions ------------------------------------------------------

    def subscribe(self, event_pattern: str, handler: Handler, plugin_name: str, *, replay: int = 0) -> Subscription:
        """Subscribe to events matching ``event_pattern``.

        Args:
            event_pattern: Event name or fnmatch pattern (``*`` matches any
                run of characters, dots included; ``?``, ``[seq]``, ``[!seq]``)
            handler: Coroutine function or plain callable of the event
            plugin_name: Name of the subscribing plugin
            replay: First call the handler with up to this many of the latest
                matching events in history, oldest first; live events that
                come meanwhile wait for the replay, then follow it, with no
                gap and no duplicate

        Returns:
            The ``Subscription`` (``unsubscribe()`` removes it alone).

        Raises:
            TypeError: a pattern or plugin name that is not a ``str``, a
                handler that is not callable
            ValueError: an empty pattern, one with a NUL character or longer
                than 4096 bytes; a negative ``replay``

        Examples:
            bus.subscribe('trivia.started', handler, 'stats')
            bus.subscribe('trivia.*', handler, 'logger')  # All trivia events
            bus.subscribe('*', handler, 'monitor')  # All events
        """
        return self._subscribe(event_pattern, handler, plugin_name, replay)

    def _subscribe(
        self, event_pattern: str, handler: Handler, plugin_name: str, replay: int, replay_below: int = _NEVER
    ) -> Subscription:
        _check_str("event_pattern", event_pattern)
        if not callable(handler):
            raise TypeError(
                f"handler must be callable (a coroutine function or a plain callable), "
                f"not {type(handler).__name__}: {handler!r}"
            )
        _check_str("plugin_name", plugin_name)
        replay = _check_count("replay", replay, False) or 0
        if replay and _get_running_loop() is None and inspect.iscoroutinefunction(handler):
            raise RuntimeError("subscribe(..., replay=n) with a coroutine handler needs a running event loop")
        sub = Subscription(self, event_pattern, handler, plugin_name)
        if replay:
            # Live events wait from the very first one on (a dispatcher on
            # another thread may run one as soon as the subscription is in).
            sub.buffer = []
        seam, replayed = self._core.subscribe(event_pattern, sub, plugin_name, replay)
        sub.seam = seam
        if not replay:
            self.logger.debug(f"{plugin_name} subscribed to {event_pattern}")
            return sub
        items: List[_Buffered] = [(e, s, None, False) for e, s in replayed if s < replay_below]
        # Marked as a replay (a publish from its handler does not wait for
        # replays, which may be waiting for it).
        token = _IN_REPLAY.set(True)
        try:
            self.logger.debug(f"{plugin_name} subscribed to {event_pattern}")
            self._replay(sub, items)
        except BaseException:
            # A replay that cannot go on (no loop for a coroutine handler, a
            # handler's BaseException, anything raised meanwhile): the
            # subscribe failed, and the subscription is removed, as if it was
            # never made (removed first: no live event reaches it after).
            self._remove(sub, 0)
            self._abandon(sub, [])
            raise
        finally:
            _IN_REPLAY.reset(token)
        return sub

    def _replays_now(self, sub: Subscription, seq: int, live: bool) -> bool:
        """Whether a replay runs this event: one from history while the
        subscription is on, a live one unless it is skipped."""
        if live:
            return not (seq >= sub.cut and sub.skips(seq))
        if sub.live:
            sub.replayed += 1
            return True
        return False

    def _next_buffered(self, sub: Subscription) -> Optional[List[_Buffered]]:
        """The live events that came during the replay, in publish order;
        ``None`` (and the replay is over) when none came."""
        with _BUFFER_LOCK:
            batch = sub.buffer
            if not batch:
                sub.buffer = None
                return None
            sub.buffer = []
        # Each publishing path fills it in its own order: publish order is
        # the sequence.
        batch.sort(key=lambda item: item[1])
        return batch

    def _abandon(self, sub: Subscription, items: Sequence[_Buffered]) -> None:
        """A replay that stops: what it has not run is not run; awaiting
        publishers are told. A removed subscription's buffer stays closed
        (see ``_FAILED``); a live one's opens (live events go straight to
        the handler)."""
        with _BUFFER_LOCK:
            buffered = sub.buffer if sub.buffer is not _FAILED else None
            left = list(items) + (buffered or [])
            sub.buffer = None if sub.live else _FAILED
        for item in left:
            _release(item[2])

    def _replay(self, sub: Subscription, items: List[_Buffered]) -> None:
        """Runs the replay, then the live events that came meanwhile, while
        the handler returns nothing to await; from the first awaitable on,
        the rest runs as a task on the running loop."""
        batch: Optional[List[_Buffered]] = items
        while batch is not None:
            for i, (event, seq, waiter, live) in enumerate(batch):
                try:
                    result = self._call(sub, event) if self._replays_now(sub, seq, live) else None
                except BaseException:
                    self._base_exceptions += 1
                    _release(waiter)
                    self._remove(sub, 0)
                    self._abandon(sub, batch[i + 1 :])
                    raise
                if result is None:
                    _release(waiter)
                    continue
                loop = _get_running_loop()
                if loop is None:
                    if inspect.iscoroutine(result):
                        result.close()
                    _release(waiter)
                    self._remove(sub, 0)
                    self._abandon(sub, batch[i + 1 :])
                    raise RuntimeError(
                        "subscribe(..., replay=n) with a handler that returns an awaitable needs a running event loop"
                    )
                context = contextvars.copy_context()
                context.run(_IN_REPLAY.set, True)
                rest = self._replay_rest(sub, event, result, waiter, batch[i + 1 :])
                # A task that tells its own cancellation from a handler's
                # CancelledError (on every Python version).
                task = context.run(_new_dispatcher_task, loop, rest)
                self._replays[task] = sub
                task.add_done_callback(self._replay_done)
                return
            batch = self._next_buffered(sub)

    def _call(self, sub: Subscription, event: Event) -> Optional[Awaitable[Any]]:
        """Calls a plain handler (errors isolated); returns what must be
        awaited, if anything."""
        try:
            self._stats["events_dispatched"] += 1
            result = sub.handler(event)
            if result is not None and inspect.isawaitable(result):
                return result
        except Exception as e:
            self._handler_error(sub, event, e)
        return None

    async def _replay_rest(
        self,
        sub: Subscription,
        first_event: Event,
        first: Awaitable[Any],
        first_waiter: Optional[_Waiter],
        rest: List[_Buffered],
    ) -> None:
        batch: Optional[List[_Buffered]] = rest
        i = -1
        try:
            try:
                await self._isolated(sub, first_event, first)
            finally:
                _release(first_waiter)
            while batch is not None:
                for i, (event, seq, waiter, live) in enumerate(batch):
                    try:
                        if self._replays_now(sub, seq, live):
                            pending = self._call(sub, event)
                            if pending is not None:
                                await self._isolated(sub, event, pending)
                    finally:
                        _release(waiter)
                batch, i = self._next_buffered(sub), -1
        except BaseException as e:
            # A handler's BaseException (or the task cancelled): the
            # subscription is removed, and what it had not run is not run.
            if not isinstance(e, asyncio.CancelledError):
                self._base_exceptions += 1
            self._remove(sub, 0)
            self._abandon(sub, batch[i + 1 :] if batch is not None else [])
            raise

    async def _isolated(self, sub: Subscription, event: Event, pending: Awaitable[Any]) -> None:
        """Awaits what a replayed call returned, its errors isolated: an
        ``Exception``, or its own ``CancelledError`` (it awaited something
        cancelled), is counted and logged; the replay task's cancellation
        goes on up."""
        try:
            await pending
        except Exception as e:
            self._handler_error(sub, event, e)
        except asyncio.CancelledError as e:
            if _dispatcher_cancelled():
                raise
            self._handler_error(sub, event, e)

    def _handler_error(self, sub: Subscription, event: Event, e: BaseException) -> None:
        self._stats["handler_errors"] += 1
        self.logger.error(f"Error in {sub.plugin_name} handling {event.name}: {e}")

    def _remove(self, sub: Subscription, cut: int) -> bool:
        if self._core.remove(sub.pattern, sub):
            sub.live = False
            sub.skip_from(cut)
            return True
        return False

    def _in_dispatch(self) -> List[int]:
        """The numbers of the events whose handlers run now, ascending."""
        seqs = set(self._in_flight)
        for dispatcher in list(self._dispatchers.values()):
            seq = dispatcher.current_seq
            if seq is not None:
                seqs.add(seq)
        return sorted(seqs)

    def _remove_by_name(self, subs: List[Subscription]) -> None:
        """Unsubscribing by name, as the seed does: the events being
        dispatched now still reach these subscriptions (each event's
        handlers are a snapshot taken when it was published); no later one."""
        scope = _TEARDOWN_SCOPE.get()
        kept: Optional[List[int]] = None
        for sub in subs:
            if scope is not None and id(sub) not in scope:
                continue
            if self._core.remove(sub.pattern, sub):
                if kept is None:
                    kept = self._in_dispatch()
                sub.live = False
                sub.skip_except(kept)

    def unsubscribe(self, event_pattern: str, plugin_name: str) -> None:
        """Unsubscribe plugin from event pattern.

        As in the seed, an event being dispatched when this is called (a
        handler calls it, or another task's ``await publish`` is under way)
        still reaches the handlers it was published to; no later event does.
        ``Subscription.unsubscribe()`` stops its handler at once.

        Args:
            event_pattern: Event pattern to unsubscribe from
            plugin_name: Name of plugin
        """
        _check_str("event_pattern", event_pattern)
        _check_str("plugin_name", plugin_name)
        self._remove_by_name(self._core.of_plugin(plugin_name, event_pattern))

    def unsubscribe_all(self, plugin_name: str) -> None:
        """Unsubscribe plugin from all events (the events being dispatched
        now still reach it, as with ``unsubscribe``).

        Args:
            plugin_name: Name of plugin
        """
        _check_str("plugin_name", plugin_name)
        self._remove_by_name(self._core.of_plugin(plugin_name))

    def get_subscriptions(self, plugin_name: Optional[str] = None) -> Dict[str, List[str]]:
        """Get current subscriptions.

        Args:
            plugin_name: Filter by plugin name (None = all)

        Returns:
            Dict mapping event patterns to plugin names
        """
        if plugin_name is not None:
            _check_str("plugin_name", plugin_name)
        names: Dict[str, List[str]] = self._core.names(plugin_name)
        return names

    # -- publishing ---------------------------------------------------------

    async def publish(self, event: Event) -> None:
        """Publish event to subscribers; returns once every handler ran.

        Handlers run on this loop, in subscription order; a handler's
        ``Exception`` is counted and logged, and the others still run. A
        ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``,
        ``CancelledError``) propagates to the caller, as in the seed, and the
        event's later handlers are not called.

        Args:
            event: Event to publish

        Raises:
            TypeError: ``event`` is not an ``Event``, or its name not a ``str``
        """
        try:
            seq, subs = self._core.route(event, event.name)
        except (TypeError, AttributeError):
            _check_event(event)
            raise
        if not subs:
            self.logger.debug(f"No subscribers for: {event.name}")
            return
        stats = self._stats
        in_flight = self._in_flight
        in_flight.add(seq)
        replaying: Optional[List["asyncio.Future[None]"]] = None
        try:
            for sub in subs:
                if seq >= sub.cut and sub.skips(seq):
                    continue
                if sub.buffer is not None:
                    # A replay runs: the event waits for it, and this waits
                    # for the event's call (not from a replay or from the
                    # dispatcher's handlers, which the replay may wait for).
                    self._purge_replays()
                    waiter: Optional[_Waiter] = None
                    if not _IN_REPLAY.get() and _IN_DISPATCH.get() is None:
                        loop = asyncio.get_running_loop()
                        waiter = (loop, loop.create_future())
                    if sub.offer(event, seq, waiter):
                        if waiter is not None:
                            if replaying is None:
                                replaying = []
                            replaying.append(waiter[1])
                        continue
                try:
                    stats["events_dispatched"] += 1
                    result = sub.handler(event)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except Exception as e:
                    stats["handler_errors"] += 1
                    self.logger.error(f"Error in {sub.plugin_name} handling {event.name}: {e}")
                except BaseException:
                    self._base_exceptions += 1
                    raise
            if replaying is not None:
                await asyncio.gather(*replaying)
        finally:
            in_flight.discard(seq)

    def publish_nowait(self, event: Event) -> None:
        """Publish without waiting for handlers: the engine matches the event
        on its worker thread and hands its calls to the event loop, in
        batches. Handlers run on the running loop of the caller, or, called
        from a thread with no running loop, on the bus's home loop (the first
        loop that subscribed, published or called ``bind_loop``).

        Raises:
            TypeError: ``event`` is not an ``Event``
            QueueFull: the loop's backlog is full (``Overflow.ERROR``, or the
                loop's own thread past twice the bound under ``BLOCK``)
            RuntimeError: the bus is closed, or no loop to run handlers on, or
                the loop closed while a thread waited for room (``BLOCK``; the
                event is counted in ``lost_loop_closed``)
            KeyboardInterrupt: Ctrl-C while waiting for room (``BLOCK``)
        """
        if not isinstance(event, Event):
            _check_event(event)
        try:
            dispatcher = self._dispatchers[_get_running_loop()]
            local = True
        except KeyError:
            dispatcher = self._dispatcher_here()
            local = dispatcher.loop is _get_running_loop()
        # A cascade: published by a handler the dispatcher runs, or by a task
        # it started while that handler still runs (one it awaits, say), it
        # belongs to the generation of the event handled (a flush waits for
        # it). Not once the handler is done: a task that goes on publishing
        # would hold every flush forever.
        handling = dispatcher.current_seq
        gen = (
            dispatcher.current_gen
            if handling is not None and _IN_DISPATCH.get() is dispatcher and _HANDLING.get() == handling
            else None
        )
        result, idle = self._core.publish_nowait(event, dispatcher.inbox, local, gen)
        if idle:
            dispatcher.loop.call_soon(dispatcher.on_wake)
        elif result == -1:
            raise QueueFull(f"the event loop's backlog is full (capacity {self._capacity}): {event}")

    def bind_loop(self) -> None:
        """Makes the running loop the bus's home loop: ``publish_nowait``
        from threads with no running loop hands its calls to it."""
        loop = asyncio.get_running_loop()
        self._home = self._dispatcher_for(loop)

    def _dispatcher_for(self, loop: asyncio.AbstractEventLoop) -> _Dispatcher:
        dispatcher = self._dispatchers.get(loop)
        if dispatcher is None:
            self._purge()
            dispatcher = _Dispatcher(self, loop, threading.get_ident())
            self._dispatchers[loop] = dispatcher
            dispatcher.start()
            if self._home is None or self._home.closed:
                self._home = dispatcher
        return dispatcher

    def _dispatcher_here(self) -> _Dispatcher:
        if self._core.closed:
            raise RuntimeError("the bus is closed")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            home = self._home
            if home is None or home.closed or home.loop.is_closed():
                raise RuntimeError(
                    "publish_nowait() outside an event loop needs the bus's home loop: "
                    "call bus.bind_loop() from the loop first"
                ) from None
            return home
        dispatcher = self._dispatchers.get(loop)
        return dispatcher if dispatcher is not None else self._dispatcher_for(loop)

    async def flush(self) -> None:
        """Returns once every event this loop's code published with
        ``publish_nowait`` before the call has been handled, with the events
        their handlers published in turn (and once running replays are done;
        not from a replay, which would wait for itself or for a replay waiting
        for it; only this loop's replays). From inside a handler the
        dispatcher runs, or a task such a handler started, it returns at once:
        the dispatcher runs one handler at a time, and a handler may be
        awaiting that task, so the wait could never end. A task a handler
        starts to publish and then wait can be started in a context of its
        own, ``contextvars.Context().run(asyncio.ensure_future, coro)``: its
        flush waits as anywhere else (and no handler may await it)."""
        loop = asyncio.get_running_loop()
        while self._replays and not _IN_REPLAY.get():
            self._purge_replays()
            current = asyncio.current_task()
            # This loop's only: a task of another loop's would wake this one
            # from the wrong thread.
            others = [t for t in self._replays if t is not current and t.get_loop() is loop]
            if not others:
                break
            await asyncio.wait(others)
        dispatcher = self._dispatchers.get(loop)
        if dispatcher is None:
            return
        if _IN_DISPATCH.get() is dispatcher:
            # A handler the dispatcher runs would wait for itself; a task
            # such a handler started (it inherits the dispatcher's context)
            # may be awaited by a handler, this one or a later one, and the
            # dispatcher runs one handler at a time: waiting could never end.
            return
        self._purge()
        # Every event accepted before this belongs to this generation or an
        # older one; later ones (a flood from another thread) do not hold it.
        gen = dispatcher.inbox.flush_begin()
        while not dispatcher.closed and not dispatcher.flushed(gen):
            waiter = loop.create_future()
            dispatcher.waiters.append((gen, waiter))
            dispatcher.inbox.set_flush_waiting(True)
            dispatcher.settle()
            if dispatcher.task is None and dispatcher.leftover:
                dispatcher.on_wake()
            await waiter

    # -- reading ------------------------------------------------------------

    def get_history(self, count: Optional[int] = None, event_pattern: Optional[str] = None) -> List[Event]:
        """Get event history.

        Args:
            count: Number of recent events to return (None = all)
            event_pattern: Filter by event name pattern (None = all)

        Returns:
            List of events (most recent first)

        Raises:
            TypeError: a count that is not an int, a pattern not a str
            ValueError: a negative count, a pattern with a NUL or too long
        """
        count = _check_count("count", count, True)
        if event_pattern is not None:
            _check_str("event_pattern", event_pattern)
        events: List[Event] = self._core.history(count or None, event_pattern or None)
        return events

    def get_stats(self) -> Dict[str, int]:
        """Get event bus statistics.

        Returns:
            Dict with stats (events_published, events_dispatched, handler_errors)
        """
        return {
            "events_published": self._core.sequence,
            "events_dispatched": self._stats["events_dispatched"],
            "handler_errors": self._stats["handler_errors"],
        }

    def engine_stats(self) -> Dict[str, int]:
        """The engine's own counters, beyond the seed's three:

        ``pending`` (accepted by ``publish_nowait`` and not yet handled),
        ``wakes`` (cross-thread wake-ups of event loops), ``batches`` (batches
        the loops took), ``dropped`` (under ``Overflow.SHED``), ``rejected``
        (``QueueFull``), ``lost_loop_closed`` (calls whose event loop closed
        before it ran them), ``lost_at_close`` (calls not run when the bus
        closed, at interpreter exit included), ``handler_base_exceptions``
        (handlers that raised a ``BaseException``), ``subscriptions``.
        """
        self._purge()
        totals = [0, 0, 0, 0, 0]
        pending = 0
        for counters in [self._retired] + [list(d.inbox.counters()) for d in self._dispatchers.values()]:
            for i, v in enumerate(counters):
                totals[i] += v
        for d in self._dispatchers.values():
            pending += d.inbox.pending
        wakes, batches, dropped, rejected, lost = totals
        return {
            "pending": pending,
            "wakes": wakes,
            "batches": batches,
            "dropped": dropped,
            "rejected": rejected,
            # What a worker still pushed to a closed inbox counts as lost to
            # the closed loop too.
            "lost_loop_closed": self._lost_loop_closed + lost - self._lost_by_inbox_close,
            "lost_at_close": self._lost_at_close,
            "handler_base_exceptions": self._base_exceptions,
            "subscriptions": self._core.count,
        }

    # -- lifecycle ----------------------------------------------------------

    def _retire(self, dispatcher: _Dispatcher) -> None:
        for i, v in enumerate(dispatcher.inbox.counters()):
            self._retired[i] += v

    def _replay_done(self, task: "asyncio.Task[None]") -> None:
        self._replays.pop(task, None)

    def _purge_replays(self) -> None:
        """Coroutine replays whose loop closed without running them to the
        end will never end: their subscriptions stop waiting for them (live
        events go straight to the handler) and their publishers are told."""
        for task, sub in list(self._replays.items()):
            if task.get_loop().is_closed():
                self._replays.pop(task, None)
                self._abandon(sub, [])

    def _purge(self) -> None:
        """Closes the dispatchers of loops that closed; their calls are lost, counted."""
        for loop, dispatcher in list(self._dispatchers.items()):
            if loop.is_closed():
                from_inbox, left = dispatcher.close()
                self._lost_by_inbox_close += from_inbox
                self._lost_loop_closed += from_inbox + left
                self._retire(dispatcher)
                del self._dispatchers[loop]

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return bool(self._core.closed)

    def close(self) -> int:
        """Stops the engine (its worker hands over what its queue holds, then
        is joined, without the GIL); calls still waiting for a loop are
        dropped and counted in ``lost_at_close``. Returns how many. Idempotent;
        called for every live bus at interpreter exit."""
        if self._core.closed:
            return 0
        self._purge()
        self._core.close()
        lost = 0
        for dispatcher in self._dispatchers.values():
            from_inbox, left = dispatcher.close()
            self._lost_by_inbox_close += from_inbox
            lost += from_inbox + left
            self._retire(dispatcher)
        self._lost_at_close += lost
        self._dispatchers.clear()
        _live_buses.discard(self)
        return lost

    async def aclose(self) -> None:
        """``flush``, then ``close``."""
        await self.flush()
        self.close()

    def __repr__(self) -> str:
        return f"EventBus(subscriptions={self._core.count}, closed={self.closed})"


def _close_at_exit() -> None:
    for bus in list(_live_buses):
        lost = bus.close()
        if lost:
            bus.logger.warning(f"event bus closed at interpreter exit: {lost} handler calls not run")


# Also before the interpreter joins its threads (which comes before atexit):
# a thread blocked publishing to a bus is released by the close, not joined
# forever.
atexit.register(_close_at_exit)
_register_atexit: Optional[Callable[[Callable[[], None]], None]] = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_close_at_exit)

