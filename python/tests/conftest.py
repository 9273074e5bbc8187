import asyncio
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")

# Every wait a test makes is bounded: a hang fails the test instead of
# stalling the run.
WATCHDOG = 10.0


async def within(awaitable: Awaitable[T], seconds: float = WATCHDOG) -> T:
    return await asyncio.wait_for(awaitable, seconds)

# test_seed.py is the seed's own test/test_event_bus.py, copied unchanged but
# for its import line (lib.plugin -> switchboard_bus).
