"""Reliability at the language boundary: bad arguments, BaseException from
handlers, closed event loops, interpreter exit, Ctrl-C, the GIL."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import within
from switchboard_bus import Event, EventBus, Overflow


def noop(event):
    pass


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda b: b.subscribe(42, noop, "p"), TypeError, "event_pattern must be a str, not int: 42"),
        (lambda b: b.subscribe("", noop, "p"), ValueError, "invalid pattern ''"),
        (lambda b: b.subscribe("a\0b", noop, "p"), ValueError, "NUL"),
        (lambda b: b.subscribe("x" * 5000, noop, "p"), ValueError, "5000 bytes long, more than the limit of 4096"),
        (lambda b: b.subscribe("x", "not callable", "p"), TypeError, "handler must be callable"),
        (lambda b: b.subscribe("x", noop, None), TypeError, "plugin_name must be a str, not NoneType"),
        (lambda b: b.subscribe("x", noop, "p", replay=-1), ValueError, "replay must not be negative, got -1"),
        (lambda b: b.subscribe("x", noop, "p", replay="3"), TypeError, "replay must be an int"),
        (lambda b: b.get_history(-1), ValueError, "count must not be negative, got -1"),
        (lambda b: b.get_history("3"), TypeError, "count must be an int or None, not str"),
        (lambda b: b.get_history(None, 7), TypeError, "event_pattern must be a str"),
        (lambda b: b.get_history(None, "a\0"), ValueError, "NUL"),
        (lambda b: b.unsubscribe(None, "p"), TypeError, "event_pattern must be a str"),
        (lambda b: b.unsubscribe_all(3), TypeError, "plugin_name must be a str"),
        (lambda b: b.get_subscriptions(3), TypeError, "plugin_name must be a str"),
        (lambda b: b.publish_nowait("trivia.started"), TypeError, "expected an Event, not str"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    bus = EventBus()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(bus)
    bus.close()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"history_size": -1}, ValueError, "history_size must not be negative"),
        ({"history_size": "100"}, TypeError, "history_size must be an int"),
        ({"capacity": 0}, ValueError, "invalid capacity 0"),
        ({"overflow": "drop"}, ValueError, "overflow must be one of"),
        ({"logger": "log"}, TypeError, "logger must be a logging.Logger"),
        ({"workers": 0}, ValueError, "invalid workers 0"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        EventBus(**kwargs)


@pytest.mark.asyncio
async def test_publish_of_a_non_event_is_a_type_error():
    bus = EventBus()
    with pytest.raises(TypeError, match="expected an Event, not dict"):
        await bus.publish({"name": "x"})
    with pytest.raises(TypeError, match="Event.name must be a str, not int"):
        await bus.publish(Event(3, {}, "s"))
    bus.close()


@pytest.mark.asyncio
async def test_invalid_priority_is_a_value_error_on_the_nowait_path():
    bus = EventBus()
    with pytest.raises(ValueError, match="invalid priority 7"):
        bus.publish_nowait(Event("x", {}, "s", priority=7))
    bus.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
async def test_base_exception_from_a_handler_under_await_publish_propagates_as_in_the_seed(exc):
    bus = EventBus()
    after: list = []

    async def raiser(event):
        raise exc()

    bus.subscribe("x", raiser, "bad")
    bus.subscribe("x", lambda e: after.append(1), "later")
    with pytest.raises(exc):
        await bus.publish(Event("x", {}, "s"))
    # Not an Exception, so not a handler error; the later handler did not run.
    assert bus.get_stats()["handler_errors"] == 0
    assert bus.engine_stats()["handler_base_exceptions"] == 1
    assert after == []
    # The bus still works.
    await bus.publish(Event("y", {}, "s"))
    bus.close()


def test_base_exception_from_a_nowait_handler_stops_the_loop_and_keeps_the_rest():
    bus = EventBus()
    seen: list = []

    def handler(event):
        if event.data == 2:
            raise KeyboardInterrupt
        seen.append(event.data)

    bus.subscribe("x", handler, "p")

    async def publish_all():
        for i in range(5):
            bus.publish_nowait(Event("x", i, "s"))
        await within(bus.flush())

    loop = asyncio.new_event_loop()
    try:
        # As asyncio does for any callback: it propagates out of the loop.
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(publish_all())
        assert seen == [0, 1]
        assert bus.engine_stats()["handler_base_exceptions"] == 1
        # The calls not yet run were kept: running the loop again runs them.
        loop.run_until_complete(within(bus.flush()))
        assert seen == [0, 1, 3, 4]
    finally:
        bus.close()
        loop.close()


def test_a_loop_closed_under_pending_handlers_is_counted_not_a_hang():
    bus = EventBus()
    started = []

    async def slow(event):
        started.append(event.data)
        await asyncio.sleep(3600)

    bus.subscribe("x", slow, "p")

    async def leave_work_behind():
        for i in range(10):
            bus.publish_nowait(Event("x", i, "s"))
        await asyncio.sleep(0.05)

    asyncio.run(leave_work_behind())  # cancels the dispatcher, closes the loop
    assert started == [0]

    async def later():
        await within(bus.flush(), 2)
        return bus.engine_stats()

    stats = asyncio.run(later())
    assert stats["lost_loop_closed"] == 9, stats  # the one cancelled mid-call was handled
    assert stats["pending"] == 0
    bus.close()


def run_python(code: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def test_interpreter_exit_with_a_live_bus_neither_hangs_nor_crashes():
    result = run_python(
        """
        import asyncio, logging, threading
        from switchboard_bus import Event, EventBus
        logging.basicConfig()
        bus = EventBus()
        async def never(event):
            await asyncio.sleep(3600)
        bus.subscribe("*", never, "p")
        async def main():
            bus.bind_loop()
            for i in range(1000):
                bus.publish_nowait(Event("x", i, "s"))
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        # A publisher thread still running at exit, and the loop left open.
        threading.Thread(target=lambda: [bus.get_stats() for _ in range(10**6)], daemon=True).start()
        print("exiting")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "exiting" in result.stdout
    assert "event bus closed at interpreter exit: 1000 handler calls not run" in result.stderr


