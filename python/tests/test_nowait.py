"""publish_nowait and flush: batching, order, cascades, re-entrancy,
overflow policies, publishing from other threads, replay."""

import asyncio
import threading

import pytest

from conftest import within
from switchboard_bus import Event, EventBus, Overflow, QueueFull


@pytest.mark.asyncio
async def test_nowait_then_flush_runs_every_handler():
    bus = EventBus()
    seen: list = []

    async def coro(event):
        await asyncio.sleep(0)
        seen.append(("coro", event.data["i"]))

    bus.subscribe("n.*", lambda e: seen.append(("plain", e.data["i"])), "p")
    bus.subscribe("n.*", coro, "q")
    for i in range(100):
        bus.publish_nowait(Event("n.x", {"i": i}, "s"))
    await within(bus.flush())
    assert [i for kind, i in seen if kind == "plain"] == list(range(100))
    assert [i for kind, i in seen if kind == "coro"] == list(range(100))
    assert bus.get_stats() == {"events_published": 100, "events_dispatched": 200, "handler_errors": 0}
    assert bus.engine_stats()["pending"] == 0
    bus.close()


@pytest.mark.asyncio
async def test_a_burst_from_another_thread_costs_one_wake_up_not_one_per_event():
    import time

    bus = EventBus()
    count = [0]
    bus.subscribe("*", lambda e: count.__setitem__(0, count[0] + 1), "p")
    bus.bind_loop()
    thread = threading.Thread(target=lambda: [bus.publish_nowait(Event("e", i, "t")) for i in range(2000)])
    # The loop is busy (not yielding) while the thread publishes and the
    # engine's worker hands the calls over: it then takes them all after a
    # single wake-up, in batches of 512.
    thread.start()
    thread.join()
    time.sleep(0.3)
    await within(bus.flush())
    stats = bus.engine_stats()
    assert count[0] == 2000
    assert stats["wakes"] == 1, stats
    assert stats["batches"] == 2000 // 512 + 1, stats
    bus.close()


@pytest.mark.asyncio
async def test_publishing_from_the_loops_own_thread_needs_no_wake_up_at_all():
    bus = EventBus()
    count = [0]
    bus.subscribe("*", lambda e: count.__setitem__(0, count[0] + 1), "p")
    for i in range(2000):
        bus.publish_nowait(Event("e", {}, "s"))
    await within(bus.flush())
    stats = bus.engine_stats()
    assert count[0] == 2000
    assert stats["wakes"] == 0, stats
    assert stats["batches"] == 2000 // 512 + 1, stats
    bus.close()


def test_a_stream_from_another_thread_costs_far_fewer_wake_ups_than_events():
    bus = EventBus()
    count = [0]
    bus.subscribe("*", lambda e: count.__setitem__(0, count[0] + 1), "p")

    async def main():
        bus.bind_loop()

        def stream():
            for i in range(20_000):
                bus.publish_nowait(Event("e", i, "t"))

        thread = threading.Thread(target=stream)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.001)
        await within(bus.flush())

    asyncio.run(main())
    stats = bus.engine_stats()
    assert count[0] == 20_000
    assert stats["wakes"] <= 20_000 // 10, stats
    bus.close()


@pytest.mark.asyncio
async def test_each_subscription_sees_events_in_publish_order_even_with_slow_handlers():
    bus = EventBus()
    got: list = []

    async def slow(event):
        if event.data % 7 == 0:
            await asyncio.sleep(0.001)
        got.append(event.data)

    bus.subscribe("o", slow, "p")
    for i in range(300):
        bus.publish_nowait(Event("o", i, "s"))
    await within(bus.flush())
    assert got == list(range(300))
    bus.close()


@pytest.mark.asyncio
async def test_flush_waits_for_cascades_published_by_handlers():
    bus = EventBus()
    leaves: list = []

    def fan(event):
        if event.data < 3:
            for _ in range(2):
                bus.publish_nowait(Event("tree", event.data + 1, "fan"))
        else:
            leaves.append(event.data)

    bus.subscribe("tree", fan, "p")
    bus.publish_nowait(Event("tree", 0, "s"))
    await within(bus.flush())
    assert len(leaves) == 8
    bus.close()


@pytest.mark.asyncio
async def test_flush_with_nothing_published_or_no_subscribers_returns():
    bus = EventBus()
    await within(bus.flush(), 2)
    bus.publish_nowait(Event("nobody.listens", {}, "s"))
    await within(bus.flush(), 2)
    assert bus.engine_stats()["pending"] == 0
    bus.close()


