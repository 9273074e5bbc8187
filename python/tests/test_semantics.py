"""The finer points users rely on: overflow and priority as the engine has
them, replay with no hole, the seed's constructor and unsubscribe snapshot,
costs that do not grow with the other subscriptions, and no bus kept alive
by its loop."""

import asyncio
import contextvars
import gc
import logging
import sys
import threading
import time
import weakref

import pytest

from conftest import WATCHDOG, within
from switchboard_bus import Event, EventBus, EventPriority

LOW, NORMAL, HIGH = EventPriority.LOW, EventPriority.NORMAL, EventPriority.HIGH


# -- overflow and priority ---------------------------------------------------


@pytest.mark.asyncio
async def test_shed_drops_the_oldest_lower_priority_event_not_the_new_one():
    bus = EventBus(capacity=4, overflow="shed")
    got: list = []
    bus.subscribe("*", lambda e: got.append(e.data), "p")
    for i in range(4):
        bus.publish_nowait(Event("x", ("low", i), "s", LOW))
    # Full of LOW: each HIGH event makes room by dropping the oldest LOW one.
    bus.publish_nowait(Event("x", ("high", 0), "s", HIGH))
    bus.publish_nowait(Event("x", ("high", 1), "s", HIGH))
    # A LOW event with nothing lower waiting is the one dropped.
    bus.publish_nowait(Event("x", ("low", 4), "s", LOW))
    await within(bus.flush())
    assert got == [("high", 0), ("high", 1), ("low", 2), ("low", 3)]
    stats = bus.engine_stats()
    assert stats["dropped"] == 3 and stats["pending"] == 0
    assert bus.get_stats()["events_published"] == 7  # all numbered, in history
    assert len(bus.get_history()) == 7
    bus.close()


@pytest.mark.asyncio
async def test_shed_with_equal_priorities_drops_the_new_event():
    bus = EventBus(capacity=3, overflow="shed")
    got: list = []
    bus.subscribe("*", lambda e: got.append(e.data), "p")
    for i in range(5):
        bus.publish_nowait(Event("x", i, "s", NORMAL))
    await within(bus.flush())
    assert got == [0, 1, 2]
    assert bus.engine_stats()["dropped"] == 2
    bus.close()


@pytest.mark.asyncio
async def test_nowait_from_the_loops_thread_runs_higher_priorities_first():
    bus = EventBus()
    got: list = []
    bus.subscribe("*", lambda e: got.append(e.data), "p")
    order = [(LOW, "l0"), (NORMAL, "n0"), (HIGH, "h0"), (LOW, "l1"), (HIGH, "h1"), (NORMAL, "n1")]
    for priority, tag in order:
        bus.publish_nowait(Event("x", tag, "s", priority))
    await within(bus.flush())
    # Highest first; publish order within a priority.
    assert got == ["h0", "h1", "n0", "n1", "l0", "l1"]
    bus.close()


@pytest.mark.asyncio
async def test_nowait_from_another_thread_waiting_for_the_loop_runs_higher_priorities_first():
    bus = EventBus()
    bus.bind_loop()
    got: list = []
    bus.subscribe("*", lambda e: got.append(e.data), "p")
    inbox = bus._dispatchers[asyncio.get_running_loop()].inbox

    def publish() -> None:
        for i in range(50):
            bus.publish_nowait(Event("x", ("low", i), "s", LOW))
        for i in range(50):
            bus.publish_nowait(Event("x", ("high", i), "s", HIGH))

    thread = threading.Thread(target=publish)
    thread.start()
    thread.join(WATCHDOG)
    # The loop is held in this very call until the worker has handed all of
    # it to the loop's backlog, which runs HIGH first.
    deadline = time.monotonic() + WATCHDOG
    while inbox.queued < 100 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert inbox.queued == 100
    await within(bus.flush())
    assert got == [("high", i) for i in range(50)] + [("low", i) for i in range(50)]
    bus.close()


# -- replay with no hole ---------------------------------------------------


