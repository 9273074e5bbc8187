"""Search: indexes every ``quote.added`` and answers ``!search <word>``.

Subscribes to ``quote.added`` with a replay of the last 1,000 (a late
joiner catches up from history); publishes ``search.results``
``{query, ids}``.
"""

from typing import Dict, Set

from switchboard_bus import Event, Plugin


class SearchPlugin(Plugin):
    """Indexes quotes by word."""

    name = "search"
    description = "word search over the quotes"

    async def setup(self) -> None:
        self.index: Dict[str, Set[int]] = {}
        self.subscribe("quote.added", self.on_added, replay=1000)
        self.subscribe("chat.message", self.on_message)

    def on_added(self, event: Event) -> None:
        for word in event.data["text"].lower().split():
            self.index.setdefault(word, set()).add(event.data["id"])

    async def on_message(self, event: Event) -> None:
        text: str = event.data["text"]
        if text.startswith("!search "):
            query = text[len("!search ") :].strip().lower()
            await self.publish("search.results", {"query": query, "ids": sorted(self.index.get(query, ()))})
