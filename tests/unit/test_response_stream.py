"""A decoupled request's response stream: a model that sends faster than the event loop takes
its responses waits once MAX_UNDELIVERED of them are queued, and goes on as the loop takes
them, in order; a stream that ends releases a waiting sender."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from inferd.batching.decoupled import MAX_UNDELIVERED, ResponseStream, StreamItem
from inferd.server.errors import unavailable


def sender(stream: ResponseStream, count: int, sent: list[bool]) -> threading.Thread:
    """A model thread sending `count` responses, the last one final."""

    def run() -> None:
        for i in range(count):
            sent.append(stream.send({"i": i}, i == count - 1))  # type: ignore[dict-item]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def settle(thread: threading.Thread, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_fast_sender_waits_for_the_loop_and_keeps_its_order() -> None:
    loop = asyncio.new_event_loop()
    received: list[tuple[StreamItem, bool]] = []
    try:
        stream = ResponseStream(loop, lambda item, final: received.append((item, final)), print)
        sent: list[bool] = []
        # The loop is not running: nothing is taken on, so the sender must stop at the bound.
        thread = sender(stream, MAX_UNDELIVERED + 50, sent)
        settle(thread, lambda: len(sent) >= MAX_UNDELIVERED)
        time.sleep(0.1)
        assert len(sent) == MAX_UNDELIVERED and thread.is_alive()
        loop.run_until_complete(asyncio.sleep(0.2))  # the loop takes them; the sender goes on
        settle(thread, lambda: not thread.is_alive())
        loop.run_until_complete(asyncio.sleep(0.05))
        assert not thread.is_alive() and all(sent)
        assert [item["i"] for item, _ in received] == list(range(MAX_UNDELIVERED + 50))  # type: ignore[index]
        assert [final for _, final in received].count(True) == 1 and received[-1][1]
    finally:
        loop.close()


def test_a_stream_that_ends_releases_a_waiting_sender() -> None:
    loop = asyncio.new_event_loop()
    received: list[tuple[StreamItem, bool]] = []
    try:
        stream = ResponseStream(loop, lambda item, final: received.append((item, final)), print)
        sent: list[bool] = []
        thread = sender(stream, MAX_UNDELIVERED + 10, sent)
        settle(thread, lambda: len(sent) >= MAX_UNDELIVERED)
        error = unavailable("the client went away")
        loop.call_soon_threadsafe(stream.abort, error)
        loop.run_until_complete(asyncio.sleep(0.2))
        settle(thread, lambda: not thread.is_alive())
        assert not thread.is_alive()
        assert sent.count(False) >= 1  # refused once the stream was over
        # What was queued before the abort arrives, then its error ends the stream; what the
        # sender sent once released is dropped.
        assert len(received) == MAX_UNDELIVERED + 1
        assert received[-1] == (error, True)
    finally:
        loop.close()