@pytest.mark.asyncio
async def test_replay_from_a_thread_with_no_loop_loses_no_live_event():
    bus = EventBus(history_size=None)
    got: list = []
    for i in range(200):
        await bus.publish(Event("x", i, "s"))
    stop = asyncio.Event()
    published = [200]

    def slow_handler(event: Event) -> None:
        got.append(event.data)
        if event.data < 200:
            time.sleep(0.0002)  # the GIL goes to the loop's thread meanwhile

    async def publisher() -> None:
        # Live events from the loop's own thread while the replay runs on
        # another: the loop's dispatcher meets the replaying subscription.
        while not stop.is_set():
            bus.publish_nowait(Event("x", published[0], "s"))
            published[0] += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(publisher())
    await asyncio.sleep(0.01)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (bus.subscribe("x", slow_handler, "late", replay=10**6), done.set()))
    thread.start()
    while not done.is_set():
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    stop.set()
    await within(task)
    thread.join(WATCHDOG)
    await within(bus.flush())
    # Everything from history, then every live event: no gap, no duplicate.
    assert len(got) > 210
    assert got == list(range(published[0]))
    bus.close()


@pytest.mark.asyncio
async def test_base_exception_during_a_sync_replay_fails_the_subscribe_and_leaves_no_subscription():
    bus = EventBus()
    for i in range(5):
        await bus.publish(Event("x", i, "s"))
    got: list = []

    def handler(event: Event) -> None:
        got.append(event.data)
        if event.data == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bus.subscribe("x", handler, "late", replay=5)
    assert got == [0, 1, 2]
    assert bus.get_subscriptions() == {}
    assert bus.engine_stats()["handler_base_exceptions"] == 1
    # Nothing is swallowed afterwards: a new subscription gets live events.
    again: list = []
    bus.subscribe("x", lambda e: again.append(e.data), "late")
    await bus.publish(Event("x", 5, "s"))
    bus.publish_nowait(Event("x", 6, "s"))
    await within(bus.flush())
    assert again == [5, 6] and got == [0, 1, 2]
    bus.close()


def test_base_exception_during_a_coroutine_replay_removes_the_subscription():
    bus = EventBus()
    got: list = []
    subs: list = []

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        got.append(event.data)
        if event.data == 1:
            raise SystemExit(3)

    async def main() -> None:
        for i in range(3):
            await bus.publish(Event("x", i, "s"))
        subs.append(bus.subscribe("x", handler, "late", replay=3))
        await asyncio.sleep(1)

    loop = asyncio.new_event_loop()
    try:
        # As asyncio does with a task's SystemExit: it leaves the loop.
        with pytest.raises(SystemExit):
            loop.run_until_complete(main())
        assert got == [0, 1] and not subs[0].active
        assert bus.get_subscriptions() == {}
        assert bus.engine_stats()["handler_base_exceptions"] == 1
        loop.run_until_complete(bus.publish(Event("x", 9, "s")))
        assert got == [0, 1]
    finally:
        bus.close()
        loop.close()


def test_failed_replay_outside_a_loop_leaves_no_subscription():
    bus = EventBus()

    async def fill() -> None:
        await bus.publish(Event("x", 0, "s"))

    asyncio.run(fill())

    async def handler(event: Event) -> None:
        pass

    with pytest.raises(RuntimeError, match="needs a running event loop"):
        bus.subscribe("x", handler, "late", replay=1)
    assert bus.get_subscriptions() == {}

    # The same for a plain callable that turns out to return an awaitable.
    def sneaky(event: Event):  # type: ignore[no-untyped-def]
        return handler(event)

    with pytest.raises(RuntimeError, match="needs a running event loop"):
        bus.subscribe("x", sneaky, "late", replay=1)
    assert bus.get_subscriptions() == {}
    assert bus.engine_stats()["subscriptions"] == 0
    bus.close()


@pytest.mark.asyncio
async def test_await_publish_during_a_coroutine_replay_returns_after_that_handler_ran():
    bus = EventBus()
    for i in range(3):
        await bus.publish(Event("x", i, "s"))
    got: list = []
    gate = asyncio.Event()

    async def handler(event: Event) -> None:
        await gate.wait()
        got.append(event.data)

    bus.subscribe("x", handler, "late", replay=3)
    publishing = asyncio.ensure_future(bus.publish(Event("x", 3, "s")))
    await asyncio.sleep(0.01)
    assert not publishing.done()  # the replay has not reached it yet
    gate.set()
    await within(publishing)
    assert got == [0, 1, 2, 3]  # returned once its handler ran, after the replay
    bus.close()


