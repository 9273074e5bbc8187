"""The seed's bot on switchboard_bus: the four example plugins (trivia, stats,
quote, search) loaded from their files, a busy chat, and a hot reload of the
stats plugin's code halfway through, checked at the end.

    python examples/bot_demo.py [--messages N] [--users N] [--seed N]

Half the chat is published with ``await bus.publish`` (handlers done when it
returns), half with ``publish_nowait`` (handed to the loop in batches). Halfway,
``stats.py`` is edited on disk (its VERSION goes from "1" to "2") and reloaded:
every chat line must be counted exactly once, by one version or the other.
Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from switchboard_bus import Event, EventBus, PluginManager

HERE = Path(__file__).resolve().parent / "plugins"
WORDS = ["trivia", "bus", "plugin", "quote", "rust", "python", "event", "loop", "fast", "glob"]
ANSWERS = ["4", "blue", "8", "paris", "jupiter", "42", "red"]


def chat_line(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.05:
        return "!trivia"
    if roll < 0.25:
        return rng.choice(ANSWERS)
    if roll < 0.30:
        return "!quote " + " ".join(rng.choice(WORDS) for _ in range(4))
    if roll < 0.33:
        return "!search " + rng.choice(WORDS)
    return " ".join(rng.choice(WORDS) for _ in range(6))


async def run(messages: int, users: int, seed: int) -> int:
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bot-"))
    for plugin in ["trivia", "stats", "quote", "search"]:
        shutil.copy(HERE / f"{plugin}.py", workdir / f"{plugin}.py")
    # History long enough for the late joiner's catch-up to cover the run.
    manager = PluginManager(event_bus=EventBus(history_size=100_000))
    bus = manager.event_bus
    store: Dict[str, Any] = {}
    await manager.load(workdir / "trivia.py")
    await manager.load(workdir / "quote.py")
    await manager.load(workdir / "stats.py", {"store": store})
    counts: Dict[str, int] = {}
    bus.subscribe("*", lambda e: counts.__setitem__(e.name, counts.get(e.name, 0) + 1), "monitor")

    async def say(i: int, nowait: bool) -> None:
        event = Event("chat.message", {"user": f"user{rng.randrange(users)}", "text": chat_line(rng)}, "gateway")
        if nowait:
            bus.publish_nowait(event)
            if i % 256 == 1:
                await bus.flush()
        else:
            await bus.publish(event)

    started = time.perf_counter()
    half = messages // 2
    for i in range(half):
        await say(i, nowait=i % 2 == 1)
    # A late joiner: search catches up on the quotes so far from history.
    await bus.flush()
    search = await manager.load(workdir / "search.py")
    # Hot reload: the stats plugin's code changes on disk, and is reloaded.
    stats_file = workdir / "stats.py"
    stats_file.write_text(stats_file.read_text().replace('VERSION = "1"', 'VERSION = "2"'))
    reloaded = await manager.reload("stats")
    for i in range(half, messages):
        await say(i, nowait=i % 2 == 1)
    await bus.flush()
    elapsed = time.perf_counter() - started

    quotes = counts.get("quote.added", 0)
    indexed = {i for ids in search.index.values() for i in ids}  # type: ignore[attr-defined]
    lines = sum(store["lines"].values())
    checks: List[tuple[str, bool]] = [
        (f"every chat line reached stats exactly once ({lines} of {messages})", lines == messages),
        (
            f"both versions of stats ran, none twice ({store['handled_by']})",
            set(store["handled_by"]) == {"1", "2"} and sum(store["handled_by"].values()) == messages,
        ),
        (f"the reloaded stats is version 2 ({reloaded.metadata.version})", reloaded.metadata.version == "2"),
        (
            f"trivia rounds counted ({store['rounds']} started)",
            store["rounds"] == counts.get("trivia.started", 0) > 0,
        ),
        (f"wins counted ({sum(store['wins'].values())})", sum(store["wins"].values()) == counts.get("trivia.ended", 0)),
        (f"search indexed every quote, the replayed ones too ({len(indexed)} of {quotes})", len(indexed) == quotes > 0),
        (f"no handler failed ({bus.get_stats()['handler_errors']})", bus.get_stats()["handler_errors"] == 0),
    ]
    stats = bus.get_stats()
    print(f"{messages} chat messages from {users} users in {elapsed:.2f} s ({messages / elapsed:,.0f} msg/s)")
    print(f"events published {stats['events_published']}, handler calls {stats['events_dispatched']}")
    print(f"events by name: {dict(sorted(counts.items()))}")
    top = sorted(store["wins"].items(), key=lambda kv: -kv[1])[:3]
    print(f"trivia leaders: {top}")
    engine = bus.engine_stats()
    print(f"engine: {engine['wakes']} loop wake-ups for {engine['batches']} batches")
    failed = 0
    for what, ok in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}")
        failed += not ok
    await manager.shutdown()
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="chat messages to send (default 20000)")
    parser.add_argument("--users", type=int, default=50, help="distinct chat users (default 50)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args()
    if args.messages < 2 or args.users < 1:
        parser.error("--messages must be at least 2 and --users at least 1")
    sys.exit(asyncio.run(run(args.messages, args.users, args.seed)))


if __name__ == "__main__":
    main()
