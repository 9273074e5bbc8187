"""The rest of the seed's testing strategy: unsubscribe, history,
statistics, several plugins communicating, hot reload preserving
subscriptions."""

import logging

import pytest

from switchboard_bus import Event, EventBus, EventPriority, Plugin, PluginManager


async def collect(bus: EventBus, pattern: str, plugin: str) -> list:
    seen: list = []

    async def handler(event: Event) -> None:
        seen.append(event.name)

    bus.subscribe(pattern, handler, plugin)
    return seen


@pytest.mark.asyncio
async def test_unsubscribe_stops_delivery_for_that_plugin_only():
    bus = EventBus()
    a = await collect(bus, "trivia.*", "a")
    b = await collect(bus, "trivia.*", "b")
    await bus.publish(Event("trivia.started", {}, "trivia"))
    bus.unsubscribe("trivia.*", "a")
    await bus.publish(Event("trivia.ended", {}, "trivia"))
    assert a == ["trivia.started"]
    assert b == ["trivia.started", "trivia.ended"]
    assert bus.get_subscriptions() == {"trivia.*": ["b"]}


@pytest.mark.asyncio
async def test_unsubscribe_of_unknown_pattern_or_plugin_is_a_no_op():
    bus = EventBus()
    a = await collect(bus, "x", "a")
    bus.unsubscribe("y", "a")
    bus.unsubscribe("x", "nobody")
    await bus.publish(Event("x", {}, "s"))
    assert a == ["x"]


@pytest.mark.asyncio
async def test_unsubscribe_all_removes_every_pattern_of_the_plugin():
    bus = EventBus()
    a1 = await collect(bus, "trivia.*", "a")
    a2 = await collect(bus, "*", "a")
    b = await collect(bus, "quote.added", "b")
    bus.unsubscribe_all("a")
    await bus.publish(Event("trivia.started", {}, "t"))
    await bus.publish(Event("quote.added", {}, "q"))
    assert (a1, a2, b) == ([], [], ["quote.added"])
    assert bus.get_subscriptions("a") == {}
    assert bus.get_subscriptions() == {"quote.added": ["b"]}


@pytest.mark.asyncio
async def test_subscription_handle_unsubscribes_only_itself():
    bus = EventBus()
    seen: list = []
    first = bus.subscribe("x", lambda e: seen.append(1), "p")
    bus.subscribe("x", lambda e: seen.append(2), "p")
    assert first.unsubscribe() is True
    assert first.unsubscribe() is False
    await bus.publish(Event("x", {}, "s"))
    assert seen == [2]


def test_get_subscriptions_in_the_seeds_order_and_filter():
    bus = EventBus()
    noop = lambda e: None  # noqa: E731
    bus.subscribe("trivia.*", noop, "stats")
    bus.subscribe("quote.added", noop, "search")
    bus.subscribe("trivia.*", noop, "logger")
    bus.subscribe("*", noop, "monitor")
    assert bus.get_subscriptions() == {
        "trivia.*": ["stats", "logger"],
        "quote.added": ["search"],
        "*": ["monitor"],
    }
    assert list(bus.get_subscriptions()) == ["trivia.*", "quote.added", "*"]
    assert bus.get_subscriptions("logger") == {"trivia.*": ["logger"]}


@pytest.mark.asyncio
async def test_handlers_run_in_the_seeds_order_pattern_first_seen_then_subscription():
    bus = EventBus()
    order: list = []
    bus.subscribe("a.*", lambda e: order.append("a.* first"), "p1")
    bus.subscribe("a.b", lambda e: order.append("a.b"), "p2")
    bus.subscribe("a.*", lambda e: order.append("a.* second"), "p3")
    bus.subscribe("*", lambda e: order.append("*"), "p4")
    await bus.publish(Event("a.b", {}, "s"))
    assert order == ["a.* first", "a.* second", "a.b", "*"]


@pytest.mark.asyncio
async def test_history_most_recent_first_with_count_and_pattern():
    bus = EventBus(history_size=3)
    for name in ["trivia.started", "quote.added", "trivia.ended", "trivia.won"]:
        await bus.publish(Event(name, {}, "s"))
    assert [e.name for e in bus.get_history()] == ["trivia.won", "trivia.ended", "quote.added"]
    assert [e.name for e in bus.get_history(count=2)] == ["trivia.won", "trivia.ended"]
    assert [e.name for e in bus.get_history(event_pattern="trivia.*")] == ["trivia.won", "trivia.ended"]
    assert [e.name for e in bus.get_history(1, "quote.*")] == ["quote.added"]
    # As the seed: a count of 0 and an empty pattern mean "no limit".
    assert len(bus.get_history(count=0)) == 3
    assert len(bus.get_history(event_pattern="")) == 3


@pytest.mark.asyncio
async def test_history_keeps_the_very_event_objects():
    bus = EventBus()
    payload = {"key": object()}
    event = Event("x", payload, "s")
    await bus.publish(event)
    assert bus.get_history()[0] is event
    assert bus.get_history()[0].data["key"] is payload["key"]


@pytest.mark.asyncio
async def test_history_size_zero_keeps_nothing():
    bus = EventBus(history_size=0)
    await bus.publish(Event("x", {}, "s"))
    assert bus.get_history() == []


