"""The example plugins and the bot demo run, and their checks pass."""

import subprocess
import sys
from pathlib import Path

import pytest

from switchboard_bus import Event, PluginManager

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_bot_demo_runs_and_its_checks_pass():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "bot_demo.py"), "--messages", "4000", "--users", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout
    assert "every chat line reached stats exactly once (4000 of 4000)" in result.stdout


@pytest.mark.asyncio
async def test_the_example_plugins_talk_to_each_other():
    manager = PluginManager()
    bus = manager.event_bus
    store: dict = {}
    trivia = await manager.load(EXAMPLES / "plugins" / "trivia.py")
    await manager.load(EXAMPLES / "plugins" / "stats.py", {"store": store})
    await manager.load(EXAMPLES / "plugins" / "quote.py")
    search = await manager.load(EXAMPLES / "plugins" / "search.py")
    results: list = []
    bus.subscribe("search.results", lambda e: results.append(e.data), "test")

    async def say(user: str, text: str) -> None:
        await bus.publish(Event("chat.message", {"user": user, "text": text}, "gateway"))

    await say("ada", "!trivia")
    await say("bob", "5")
    await say("ada", "4")
    await say("bob", "!quote the bus is fast")
    await say("ada", "!search fast")
    assert store["rounds"] == 1
    assert store["answers"] == {"bob": 1, "ada": 1}
    assert store["wins"] == {"ada": 1}
    assert store["lines"] == {"ada": 3, "bob": 2}
    assert results == [{"query": "fast", "ids": [1]}]
    assert trivia.current is None  # type: ignore[attr-defined]
    assert search.index["bus"] == {1}  # type: ignore[attr-defined]
    await manager.shutdown()
