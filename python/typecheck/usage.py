"""Code that uses switchboard_bus the way a bot does, checked with
``mypy --strict`` (the package's stubs and annotations must carry it)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List

from switchboard_bus import (
    Event,
    EventBus,
    EventPriority,
    Overflow,
    Plugin,
    PluginManager,
    QueueFull,
    Subscription,
)


class Scores(Plugin):
    name = "scores"

    async def setup(self) -> None:
        self.totals: Dict[str, int] = {}
        self.subscribe("trivia.ended", self.on_end)
        self.subscribe("trivia.*", self.count, replay=10)

    async def on_end(self, event: Event) -> None:
        winner: str = event.data["winner"]
        self.totals[winner] = self.totals.get(winner, 0) + 1
        await self.publish("scores.changed", {"totals": dict(self.totals)}, EventPriority.LOW)

    def count(self, event: Event) -> None:
        self.logger.debug("seen %s", event)


async def main() -> None:
    bus = EventBus(history_size=50, logger=logging.getLogger("bot"), capacity=1024, overflow=Overflow.SHED)
    seen: List[str] = []

    async def on_any(event: Event) -> None:
        seen.append(str(event))

    sub: Subscription = bus.subscribe("*", on_any, "monitor")
    bus.subscribe("quote.added", lambda e: seen.append(e.source), "search", replay=5)
    await bus.publish(Event("trivia.started", {"question": "2+2?"}, "trivia", EventPriority.HIGH))
    try:
        bus.publish_nowait(Event("quote.added", {"id": 7}, "quote"))
    except QueueFull:
        pass
    await bus.flush()
    history: List[Event] = bus.get_history(count=5, event_pattern="trivia.*")
    stats: Dict[str, int] = bus.get_stats()
    subs: Dict[str, List[str]] = bus.get_subscriptions("monitor")
    engine: Dict[str, int] = bus.engine_stats()
    assert sub.unsubscribe()
    bus.unsubscribe("quote.added", "search")
    bus.unsubscribe_all("monitor")

    manager = PluginManager(event_bus=bus)
    plugin: Plugin = await manager.load("typing_plugins", config={"x": 1})
    await manager.reload(plugin.metadata.name)
    names: List[str] = manager.list()
    await manager.unload(names[0])
    await manager.shutdown()
    data: Any = (history, stats, subs, engine)
    print(data)


if __name__ == "__main__":
    asyncio.run(main())
