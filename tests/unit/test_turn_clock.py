"""Arrival stamps: requests read in one event-loop turn arrived when that turn began, or earlier
when the loop was busy since the turn before."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from inferd.server.turn_clock import TurnClock

_HAS_SCHEDSTAT = os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat")


async def test_one_turn_one_stamp_and_the_next_turn_a_new_one() -> None:
    clock = TurnClock()
    first = clock.now_ns()
    time.sleep(0.002)  # handling the turn's first request takes a while
    assert clock.now_ns() == first  # the next one waited for it: its arrival is the turn's start
    await asyncio.sleep(0)
    assert clock.now_ns() >= first + 2_000_000
    clock.close()


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def _busy_then_idle() -> tuple[bool, bool]:
    """(the turn after a busy one dated back to it, the turn after a sleep did not)."""
    clock = TurnClock()
    first = clock.now_ns()
    _spin(0.005)  # the loop never polls: bytes that came meanwhile wait unread
    await asyncio.sleep(0)
    second = clock.now_ns()
    await asyncio.sleep(0.005)  # the loop sleeps in its poll: the next request woke it
    third = clock.now_ns()
    clock.close()
    # Read now, but they may have waited since the busy turn; after the sleep, a new stamp.
    return second < first + 1_000_000, third >= first + 10_000_000


@pytest.mark.skipif(not _HAS_SCHEDSTAT, reason="needs Linux's per-thread schedstat")
async def test_a_turn_after_a_busy_one_dates_back_to_the_busy_turn() -> None:
    # The kernel's accounts of a thread's time lag a little; on a machine busy with other
    # work they may count a few µs of the spin as sleep, so one of three tries must show it.
    outcomes = [await _busy_then_idle() for _ in range(3)]
    assert any(dated_back for dated_back, _ in outcomes), outcomes
    assert all(restamped for _, restamped in outcomes)
