"""Stats: trivia participation and wins per user, and chat lines per user.

Listens to ``trivia.*`` and ``chat.message``; publishes ``stats.updated``
``{winner, wins}`` when a round ends. Its counters live in ``config["store"]``
(a dict the bot owns), so they survive a hot reload of the plugin's code.
"""

from typing import Any, Dict

from switchboard_bus import Event, Plugin

VERSION = "1"


class StatsPlugin(Plugin):
    """Stats plugin that tracks trivia participation."""

    name = "stats"
    version = VERSION
    description = "trivia and chat statistics"

    async def setup(self) -> None:
        """Subscribe to trivia events."""
        self.store: Dict[str, Any] = self.config.setdefault("store", {})
        for key in ("rounds", "answers", "wins", "lines", "handled_by"):
            self.store.setdefault(key, {} if key != "rounds" else 0)
        self.subscribe("trivia.*", self.on_trivia_event)
        self.subscribe("chat.message", self.on_message)

    async def on_trivia_event(self, event: Event) -> None:
        """Handle trivia events."""
        if event.name == "trivia.started":
            self.logger.info(f"Trivia started: {event.data['question']}")
            self.store["rounds"] += 1
        elif event.name == "trivia.answer":
            user = event.data["user"]
            self.store["answers"][user] = self.store["answers"].get(user, 0) + 1
        elif event.name == "trivia.ended":
            winner = event.data["winner"]
            # Update stats database
            await self.update_trivia_stats(winner)

    async def update_trivia_stats(self, winner: str) -> None:
        wins = self.store["wins"][winner] = self.store["wins"].get(winner, 0) + 1
        await self.publish("stats.updated", {"winner": winner, "wins": wins})

    def on_message(self, event: Event) -> None:
        user = event.data["user"]
        self.store["lines"][user] = self.store["lines"].get(user, 0) + 1
        by = self.store["handled_by"]
        by[VERSION] = by.get(VERSION, 0) + 1
