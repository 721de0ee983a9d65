"""When a request arrived, as the event loop can know it.

A loop reads a socket only between turns. While the loop is busy (or waits for a CPU that an
instance thread holds), a request's bytes sit unread in the socket, and every request read in a
turn has also waited for the ones handled before it. Latency objectives must count that wait,
which the request's own callback never sees.

So the arrival stamp is the start of the loop turn that read the request, moved back to the
previous stamped turn when the loop's thread never slept in between (it was running, or runnable
and waiting for a CPU an instance thread held): the bytes may have come in just after that turn
polled. When the thread slept, the request most likely woke it, and the stamp stays. Linux
reports both times per thread in /proc (schedstat); elsewhere the stamp is the start of the turn.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

# A loop thread that slept less than this between two turns counts as never having slept: the
# two clocks it is computed from disagree by a few microseconds, and an idle poll that a request
# ends takes longer (measured here: 35 µs and more between back-to-back requests).
IDLE_MIN_NS = 25_000


class TurnClock:
    """One per server; called on its event loop only."""

    def __init__(self) -> None:
        self._stamp = 0
        self._previous = 0  # start of the previous stamped turn
        self._previous_run = self._previous_delay = 0  # the thread's schedstat then
        self._schedstat: int | None = None  # fd of the loop thread's schedstat; -1 = none

    def now_ns(self) -> int:
        """The arrival stamp of requests read in this loop turn (the next turn starts anew)."""
        if not self._stamp:
            if self._schedstat is None:  # opened on the loop's thread; not inside a gap
                self._schedstat = _open_schedstat()
            now = time.monotonic_ns()
            self._stamp = now - self._unseen_wait(now)
            # Callbacks run after this turn's I/O callbacks, before the loop polls again.
            asyncio.get_running_loop().call_soon(self._new_turn)
        return self._stamp

    def _new_turn(self) -> None:
        self._stamp = 0

    def _unseen_wait(self, now: int) -> int:
        """How long bytes read in this turn may have waited for the loop to poll."""
        sample = self._sample()
        if sample is None:
            return 0
        run, delay = sample
        previous = self._previous
        gap = now - previous
        slept = gap - (run - self._previous_run) - (delay - self._previous_delay)
        self._previous, self._previous_run, self._previous_delay = now, run, delay
        return gap if previous and slept < IDLE_MIN_NS else 0

    def _sample(self) -> tuple[int, int] | None:
        """(time on a CPU, time runnable but waiting for one) of the loop's thread, in ns."""
        fd = self._schedstat
        if fd is None or fd < 0:
            return None
        try:
            # schedstat's own run time lags while the thread runs (the kernel updates it when
            # the thread is switched out); the runqueue wait is current, and the CPU clock is.
            delay = int(os.pread(fd, 64, 0).split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return time.thread_time_ns(), delay

    def close(self) -> None:
        if self._schedstat is not None and self._schedstat >= 0:
            os.close(self._schedstat)
        self._schedstat = -1


def _open_schedstat() -> int:
    try:
        return os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
    except OSError:
        return -1