@pytest.mark.asyncio
async def test_reentrancy_handlers_call_every_bus_method_under_a_watchdog():
    bus = EventBus()
    log: list = []

    async def reentrant(event):
        # Every bus method, from inside a handler the dispatcher runs.
        await bus.flush()  # returns at once: it would wait for this very call
        await asyncio.wait_for(asyncio.ensure_future(bus.flush()), 2)  # a child task too
        bus.subscribe("late", lambda e: log.append("late"), "r")
        await bus.publish(Event("inline", event.data, "r"))
        bus.publish_nowait(Event("late", event.data, "r"))
        bus.unsubscribe("never", "r")
        bus.get_history(5)
        bus.get_subscriptions()
        bus.get_stats()
        log.append("reentrant")

    bus.subscribe("go", reentrant, "r")
    bus.subscribe("inline", lambda e: log.append("inline"), "r")
    bus.publish_nowait(Event("go", 1, "s"))
    await within(bus.flush(), 5)
    assert log.count("reentrant") == 1 and log.count("inline") == 1
    assert log.count("late") == 1
    bus.close()


@pytest.mark.asyncio
async def test_inline_handler_awaiting_flush_does_not_deadlock():
    bus = EventBus()
    seen: list = []
    bus.subscribe("bg", lambda e: seen.append("bg"), "p")

    async def waits_for_background(event):
        bus.publish_nowait(Event("bg", {}, "h"))
        await bus.flush()
        seen.append("after flush")

    bus.subscribe("fg", waits_for_background, "p")
    await within(bus.publish(Event("fg", {}, "s")), 5)
    assert seen == ["bg", "after flush"]
    bus.close()


@pytest.mark.asyncio
async def test_unsubscribed_handler_is_never_called_again_even_with_calls_queued():
    bus = EventBus()
    seen: list = []
    sub = bus.subscribe("x", lambda e: seen.append(e.data), "p")
    for i in range(10):
        bus.publish_nowait(Event("x", i, "s"))
    sub.unsubscribe()
    await within(bus.flush())
    assert seen == []
    bus.close()


@pytest.mark.asyncio
async def test_handler_errors_are_isolated_on_the_nowait_path_too(caplog):
    bus = EventBus()
    ok: list = []

    def bad(event):
        raise KeyError("nope")

    bus.subscribe("x", bad, "bad")
    bus.subscribe("x", lambda e: ok.append(1), "good")
    bus.publish_nowait(Event("x", {}, "s"))
    await within(bus.flush())
    assert ok == [1]
    assert bus.get_stats()["handler_errors"] == 1
    assert "Error in bad handling x: 'nope'" in caplog.text
    bus.close()


@pytest.mark.asyncio
async def test_overflow_error_refuses_and_counts():
    bus = EventBus(capacity=4, overflow=Overflow.ERROR)
    bus.subscribe("x", lambda e: None, "p")
    accepted = 0
    with pytest.raises(QueueFull, match="backlog is full"):
        for _ in range(100):
            bus.publish_nowait(Event("x", {}, "s"))
            accepted += 1
    assert accepted == 4
    assert bus.engine_stats()["rejected"] == 1
    await within(bus.flush())
    bus.publish_nowait(Event("x", {}, "s"))  # room again
    await within(bus.flush())
    assert bus.get_stats()["events_dispatched"] == 5
    bus.close()


@pytest.mark.asyncio
async def test_overflow_shed_drops_the_new_events_and_counts():
    bus = EventBus(capacity=8, overflow="shed")
    got: list = []
    bus.subscribe("x", lambda e: got.append(e.data), "p")
    for i in range(100):
        bus.publish_nowait(Event("x", i, "s"))
    await within(bus.flush())
    stats = bus.engine_stats()
    assert stats["dropped"] + len(got) == 100
    assert stats["dropped"] > 0
    assert got[:8] == list(range(8)) and got == sorted(got)  # the first fill the bound
    assert bus.get_stats()["events_published"] == 100
    bus.close()


@pytest.mark.asyncio
async def test_overflow_block_on_the_loops_own_thread_overshoots_then_refuses():
    bus = EventBus(capacity=4)
    bus.subscribe("x", lambda e: None, "p")
    n = 0
    with pytest.raises(QueueFull):
        for _ in range(100):
            bus.publish_nowait(Event("x", {}, "s"))
            n += 1
    assert n == 8  # twice the bound: the loop never waits for itself
    await within(bus.flush())
    bus.close()


@pytest.mark.asyncio
async def test_overflow_block_from_another_thread_waits_for_the_loop_losing_nothing():
    bus = EventBus(capacity=16)
    got: list = []
    bus.subscribe("x", lambda e: got.append(e.data), "p")
    bus.bind_loop()

    def flood():
        for i in range(2000):
            bus.publish_nowait(Event("x", i, "thread"))

    thread = threading.Thread(target=flood)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.001)
    thread.join()
    await within(bus.flush())
    assert got == list(range(2000))
    assert bus.engine_stats()["dropped"] == 0
    bus.close()


def test_publish_nowait_without_a_loop_or_home_loop_says_what_to_do():
    bus = EventBus()
    with pytest.raises(RuntimeError, match="bind_loop"):
        bus.publish_nowait(Event("x", {}, "s"))
    bus.close()