@pytest.mark.asyncio
async def test_a_replaying_handler_awaiting_publish_to_itself_does_not_deadlock():
    bus = EventBus()
    await bus.publish(Event("x", 0, "s"))
    got: list = []

    async def handler(event: Event) -> None:
        got.append(event.data)
        if event.data == 0:
            await bus.publish(Event("x", 1, "s"))  # buffered behind this replay

    bus.subscribe("x", handler, "late", replay=1)
    await within(asyncio.gather(*bus._replays))
    await within(bus.flush())
    assert got == [0, 1]
    bus.close()


# -- the seed's constructor and snapshot ------------------------------------


@pytest.mark.asyncio
async def test_a_logger_adapter_is_taken_and_gets_the_error_lines(caplog):
    adapter = logging.LoggerAdapter(logging.getLogger("adapted"), {"bot": "b1"})
    bus = EventBus(logger=adapter)

    async def bad(event: Event) -> None:
        raise ValueError("boom")

    bus.subscribe("x", bad, "p")
    with caplog.at_level(logging.ERROR, logger="adapted"):
        await bus.publish(Event("x", {}, "s"))
    assert [r.getMessage() for r in caplog.records if r.name == "adapted"] == ["Error in p handling x: boom"]
    assert bus.get_stats()["handler_errors"] == 1
    with pytest.raises(TypeError, match="logger must be"):
        EventBus(logger="not a logger")  # type: ignore[arg-type]
    bus.close()


@pytest.mark.asyncio
async def test_history_size_none_keeps_every_event_as_the_seeds_deque_does():
    bus = EventBus(history_size=None)
    for i in range(1000):
        await bus.publish(Event("x", i, "s"))
    history = bus.get_history()
    assert len(history) == 1000 and history[0].data == 999 and history[-1].data == 0
    bus.close()


@pytest.mark.asyncio
async def test_unsubscribe_in_a_handler_keeps_the_seeds_snapshot_for_the_current_event():
    for nowait in (False, True):
        bus = EventBus()
        got: list = []

        async def first(event: Event) -> None:
            got.append(("first", event.data))
            bus.unsubscribe("x", "second")

        async def second(event: Event) -> None:
            got.append(("second", event.data))

        bus.subscribe("x", first, "first")
        bus.subscribe("x", second, "second")
        if nowait:
            bus.publish_nowait(Event("x", 0, "s"))
            bus.publish_nowait(Event("x", 1, "s"))
            await within(bus.flush())
        else:
            await bus.publish(Event("x", 0, "s"))
            await bus.publish(Event("x", 1, "s"))
        # The event being dispatched still reaches it; the next one does not.
        assert got == [("first", 0), ("second", 0), ("first", 1)], nowait
        bus.close()


@pytest.mark.asyncio
async def test_unsubscribe_all_while_another_task_dispatches_keeps_its_event():
    bus = EventBus()
    got: list = []
    gate = asyncio.Event()

    async def slow(event: Event) -> None:
        await gate.wait()

    bus.subscribe("x", slow, "a")
    bus.subscribe("x", lambda e: got.append(e.data), "b")
    in_flight = asyncio.ensure_future(bus.publish(Event("x", 0, "s")))
    await asyncio.sleep(0)
    bus.unsubscribe_all("b")
    gate.set()
    await within(in_flight)
    await bus.publish(Event("x", 1, "s"))
    assert got == [0]  # the snapshot of event 0 had it; event 1 does not
    bus.close()


@pytest.mark.asyncio
async def test_subscription_unsubscribe_stops_at_once_even_for_the_current_event():
    bus = EventBus()
    got: list = []
    subs: list = []
    bus.subscribe("x", lambda e: subs[0].unsubscribe(), "first")
    subs.append(bus.subscribe("x", lambda e: got.append(e.data), "second"))
    await bus.publish(Event("x", 0, "s"))
    assert got == []
    bus.close()


# -- costs and lifetimes -----------------------------------------------------


