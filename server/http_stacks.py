"""What carries the HTTP and metrics ports: inferd's HTTP/1.1 server, or uvicorn.

Both serve the same ASGI applications; inferd's server also takes the front door's fast route
(`/infer` without an ASGI cycle). uvicorn stays selectable (`--http-stack=uvicorn`) as the
reference that inferd's server is measured and tested against.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Protocol

import uvicorn
from starlette.types import ASGIApp

from inferd.server.http1 import FastRouter, Http1Options, Http1Server
from inferd.server.http_protocol import CoalescingHttpToolsProtocol
from inferd.server.settings import HttpStackName


class HttpPort(Protocol):
    """A serving HTTP port."""

    async def stop(self, grace: float) -> None:
        """Stop accepting; let in-flight requests finish for up to `grace` seconds."""


class HttpStartError(Exception):
    pass


async def serve_http(
    stack: HttpStackName,
    app: ASGIApp,
    sock: socket.socket,
    max_body_size: int,
    fast_route: FastRouter | None = None,
) -> HttpPort:
    """Serve `app` on an already bound, listening socket, on the running loop."""
    if stack == "inferd":
        server = Http1Server(app, Http1Options(max_body_size=max_body_size), fast_route)
        await server.start(sock)
        return server
    return await _UvicornPort.start(app, sock)


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the App owns signals and shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _UvicornPort:
    def __init__(self, server: _UvicornServer, task: asyncio.Task[None]) -> None:
        self._server = server
        self._task = task

    @classmethod
    async def start(cls, app: ASGIApp, sock: socket.socket) -> _UvicornPort:
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
        server = _UvicornServer(config)
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