def test_ctrl_c_interrupts_a_publisher_blocked_on_a_full_loop():
    result = run_python(
        """
        import asyncio, os, signal, threading, time
        from switchboard_bus import Event, EventBus
        # A process started in the background by a non-interactive shell
        # (as CI may be) inherits SIGINT ignored: restore Python's handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        bus = EventBus(capacity=2)
        ready = threading.Event()
        def stuck(event):
            time.sleep(3600)   # a handler that never returns blocks its loop
        bus.subscribe("x", stuck, "p")
        def run_loop():
            loop = asyncio.new_event_loop()
            async def bind():
                bus.bind_loop()
                ready.set()
            loop.run_until_complete(bind())
            loop.run_forever()
        threading.Thread(target=run_loop, daemon=True).start()
        ready.wait()
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        try:
            for i in range(10):
                bus.publish_nowait(Event("x", i, "main"))
            print("not blocked")
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - started:.1f}s")
        os._exit(0)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "interrupted after" in result.stdout, result.stdout + result.stderr


@pytest.mark.asyncio
async def test_the_gil_is_released_while_a_publisher_waits_for_room():
    bus = EventBus(capacity=1)
    release = asyncio.Event()
    handled: list = []

    async def gate(event):
        await release.wait()
        handled.append(event.data)

    bus.subscribe("x", gate, "p")
    bus.bind_loop()
    thread = threading.Thread(target=lambda: [bus.publish_nowait(Event("x", i, "t")) for i in range(3)])
    thread.start()
    # While the thread waits for room, this loop keeps running Python code:
    # it could not if the waiting thread held the GIL.
    ticks = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        ticks += 1
    assert thread.is_alive(), "the publisher should be waiting for room"
    assert ticks > 5
    release.set()
    while thread.is_alive():
        await asyncio.sleep(0.005)
    await within(bus.flush())
    assert handled == [0, 1, 2]
    bus.close()


def test_close_is_idempotent_and_a_closed_bus_refuses_nowait():
    bus = EventBus()
    assert bus.close() == 0
    assert bus.close() == 0
    assert bus.closed

    async def main():
        with pytest.raises(RuntimeError, match="closed"):
            bus.publish_nowait(Event("x", {}, "s"))

    asyncio.run(main())


def test_a_bus_in_a_reference_cycle_is_collected():
    import gc
    import weakref

    def make():
        bus = EventBus()
        # The handler holds the bus, the bus the handler: a cycle through the
        # native registry, which the garbage collector must see through.
        bus.subscribe("x", lambda e: bus.get_stats(), "p")
        asyncio.run(bus.publish(Event("x", {}, "s")))
        return weakref.ref(bus)

    refs = [make() for _ in range(3)]
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


# Regression: Python objects were made while the registry's lock was held
# (get_subscriptions, subscribe's replay list, the index rebuild, history).
# Making one can run the garbage collector, and so a finalizer.


def test_finalizer_calling_the_bus_during_get_subscriptions_does_not_deadlock():
    # The finalizer re-locks the (non-reentrant) lock on the same thread.
    code = """
        import gc
        from switchboard_bus import Event, EventBus
        bus = EventBus()
        for i in range(2000):
            bus.subscribe(f"p{i}.*", print, "p")
        class Finalized:
            def __init__(self):
                self.me = self
            def __del__(self):
                bus.get_stats()
        for call in (bus.get_subscriptions, lambda: bus.get_history(), lambda: bus.subscribe("p1.*", print, "q", replay=5)):
            gc.collect()
            Finalized()
            call()
        print("ok")
    """
    try:
        result = run_python(code, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlocked")
    assert "ok" in result.stdout, result.stderr


def test_finalizer_letting_another_thread_run_under_the_registry_lock_does_not_deadlock():
    # Across threads: a finalizer run inside the locked section hands the GIL
    # to a second thread, which waits for the lock holding the GIL.
    code = """
        import sys, threading, time
        from switchboard_bus import EventBus
        sys.setswitchinterval(0.0005)
        bus = EventBus()
        for i in range(3000):
            bus.subscribe(f"p{i}.*", print, "p")
        class Finalized:
            def __init__(self): self.me = self
            def __del__(self): sum(range(20000))
        stop = False
        def a():
            while not stop:
                Finalized(); bus.get_subscriptions()
        def b():
            while not stop:
                bus.get_stats()
        ts = [threading.Thread(target=a, daemon=True), threading.Thread(target=b, daemon=True)]
        for t in ts: t.start()
        time.sleep(3)
        stop = True
        for t in ts: t.join(2)
        print("ok")
    """
    try:
        result = run_python(code, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlocked")
    assert "ok" in result.stdout, result.stderr


# Regression: a thread blocked under Overflow.BLOCK waited forever once its
# loop closed, and so did the interpreter's exit, which joins threads before
# atexit (where the bus is closed).


def test_interpreter_exit_with_a_thread_blocked_on_a_closed_loop_does_not_hang():
    code = """
        import asyncio, threading
        from switchboard_bus import Event, EventBus
        bus = EventBus(capacity=4)
        async def slow(e):
            await asyncio.sleep(3600)
        bus.subscribe("x", slow, "p")
        started = threading.Event()
        def producer():
            started.set()
            try:
                for i in range(100):
                    bus.publish_nowait(Event("x", i, "t"))
            except RuntimeError as e:
                print("producer:", e, flush=True)
        async def main():
            bus.bind_loop()
            threading.Thread(target=producer).start()
            started.wait()
            await asyncio.sleep(0.05)
        asyncio.run(main())
        print("main done", flush=True)
    """
    try:
        result = run_python(code, timeout=15)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung at exit; stdout so far: {e.stdout!r}")
    assert result.returncode == 0, result.stderr
    assert "main done" in result.stdout and "producer: " in result.stdout, result.stdout


def test_thread_blocked_when_the_loop_closes_is_released():
    bus = EventBus(capacity=2)

    async def slow(e):
        await asyncio.sleep(3600)

    bus.subscribe("x", slow, "p")
    loop = asyncio.new_event_loop()

    async def bind():
        bus.bind_loop()

    loop.run_until_complete(bind())
    outcome = []

    def producer():
        try:
            for i in range(10):
                bus.publish_nowait(Event("x", i, "t"))
            outcome.append("all accepted")
        except RuntimeError as e:
            outcome.append(e)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    loop.run_until_complete(asyncio.sleep(0.3))
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    t.join(5)
    alive = t.is_alive()
    stats = bus.engine_stats()
    bus.close()
    assert not alive, "a publisher stays blocked on a loop that closed"
    assert isinstance(outcome[0], RuntimeError) and "closed while waiting for room" in str(outcome[0])
    # The one running when the loop closed, the one queued, the one refused.
    assert stats["lost_loop_closed"] >= 2, stats


def test_thread_publishing_to_a_loop_that_is_gone_raises_not_hangs():
    bus = EventBus(capacity=2)
    bus.subscribe("x", lambda e: None, "p")

    async def bind():
        bus.bind_loop()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(bind())
    loop.close()
    errors = []

    def producer():
        try:
            for i in range(5):
                bus.publish_nowait(Event("x", i, "t"))
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive() and errors
    bus.close()


def test_close_from_another_thread_wakes_a_waiting_flush():
    # Regression: close() from another thread set the flush's future and
    # removed the reader from that thread, which does not wake the loop: the
    # flush returned only when something else woke it.
    bus = EventBus()

    async def stuck(e):
        await asyncio.sleep(3600)

    bus.subscribe("x", stuck, "p")

    async def main():
        bus.publish_nowait(Event("x", 1, "s"))
        threading.Timer(0.1, bus.close).start()
        asyncio.get_running_loop().call_later(2.0, lambda: None)
        t = time.monotonic()
        await within(bus.flush(), 5)
        return time.monotonic() - t

    took = asyncio.run(main())
    assert took < 1.0, f"flush returned {took:.1f}s after a close from another thread"