@pytest.mark.asyncio
async def test_unsubscribing_by_name_among_many_plugins():
    bus = EventBus()
    for i in range(2000):
        bus.subscribe(f"p{i}.*", lambda e: None, f"plugin{i}")
    bus.subscribe("p7.x", lambda e: None, "plugin7")
    bus.subscribe("p7.*", lambda e: None, "plugin8")
    bus.unsubscribe_all("plugin7")
    bus.unsubscribe("p9.*", "plugin9")
    bus.unsubscribe("p9.*", "plugin10")  # not its pattern: nothing
    assert bus.get_subscriptions("plugin7") == {}
    assert bus.get_subscriptions("plugin9") == {}
    assert bus.get_subscriptions("plugin8") == {"p7.*": ["plugin8"], "p8.*": ["plugin8"]}
    assert bus.get_subscriptions("plugin10") == {"p10.*": ["plugin10"]}
    assert bus.engine_stats()["subscriptions"] == 1999
    everything = bus.get_subscriptions()
    assert list(everything)[:9] == [f"p{i}.*" for i in range(9) if i != 9]
    assert everything["p7.*"] == ["plugin8"]
    bus.close()


@pytest.mark.asyncio
async def test_churn_keeps_dispatch_order_and_the_seeds_pattern_places():
    # New patterns one at a time go past the set compiled ahead of them and
    # are tried one by one until it is compiled again; either way the order
    # is the seed's (pattern first seen, then subscription).
    bus = EventBus()
    got: list = []
    for i in range(300):
        pattern = "*" if i % 50 == 0 else f"e.{i}"
        bus.subscribe(pattern, lambda e, i=i: got.append(i), f"p{i}")
        stars = list(range(0, i + 1, 50))
        got.clear()
        await bus.publish(Event(f"e.{i}", {}, "s"))
        assert got == stars + ([i] if i % 50 else []), i
        if i % 7 == 0 and (i - 1) % 50:
            bus.unsubscribe(f"e.{i - 1}", f"p{i - 1}")
            got.clear()
            await bus.publish(Event(f"e.{i - 1}", {}, "s"))
            assert got == stars, i
    bus.close()


def test_a_bus_dropped_while_its_loop_runs_is_collected():
    async def main() -> None:
        bus = EventBus()
        got: list = []
        bus.subscribe("x", lambda e: got.append(e), "p")
        bus.publish_nowait(Event("x", 0, "s"))
        await within(bus.flush())
        assert len(got) == 1
        loop = asyncio.get_running_loop()
        fd = bus._dispatchers[loop].inbox.fileno()
        selector = getattr(loop, "_selector", None)
        assert selector is None or fd in selector.get_map()
        ref = weakref.ref(bus)
        del bus
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        # The loop still runs, and its reader no longer holds the bus...
        assert ref() is None
        # ... nor watches its pipe.
        assert selector is None or fd not in selector.get_map()

    asyncio.run(main())


# -- flush from a task a handler started ------------------------------------


@pytest.mark.asyncio
async def test_flush_from_a_task_a_handler_started_returns_at_once_and_a_fresh_context_waits():
    bus = EventBus()
    got: list = []
    results: list = []

    async def worker(tag: str) -> None:
        bus.publish_nowait(Event("y", tag, "s"))
        await bus.flush()
        results.append((tag, list(got)))

    tasks: list = []

    def start(event: Event) -> None:
        # Inherits the dispatcher's context: a handler may await it, so its
        # flush cannot wait for the dispatcher.
        tasks.append(asyncio.ensure_future(worker("inherited")))
        # A context of its own: its flush waits as anywhere else.
        tasks.append(contextvars.Context().run(asyncio.ensure_future, worker("own")))

    bus.subscribe("x", start, "p")
    bus.subscribe("y", lambda e: got.append(e.data), "q")
    bus.publish_nowait(Event("x", 0, "s"))
    await within(bus.flush())
    await within(asyncio.gather(*tasks))
    assert dict(results)["inherited"] == []
    assert "own" in dict(results)["own"]
    bus.close()