@pytest.mark.asyncio
async def test_replay_gives_the_last_n_matching_events_then_live_ones():
    bus = EventBus()
    for i in range(10):
        await bus.publish(Event("score" if i % 2 else "other", i, "s"))
    got: list = []
    sub = bus.subscribe("score", lambda e: got.append(e.data), "late", replay=3)
    assert sub.replayed == 3
    assert got == [5, 7, 9]
    await bus.publish(Event("score", 11, "s"))
    assert got == [5, 7, 9, 11]


@pytest.mark.asyncio
async def test_replay_with_a_coroutine_handler_keeps_order_with_live_events():
    bus = EventBus()
    for i in range(5):
        await bus.publish(Event("s", i, "src"))
    got: list = []

    async def slow(event):
        await asyncio.sleep(0.001)
        got.append(event.data)

    bus.subscribe("s", slow, "late", replay=5)
    for i in range(5, 10):
        bus.publish_nowait(Event("s", i, "src"))
    await bus.publish(Event("s", 10, "src"))
    await within(bus.flush())
    assert got == list(range(11))


@pytest.mark.asyncio
async def test_replay_meets_a_flood_from_another_thread_with_no_gap_and_no_duplicate():
    bus = EventBus(history_size=100_000)
    bus.bind_loop()
    stop = threading.Event()
    published = [0]

    def flood():
        i = 0
        while not stop.is_set() and i < 50_000:
            bus.publish_nowait(Event("f", i, "thread"))
            i += 1
        published[0] = i

    thread = threading.Thread(target=flood)
    thread.start()
    await asyncio.sleep(0.01)
    got: list = []
    bus.subscribe("f", lambda e: got.append(e.data), "late", replay=100_000)
    await asyncio.sleep(0.01)
    stop.set()
    while thread.is_alive():
        await asyncio.sleep(0.001)
    await within(bus.flush())
    assert got == list(range(published[0]))
    bus.close()


@pytest.mark.asyncio
async def test_a_handler_publishing_past_the_bound_never_waits_for_itself():
    bus = EventBus(capacity=8)  # Overflow.BLOCK
    outcome: list = []

    def flooder(event):
        try:
            for i in range(100):
                bus.publish_nowait(Event("sink", i, "h"))
        except QueueFull:
            outcome.append(i)

    bus.subscribe("go", flooder, "p")
    bus.subscribe("sink", lambda e: None, "p")
    bus.publish_nowait(Event("go", {}, "s"))
    await within(bus.flush(), 5)
    # It went past the bound by as much again (the "go" event is one of the
    # waiting ones), then was refused instead of waiting for its own loop.
    assert outcome == [15]
    bus.close()


@pytest.mark.asyncio
async def test_a_handler_closing_the_bus_does_not_hang():
    bus = EventBus()
    seen: list = []

    async def closer(event):
        seen.append(bus.close())

    bus.subscribe("stop", closer, "p")
    bus.publish_nowait(Event("stop", {}, "s"))
    await within(bus.flush(), 5)
    assert seen == [0] and bus.closed
    await within(bus.publish(Event("after", {}, "s")), 5)  # await publish still works: no engine needed
    with pytest.raises(RuntimeError, match="closed"):
        bus.publish_nowait(Event("after", {}, "s"))


@pytest.mark.asyncio
async def test_handler_awaiting_a_cancelled_task_does_not_stall_flush(caplog):
    # Regression: a handler's own CancelledError (it awaited a cancelled
    # task) was taken for the dispatcher's cancellation: the dispatcher kept
    # the rest as leftover, never rescheduled, and flush hung.
    bus = EventBus()
    seen = []

    async def handler(e):
        if e.data == 0:
            t = asyncio.ensure_future(asyncio.sleep(10))
            t.cancel()
            await t
        seen.append(e.data)

    bus.subscribe("x", handler, "p")
    for i in range(3):
        bus.publish_nowait(Event("x", i, "s"))
    await within(bus.flush(), 3)
    assert seen == [1, 2]
    assert bus.get_stats()["handler_errors"] == 1
    assert "Error in p handling x" in caplog.text
    bus.close()


@pytest.mark.asyncio
async def test_two_replaying_handlers_that_flush_do_not_wait_for_each_other():
    # Regression: flush waited for every running replay but its own; two
    # replays whose handlers flush waited for each other forever.
    bus = EventBus()
    for i in range(2):
        await bus.publish(Event("q", i, "s"))
    seen = []

    def make(tag):
        async def h(e):
            await bus.flush()
            seen.append((tag, e.data))

        return h

    bus.subscribe("q", make("a"), "a", replay=2)
    bus.subscribe("q", make("b"), "b", replay=2)
    await within(bus.flush(), 3)
    assert sorted(seen) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    bus.close()
