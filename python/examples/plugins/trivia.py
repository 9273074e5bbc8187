"""Trivia: ``!trivia`` in chat starts a round; the first right answer wins.

Publishes ``trivia.started`` ``{round, question, timeout}``,
``trivia.answer`` ``{round, user, correct}`` and ``trivia.ended``
``{round, winner, answer}``; listens to ``chat.message`` ``{user, text}``.
"""

from typing import Optional, Tuple

from switchboard_bus import Event, EventPriority, Plugin

QUESTIONS = [
    ("What is 2 + 2?", "4"),
    ("What colour is the sky on a clear day?", "blue"),
    ("How many legs has a spider?", "8"),
    ("What is the capital of France?", "paris"),
    ("Which planet is the largest?", "jupiter"),
]


class TriviaPlugin(Plugin):
    """Trivia game plugin that publishes events."""

    name = "trivia"
    description = "a trivia game in chat"

    async def setup(self) -> None:
        self.rounds = 0
        self.current: Optional[Tuple[int, str]] = None
        self.subscribe("chat.message", self.on_message)

    async def on_message(self, event: Event) -> None:
        text: str = event.data["text"].strip()
        if text == "!trivia":
            if self.current is None:
                question, answer = QUESTIONS[self.rounds % len(QUESTIONS)]
                await self.start_trivia(question, answer)
        elif self.current is not None and not text.startswith("!"):
            round_no, answer = self.current
            correct = text.lower() == answer
            await self.publish("trivia.answer", {"round": round_no, "user": event.data["user"], "correct": correct})
            if correct:
                await self.end_trivia(event.data["user"], answer)

    async def start_trivia(self, question: str, answer: str = "") -> None:
        """Start trivia question."""
        self.rounds += 1
        self.current = (self.rounds, answer)
        # Publish event for other plugins
        await self.publish("trivia.started", {"round": self.rounds, "question": question, "timeout": 30})

    async def end_trivia(self, winner: str, answer: str) -> None:
        """End trivia question."""
        round_no = self.current[0] if self.current else self.rounds
        self.current = None
        await self.publish("trivia.ended", {"round": round_no, "winner": winner, "answer": answer}, EventPriority.HIGH)