@pytest.mark.asyncio
async def test_a_handler_awaiting_a_task_that_flushes_does_not_deadlock():
    bus = EventBus()
    got: list = []

    async def flusher() -> str:
        bus.publish_nowait(Event("y", 1, "s"))
        await bus.flush()
        return "flushed"

    async def handler(event: Event) -> None:
        got.append(await asyncio.gather(flusher()))

    bus.subscribe("x", handler, "p")
    bus.subscribe("y", lambda e: got.append(e.data), "q")
    bus.publish_nowait(Event("x", 0, "s"))
    await within(bus.flush())
    assert got == [["flushed"], 1]
    bus.close()


@pytest.mark.asyncio
async def test_a_later_handler_awaiting_a_task_an_earlier_handler_started_that_flushes_does_not_deadlock():
    bus = EventBus()
    box: dict = {}
    done: list = []

    async def on_start(event: Event) -> None:
        async def job() -> None:
            await asyncio.sleep(0.01)
            await bus.flush()
            done.append("job")

        box["job"] = asyncio.ensure_future(job())

    async def on_stop(event: Event) -> None:
        await box["job"]
        done.append("stop")

    bus.subscribe("start", on_start, "p")
    bus.subscribe("stop", on_stop, "p")
    bus.publish_nowait(Event("start", {}, "s"))
    bus.publish_nowait(Event("stop", {}, "s"))
    await within(bus.flush(), 5)
    assert done == ["job", "stop"]
    bus.close()


@pytest.mark.asyncio
async def test_a_task_a_handler_started_publishing_forever_does_not_hold_a_flush():
    bus = EventBus()
    stop = asyncio.Event()
    ticks: list = []
    tasks: list = []

    async def ticker() -> None:
        while not stop.is_set():
            bus.publish_nowait(Event("tick", {}, "s"))
            await asyncio.sleep(0)

    bus.subscribe("start", lambda e: tasks.append(asyncio.ensure_future(ticker())), "p")
    bus.subscribe("tick", lambda e: ticks.append(1), "q")
    bus.publish_nowait(Event("start", {}, "s"))
    try:
        await within(bus.flush(), 5)
        await asyncio.sleep(0.05)
        await within(bus.flush(), 5)  # the ticks published after it do not hold it
        assert ticks
    finally:
        stop.set()
        await within(asyncio.gather(*tasks))
        bus.close()


# -- replays meeting loops, threads and loggers -----------------------------


def _replay_on_a_loop_closed_under_it(bus: EventBus, got: list) -> None:
    async def handler(event: Event) -> None:
        got.append(event.data)
        if event.data == 0:
            await asyncio.sleep(3600)  # the replayed event: never done

    def other() -> None:
        loop = asyncio.new_event_loop()

        async def main() -> None:
            bus.subscribe("x", handler, "late", replay=1)
            await asyncio.sleep(0.05)

        loop.run_until_complete(main())
        loop.close()  # the replay task still pending, never cancelled

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(WATCHDOG)


@pytest.mark.asyncio
async def test_a_replay_whose_loop_closed_under_it_holds_neither_publish_nor_flush():
    bus = EventBus()
    await bus.publish(Event("x", 0, "s"))
    got: list = []
    _replay_on_a_loop_closed_under_it(bus, got)
    # The replay will never end: the subscription stops waiting for it, and
    # live events go to the handler (on this loop) as if it had.
    await within(bus.publish(Event("x", 1, "s")), 5)
    bus.publish_nowait(Event("x", 2, "s"))
    await within(bus.flush(), 5)
    assert got == [0, 1, 2]
    bus.close()


@pytest.mark.asyncio
async def test_flush_does_not_wait_for_a_replay_on_another_loop():
    bus = EventBus()
    await bus.publish(Event("x", 0, "s"))
    ready = threading.Event()
    stop = threading.Event()

    async def handler(event: Event) -> None:
        await asyncio.sleep(0.3)

    def other() -> None:
        async def main() -> None:
            bus.subscribe("x", handler, "late", replay=1)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)

        asyncio.run(main())

    thread = threading.Thread(target=other)
    thread.start()
    assert ready.wait(WATCHDOG)
    try:
        # Waiting on another loop's task would need that loop to wake this
        # one; this loop's flush has nothing of its own to wait for.
        await within(bus.flush(), 1)
    finally:
        stop.set()
        thread.join(WATCHDOG)
        bus.close()


