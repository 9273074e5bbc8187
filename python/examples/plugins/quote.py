"""Quote: ``!quote <text>`` in chat saves a quote by the sender.

Publishes ``quote.added`` ``{id, text, by}``; listens to ``chat.message``.
"""

from typing import List

from switchboard_bus import Event, Plugin


class QuotePlugin(Plugin):
    """Saves quotes and announces them."""

    name = "quote"
    description = "saves quotes from chat"

    async def setup(self) -> None:
        self.quotes: List[str] = []
        self.subscribe("chat.message", self.on_message)

    async def on_message(self, event: Event) -> None:
        text: str = event.data["text"]
        if text.startswith("!quote "):
            self.quotes.append(text[len("!quote ") :])
            await self.publish(
                "quote.added", {"id": len(self.quotes), "text": self.quotes[-1], "by": event.data["user"]}
            )
