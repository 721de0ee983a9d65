"""Arrival stamps: requests read in one event-loop turn arrived when that turn began."""

from __future__ import annotations

import asyncio
import time

from inferd.server.turn_clock import TurnClock


async def test_one_turn_one_stamp_and_the_next_turn_a_new_one() -> None:
    clock = TurnClock()
    first = clock.now_ns()
    time.sleep(0.002)  # handling the turn's first request takes a while
    assert clock.now_ns() == first  # the next one waited for it: its arrival is the turn's start
    await asyncio.sleep(0)
    assert clock.now_ns() >= first + 2_000_000