@pytest.mark.asyncio
async def test_a_logger_raising_during_a_replaying_subscribe_leaves_no_subscription():
    class Flaky:
        fail = False

        def debug(self, msg: str) -> None:
            if self.fail:
                raise RuntimeError("log down")

        def error(self, msg: str) -> None:
            pass

        def warning(self, msg: str) -> None:
            pass

    log = Flaky()
    bus = EventBus(logger=log)  # type: ignore[arg-type]
    await bus.publish(Event("x", 0, "s"))
    got: list = []
    log.fail = True
    with pytest.raises(RuntimeError, match="log down"):
        bus.subscribe("x", lambda e: got.append(e.data), "late", replay=1)
    log.fail = False
    assert bus.get_subscriptions() == {}
    await within(bus.publish(Event("x", 1, "s")), 5)
    bus.publish_nowait(Event("x", 2, "s"))
    await within(bus.flush(), 5)
    assert got == []
    bus.close()


def test_a_failed_replay_never_lets_a_live_event_reach_its_handler():
    bus = EventBus(history_size=5)
    stop = threading.Event()
    ready = threading.Event()

    def loop_thread() -> None:
        async def main() -> None:
            bus.bind_loop()
            await bus.publish(Event("x", "hist", "s"))
            ready.set()
            while not stop.is_set():
                for _ in range(20):
                    bus.publish_nowait(Event("x", "live", "s"))
                await asyncio.sleep(0)
            await within(bus.flush())

        asyncio.run(main())

    thread = threading.Thread(target=loop_thread)
    thread.start()
    assert ready.wait(WATCHDOG)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    leaked: list = []
    try:
        for _ in range(1500):
            calls = [0]

            def handler(event: Event, calls: list = calls) -> None:
                calls[0] += 1
                if calls[0] == 1:
                    raise KeyboardInterrupt  # the first call: from history
                leaked.append(event.data)  # any later one: a failed subscribe

            with pytest.raises(KeyboardInterrupt):
                bus.subscribe("x", handler, "late", replay=1)
            if leaked:
                break
    finally:
        sys.setswitchinterval(old)
        stop.set()
        thread.join(WATCHDOG)
        bus.close()
    assert bus.engine_stats()["subscriptions"] == 0
    assert not leaked


@pytest.mark.asyncio
async def test_a_sync_replays_handler_waiting_for_a_publish_on_the_loop_does_not_deadlock():
    bus = EventBus()
    await bus.publish(Event("x", "hist", "s"))
    loop = asyncio.get_running_loop()
    outcome: list = []

    def handler(event: Event) -> None:
        if event.data == "hist":
            future = asyncio.run_coroutine_threadsafe(bus.publish(Event("x", "fwd", "s")), loop)
            try:
                future.result(timeout=5)
                outcome.append("ok")
            except Exception as e:  # noqa: BLE001 - what the assertion shows
                outcome.append(repr(e))

    thread = threading.Thread(target=bus.subscribe, args=("x", handler, "late"), kwargs={"replay": 1})
    thread.start()
    deadline = time.monotonic() + WATCHDOG
    while thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    thread.join(1)
    assert outcome == ["ok"]
    bus.close()


@pytest.mark.asyncio
async def test_a_replaying_handlers_own_cancelled_error_is_its_error_not_the_end_of_the_replay():
    bus = EventBus()
    for i in range(3):
        await bus.publish(Event("x", i, "s"))
    got: list = []
    shared = asyncio.get_running_loop().create_future()

    async def handler(event: Event) -> None:
        got.append(event.data)
        if event.data == 0:
            await shared  # someone else cancels it

    sub = bus.subscribe("x", handler, "late", replay=3)
    await asyncio.sleep(0.01)
    shared.cancel()
    await asyncio.sleep(0.05)
    bus.publish_nowait(Event("x", 3, "s"))
    await within(bus.flush())
    await bus.publish(Event("x", 4, "s"))
    assert sub.active and got == [0, 1, 2, 3, 4]
    assert bus.get_stats()["handler_errors"] == 1
    bus.close()
