"""The uvicorn stack (`--http-stack=uvicorn`): uvicorn serving the ASGI app on a bound socket,
with inferd's coalescing httptools protocol. Imported only when that stack is chosen."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from inferd.server.http_protocol import CoalescingHttpToolsProtocol
from inferd.server.http_stacks import HttpStartError


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the App owns signals and shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class UvicornPort:
    def __init__(self, server: _Server, task: asyncio.Task[None]) -> None:
        self._server = server
        self._task = task

    @classmethod
    async def start(cls, app: ASGIApp, sock: socket.socket) -> UvicornPort:
        config = uvicorn.Config(
            app,
            loop="none",
            http=CoalescingHttpToolsProtocol,
            lifespan="off",
            access_log=False,
            log_config=None,
            # No per-request X-Forwarded-* rewriting: nothing here reads the client address,
            # and the middleware costs a few percent of the request path.
            proxy_headers=False,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                raise HttpStartError("uvicorn stopped during start-up")
            await asyncio.sleep(0.005)
        return cls(server, task)

    async def stop(self, grace: float) -> None:
        self._server.config.timeout_graceful_shutdown = int(grace)
        self._server.should_exit = True
        await self._task
