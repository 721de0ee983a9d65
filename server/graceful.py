"""Graceful stop of a listening server of our own (HTTP/1.1, and gRPC over HTTP/2)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar


class Connection(Protocol):
    closed: asyncio.Future[None]

    def abort(self) -> None: ...


C = TypeVar("C", bound=Connection)


async def stop_serving(
    server: asyncio.Server | None,
    connections: Sequence[C],
    notify: Callable[[C], None],
    tasks: Callable[[], Collection[asyncio.Task[Any]]],
    grace: float,
) -> None:
    """Stop accepting; `notify` each connection that the end is near (it finishes what it
    accepted, then closes); after `grace` seconds abort what is left and cancel `tasks()`."""
    if server is not None:
        server.close()
    for conn in connections:
        notify(conn)
    pending = [conn.closed for conn in connections if not conn.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=grace)
    for conn in connections:
        conn.abort()
    left = [task for task in tasks() if not task.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=1.0)
    if server is not None:
        await server.wait_closed()
