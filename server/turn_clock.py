"""When a request arrived, as the event loop can know it: the start of the loop turn that read it.

One turn of a busy loop reads many sockets and handles every request it finds before it looks
again. A request read late in that turn has already waited for the ones before it; stamping its
arrival when its own callback runs would hide that wait from latency objectives.
"""

from __future__ import annotations

import asyncio
import time


class TurnClock:
    """One per server; called on its event loop only."""

    def __init__(self) -> None:
        self._stamp = 0

    def now_ns(self) -> int:
        """The time of the first call in this loop turn (the next turn starts a new stamp)."""
        if not self._stamp:
            self._stamp = time.monotonic_ns()
            # Callbacks run after this turn's I/O callbacks, before the loop polls again.
            asyncio.get_running_loop().call_soon(self._new_turn)
        return self._stamp

    def _new_turn(self) -> None:
        self._stamp = 0
