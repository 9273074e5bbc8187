"""switchboard_bus against the seed's own EventBus, in one run.

    python bench/bench.py [--quick] [--rounds N] [--json PATH]

Both buses get the same events (names and data; each its own ``Event`` class)
and the same handlers, counting deliveries; every round checks each count
against the number fnmatch itself says (``fnmatch.fnmatchcase`` over every
pattern, computed once per distinct name). Rounds interleave the two buses;
the table gives medians and the spread, (max - min) / 2 / median, and the
ratio is taken within each round (same run, same machine state).

Scenarios:

* ``1 sub, await publish``: one subscription, a coroutine handler, ``await
  bus.publish(event)`` per event: the seed's own fast case.
* ``10k subs, await publish``: 10,000 subscriptions (90% literal
  ``pluginK.actionJ``, 9% ``pluginK.*``, 1% ``*``), each event named after a
  literal subscription (so it matches that one, its plugin's ``pluginK.*``
  if any, and the hundred ``*``).
* ``(plain handler)``: switchboard_bus with plain-callable handlers (the
  seed cannot take them: its row is its ``await publish`` with coroutine
  handlers, as above).
* ``nowait + flush``: plain-callable handlers and ``publish_nowait`` for
  every event from the loop's own code, one ``await flush()`` at the end.
* ``from another thread``: a publisher thread; the seed's only way in is
  ``run_coroutine_threadsafe(bus.publish(event), loop)`` per event (one
  cross-thread wake-up each); switchboard_bus's is ``publish_nowait``, whose
  calls reach the loop in batches (one wake-up per batch): what batching buys.
* ``10k subs, churn``: on top of the 10,000, each event is a subscribe to a
  pattern never seen before (``churn.N``, as a request awaiting its reply
  would), an ``await publish`` of an event named ``churn.N`` and the
  ``unsubscribe`` of that pattern: what changing subscriptions cost (both
  buses keep a pattern's key after its last subscriber leaves).
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import seed_bus  # noqa: E402  the baseline: the seed's code, verbatim

import switchboard_bus  # noqa: E402

Patterns = List[Tuple[str, str]]  # (pattern, plugin)


def workload(subscriptions: int) -> Patterns:
    """90% literal, 9% prefix.*, 1% '*' (at least one '*' and one literal)."""
    if subscriptions == 1:
        return [("bench.event", "p0")]
    stars = max(1, subscriptions // 100)
    prefixes = subscriptions * 9 // 100
    literals = subscriptions - stars - prefixes
    out: Patterns = []
    for i in range(literals):
        out.append((f"plugin{i // 9}.action{i % 9}", f"p{i}"))
    for i in range(prefixes):
        out.append((f"plugin{i}.*", f"q{i}"))
    for i in range(stars):
        out.append(("*", f"s{i}"))
    return out


def names_for(patterns: Patterns, n: int) -> List[str]:
    literal = [p for p, _ in patterns if "*" not in p] or ["bench.event"]
    # A fixed stride through the literals: deterministic, spread out.
    return [literal[(i * 7919) % len(literal)] for i in range(n)]


_expected: Dict[Tuple[int, str], int] = {}


def expected_deliveries(patterns: Patterns, names: Sequence[str]) -> int:
    """What fnmatch itself says (cached per workload and name: the
    scenarios of one size share it)."""
    per_name: Dict[str, int] = {}
    for (size, name), n in _expected.items():
        if size == len(patterns):
            per_name[name] = n
    total = 0
    for name in names:
        if name not in per_name:
            per_name[name] = sum(1 for p, _ in patterns if fnmatch.fnmatchcase(name, p))
            _expected[(len(patterns), name)] = per_name[name]
        total += per_name[name]
    return total


async def run_seed(patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    bus = seed_bus.EventBus(history_size=100)
    count = [0]

    async def handler(event: Any) -> None:
        count[0] += 1

    for pattern, plugin in patterns:
        bus.subscribe(pattern, handler, plugin)
    events = [seed_bus.Event(name, {"i": i}, "bench") for i, name in enumerate(names)]
    publish = bus.publish
    started = time.perf_counter()
    for event in events:
        await publish(event)
    return time.perf_counter() - started, count[0]


async def run_ours(patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    bus = switchboard_bus.EventBus(history_size=100)
    count = [0]

    async def handler(event: Any) -> None:
        count[0] += 1

    for pattern, plugin in patterns:
        bus.subscribe(pattern, handler, plugin)
    events = [switchboard_bus.Event(name, {"i": i}, "bench") for i, name in enumerate(names)]
    # The first publish builds the index: not part of the rate.
    await bus.publish(switchboard_bus.Event("warm.up", {}, "bench"))
    count[0] = 0
    publish = bus.publish
    started = time.perf_counter()
    for event in events:
        await publish(event)
    elapsed = time.perf_counter() - started
    bus.close()
    return elapsed, count[0]


async def run_ours_nowait(patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    bus = switchboard_bus.EventBus(history_size=100, capacity=1 << 20)
    count = [0]

    def handler(event: Any) -> None:
        count[0] += 1

    for pattern, plugin in patterns:
        bus.subscribe(pattern, handler, plugin)
    events = [switchboard_bus.Event(name, {"i": i}, "bench") for i, name in enumerate(names)]
    await bus.publish(switchboard_bus.Event("warm.up", {}, "bench"))
    bus.publish_nowait(switchboard_bus.Event("warm.up", {}, "bench"))
    await bus.flush()
    count[0] = 0
    publish_nowait = bus.publish_nowait
    started = time.perf_counter()
    for event in events:
        publish_nowait(event)
    await bus.flush()
    elapsed = time.perf_counter() - started
    bus.close()
    return elapsed, count[0]


async def run_ours_plain(patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    """``await publish`` with plain-callable handlers (the seed cannot take them)."""
    bus = switchboard_bus.EventBus(history_size=100)
    count = [0]

    def handler(event: Any) -> None:
        count[0] += 1

    for pattern, plugin in patterns:
        bus.subscribe(pattern, handler, plugin)
    events = [switchboard_bus.Event(name, {"i": i}, "bench") for i, name in enumerate(names)]
    await bus.publish(switchboard_bus.Event("warm.up", {}, "bench"))
    count[0] = 0
    publish = bus.publish
    started = time.perf_counter()
    for event in events:
        await publish(event)
    elapsed = time.perf_counter() - started
    bus.close()
    return elapsed, count[0]


async def run_seed_thread(patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    """A publisher on another thread: the seed's only way in is one
    ``run_coroutine_threadsafe(bus.publish(event), loop)`` per event."""
    bus = seed_bus.EventBus(history_size=100)
    count = [0]

    async def handler(event: Any) -> None:
        count[0] += 1

    for pattern, plugin in patterns:
        bus.subscribe(pattern, handler, plugin)
    events = [seed_bus.Event(name, {"i": i}, "bench") for i, name in enumerate(names)]
    loop = asyncio.get_running_loop()

    def publisher() -> None:
        last = None
        for event in events:
            last = asyncio.run_coroutine_threadsafe(bus.publish(event), loop)
        if last is not None:
            last.result()

    started = time.perf_counter()
    await loop.run_in_executor(None, publisher)
    return time.perf_counter() - started, count[0]


async def run_ours_thread(patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    """A publisher on another thread: ``publish_nowait``, the engine's worker
    hands the calls to the loop in batches; plain-callable handlers."""
    bus = switchboard_bus.EventBus(history_size=100, capacity=1 << 20)
    count = [0]

    def handler(event: Any) -> None:
        count[0] += 1

    for pattern, plugin in patterns:
        bus.subscribe(pattern, handler, plugin)
    events = [switchboard_bus.Event(name, {"i": i}, "bench") for i, name in enumerate(names)]
    bus.bind_loop()
    loop = asyncio.get_running_loop()

    def publisher() -> None:
        for event in events:
            bus.publish_nowait(event)

    started = time.perf_counter()
    await loop.run_in_executor(None, publisher)
    await bus.flush()
    elapsed = time.perf_counter() - started
    bus.close()
    return elapsed, count[0]


async def _churn(bus: Any, event_class: Any, patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    count = [0]

    async def handler(event: Any) -> None:
        count[0] += 1

    for pattern, plugin in patterns:
        bus.subscribe(pattern, handler, plugin)
    events = [event_class(name, {"i": i}, "bench") for i, name in enumerate(names)]
    await bus.publish(event_class("warm.up", {}, "bench"))
    count[0] = 0
    started = time.perf_counter()
    for event in events:
        bus.subscribe(event.name, handler, "churner")
        await bus.publish(event)
        bus.unsubscribe(event.name, "churner")
    return time.perf_counter() - started, count[0]


async def run_seed_churn(patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    """Subscribe, ``await publish``, unsubscribe, per event, on the seed."""
    return await _churn(seed_bus.EventBus(history_size=100), seed_bus.Event, patterns, names)


async def run_ours_churn(patterns: Patterns, names: Sequence[str]) -> Tuple[float, int]:
    """Subscribe, ``await publish``, unsubscribe, per event."""
    bus = switchboard_bus.EventBus(history_size=100)
    try:
        return await _churn(bus, switchboard_bus.Event, patterns, names)
    finally:
        bus.close()


Runner = Callable[[Patterns, Sequence[str]], Any]


def measure(
    label: str,
    subscriptions: int,
    seed_events: int,
    our_events: int,
    ours: Runner,
    rounds: int,
    seed: Runner = run_seed,
) -> Dict[str, Any]:
    patterns = workload(subscriptions)
    if ours is run_ours_churn:
        # Fresh names, each matching its own churned subscription too.
        seed_names = [f"churn.{i}" for i in range(seed_events)]
        our_names = [f"churn.{i}" for i in range(our_events)]
        # No workload pattern tells churn names apart (all begin "plugin"
        # or are "*"): fnmatch over one of them says what each one gets.
        each = expected_deliveries(patterns, ["churn.0"]) + 1
        want_seed, want_ours = each * seed_events, each * our_events
    else:
        seed_names = names_for(patterns, seed_events)
        our_names = names_for(patterns, our_events)
        want_seed = expected_deliveries(patterns, seed_names)
        want_ours = expected_deliveries(patterns, our_names)
    seed_rates: List[float] = []
    our_rates: List[float] = []
    ratios: List[float] = []
    for _ in range(rounds):
        elapsed, got = asyncio.run(seed(patterns, seed_names))
        assert got == want_seed, f"{label}: the seed delivered {got}, fnmatch says {want_seed}"
        seed_rate = seed_events / elapsed
        elapsed, got = asyncio.run(ours(patterns, our_names))
        assert got == want_ours, f"{label}: switchboard_bus delivered {got}, fnmatch says {want_ours}"
        our_rate = our_events / elapsed
        seed_rates.append(seed_rate)
        our_rates.append(our_rate)
        ratios.append(our_rate / seed_rate)

    def summary(xs: List[float]) -> Dict[str, float]:
        median = statistics.median(xs)
        return {"median": median, "spread": (max(xs) - min(xs)) / 2 / median, "min": min(xs), "max": max(xs)}

    return {
        "scenario": label,
        "subscriptions": subscriptions,
        "deliveries_per_event": want_ours / our_events,
        "seed_events_per_s": summary(seed_rates),
        "ours_events_per_s": summary(our_rates),
        "ratio": summary(ratios),
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer events and rounds (about 20 s)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 7, quick 3)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    scale = 0.2 if args.quick else 1.0

    def n(x: int) -> int:
        return max(10, int(x * scale))

    scenarios: List[Tuple[str, int, int, int, Runner, Runner]] = [
        ("1 sub, await publish", 1, n(100_000), n(100_000), run_ours, run_seed),
        ("1 sub, await publish (plain handler)", 1, n(100_000), n(100_000), run_ours_plain, run_seed),
        ("1 sub, nowait + flush (plain handler)", 1, n(100_000), n(100_000), run_ours_nowait, run_seed),
        ("1 sub, from another thread", 1, n(20_000), n(100_000), run_ours_thread, run_seed_thread),
        ("10k subs, await publish", 10_000, n(150), n(5_000), run_ours, run_seed),
        ("10k subs, await publish (plain handlers)", 10_000, n(150), n(5_000), run_ours_plain, run_seed),
        ("10k subs, nowait + flush (plain handlers)", 10_000, n(150), n(5_000), run_ours_nowait, run_seed),
        ("10k subs, churn (subscribe, publish, unsubscribe)", 10_000, n(150), n(2_000), run_ours_churn, run_seed_churn),
    ]
    results = []
    for label, subs, seed_events, our_events, runner, seed in scenarios:
        print(f"-- {label} ({rounds} rounds)", flush=True)
        results.append(measure(label, subs, seed_events, our_events, runner, rounds, seed))
    print()
    print(f"{'scenario':<44} {'seed events/s':>14} {'switchboard_bus':>16} {'ratio (same round)':>22}")
    for r in results:
        s, o, q = r["seed_events_per_s"], r["ours_events_per_s"], r["ratio"]
        print(
            f"{r['scenario']:<44} {s['median']:>9,.0f} ±{s['spread']:>3.0%} {o['median']:>11,.0f} ±{o['spread']:>3.0%}"
            f" {q['median']:>10.1f}x ({q['min']:.1f}-{q['max']:.1f}x)"
        )
    machine = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "quick": args.quick,
    }
    print(f"\nPython {machine['python']} on {machine['platform']}, {machine['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