@pytest.mark.asyncio
async def test_statistics_count_published_dispatched_and_errors(caplog):
    bus = EventBus(logger=logging.getLogger("test.bus"))

    async def ok(event):
        pass

    async def bad(event):
        raise RuntimeError("boom")

    bus.subscribe("x", ok, "good")
    bus.subscribe("x", bad, "bad")
    with caplog.at_level(logging.ERROR, logger="test.bus"):
        await bus.publish(Event("x", {}, "s"))
        await bus.publish(Event("nobody", {}, "s"))
    assert bus.get_stats() == {"events_published": 2, "events_dispatched": 2, "handler_errors": 1}
    # Logged as the seed logs it.
    assert [r.getMessage() for r in caplog.records] == ["Error in bad handling x: boom"]


@pytest.mark.asyncio
async def test_get_stats_is_a_copy():
    bus = EventBus()
    stats = bus.get_stats()
    stats["events_published"] = 99
    assert bus.get_stats()["events_published"] == 0


@pytest.mark.asyncio
async def test_plain_callables_and_coroutine_functions_both_work():
    bus = EventBus()
    seen: list = []

    def plain(event):
        seen.append("plain")

    async def coro(event):
        seen.append("coro")

    class Callable:
        async def __call__(self, event):
            seen.append("callable object")

    bus.subscribe("x", plain, "p")
    bus.subscribe("x", coro, "p")
    bus.subscribe("x", Callable(), "p")
    await bus.publish(Event("x", {}, "s"))
    assert seen == ["plain", "coro", "callable object"]


@pytest.mark.asyncio
async def test_publish_returns_after_slow_coroutine_handlers_ran():
    import asyncio

    bus = EventBus()
    done: list = []

    async def slow(event):
        await asyncio.sleep(0.01)
        done.append(event.name)

    bus.subscribe("x", slow, "p")
    await bus.publish(Event("x", {}, "s"))
    assert done == ["x"]


@pytest.mark.asyncio
async def test_handlers_run_on_the_awaiting_loop_and_can_use_its_objects():
    import asyncio

    bus = EventBus()
    loops: list = []
    queue: asyncio.Queue = asyncio.Queue()

    async def handler(event):
        loops.append(asyncio.get_running_loop())
        await queue.put(event.name)

    bus.subscribe("x", handler, "p")
    await bus.publish(Event("x", {}, "s"))
    bus.publish_nowait(Event("x", {}, "s"))
    await bus.flush()
    assert loops == [asyncio.get_running_loop()] * 2
    assert queue.qsize() == 2


class Trivia(Plugin):
    name = "trivia"

    async def start(self, question: str) -> None:
        await self.publish("trivia.started", {"question": question, "timeout": 30})

    async def end(self, winner: str) -> None:
        await self.publish("trivia.ended", {"winner": winner, "answer": "4"}, EventPriority.HIGH)


class Stats(Plugin):
    name = "stats"

    async def setup(self) -> None:
        self.started = 0
        self.winners: list = []
        self.subscribe("trivia.*", self.on_trivia_event)

    async def on_trivia_event(self, event: Event) -> None:
        if event.name == "trivia.started":
            self.started += 1
        elif event.name == "trivia.ended":
            self.winners.append(event.data["winner"])
            await self.publish("stats.updated", {"winner": event.data["winner"]})


class Announcer(Plugin):
    name = "announcer"

    async def setup(self) -> None:
        self.said: list = []
        self.subscribe("stats.updated", self.announce)

    def announce(self, event: Event) -> None:
        self.said.append(f"{event.data['winner']} leads (from {event.source})")


@pytest.mark.asyncio
async def test_several_plugins_communicate_through_the_bus():

    manager = PluginManager()
    # Three plugins, each loaded from this module by class.
    loaded = {}
    for cls in (Trivia, Stats, Announcer):
        loaded[cls.name] = cls(manager.bot)
        await loaded[cls.name].setup()
    await loaded["trivia"].start("2+2?")
    await loaded["trivia"].end("ada")
    assert loaded["stats"].started == 1
    assert loaded["stats"].winners == ["ada"]
    assert loaded["announcer"].said == ["ada leads (from stats)"]
    assert manager.event_bus.get_history(event_pattern="stats.*")[0].source == "stats"
    for plugin in loaded.values():
        await plugin.teardown()
    assert manager.event_bus.get_subscriptions() == {}


PLUGIN_V1 = '''
from switchboard_bus import Plugin

class Counter(Plugin):
    name = "counter"
    version = "1"

    async def setup(self):
        self.subscribe("count.*", self.on_count)
        self.subscribe("reset", self.on_reset)

    async def on_count(self, event):
        event.data["seen"].append(("v1", event.name))

    def on_reset(self, event):
        event.data["seen"].append(("v1", "reset"))
'''


@pytest.mark.asyncio
async def test_hot_reload_preserves_subscriptions_and_runs_the_new_code(tmp_path):
    path = tmp_path / "counter_plugin.py"
    path.write_text(PLUGIN_V1)
    manager = PluginManager()
    bus = manager.event_bus
    first = await manager.load(path)
    assert first.metadata.version == "1"
    seen: list = []
    await bus.publish(Event("count.up", {"seen": seen}, "t"))
    path.write_text(PLUGIN_V1.replace('"1"', '"2"').replace('"v1"', '"v2"'))
    second = await manager.reload("counter")
    assert second is manager.plugins["counter"] and second is not first
    assert second.metadata.version == "2"
    assert bus.get_subscriptions() == {"count.*": ["counter"], "reset": ["counter"]}
    await bus.publish(Event("count.down", {"seen": seen}, "t"))
    await bus.publish(Event("reset", {"seen": seen}, "t"))
    assert seen == [("v1", "count.up"), ("v2", "count.down"), ("v2", "reset")]
    await manager.unload("counter")
    assert bus.get_subscriptions() == {}
