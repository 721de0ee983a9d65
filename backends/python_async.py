"""`async def execute()` of a decoupled python model, as Triton (24.04 and later) runs it: each
call's coroutine goes to one event loop per instance, on a thread of its own, and the instance
takes its next batch at once, while earlier calls still await (a model that mostly waits, on
another model or the network, needs fewer instances). The model sends its responses through
the requests' senders whenever its coroutines get there.

Triton leaves the number of calls in progress to the model; so does inferd.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

Done = Callable[["concurrent.futures.Future[Any]"], None]


class ConcurrentExecutes:
    """The event loop of one instance's execute() coroutines, on its own thread."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, Any], done: Done) -> None:
        """Run `coroutine` on the loop; `done(future)` runs on the loop's thread when it ends."""
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).add_done_callback(done)

    def close(self) -> None:
        """Cancel the calls still in progress (their requests' streams were already ended or
        waited for by the unload), then end the thread."""

        def stop() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_soon(self._loop.stop)  # after the cancellations ran

        self._loop.call_soon_threadsafe(stop)
        self._thread.join()
        self._loop.close()
