"""Summarises several runs of bench.py (their --json files) as the markdown
table the README shows: per scenario, the median same-round ratio of each
run, and the runs' range.

    python bench/summarize.py bench/results/run1.json bench/results/run2.json ...
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List


def main(paths: List[str]) -> None:
    runs: List[Dict[str, Any]] = [json.load(open(p)) for p in paths]
    print("| scenario | seed events/s | switchboard_bus events/s | ratio, median of each run | range over runs |")
    print("| --- | ---: | ---: | --- | --- |")
    for i, first in enumerate(runs[0]["results"]):
        rows = [run["results"][i] for run in runs]
        ratios = [r["ratio"]["median"] for r in rows]
        seed = sorted(r["seed_events_per_s"]["median"] for r in rows)[len(rows) // 2]
        ours = sorted(r["ours_events_per_s"]["median"] for r in rows)[len(rows) // 2]
        each = ", ".join(f"{x:.1f}x" for x in ratios)
        print(
            f"| {first['scenario']} | {seed:,.0f} | {ours:,.0f} | {each} | {min(ratios):.1f}x - {max(ratios):.1f}x |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
