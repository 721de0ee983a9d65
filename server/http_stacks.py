"""What carries the HTTP and metrics ports: inferd's HTTP/1.1 server, or uvicorn.

Both serve the same ASGI applications; inferd's server also takes the front door's fast route
(`/infer` without an ASGI cycle). uvicorn stays selectable (`--http-stack=uvicorn`) as the
reference that inferd's server is measured and tested against.
"""

from __future__ import annotations

import socket
from typing import Protocol

from starlette.types import ASGIApp

from inferd.server.http1 import FastRouter, Http1Options, Http1Server
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
    # Imported only when chosen: uvicorn (and click under it) is a tenth of start-up otherwise.
    from inferd.server.uvicorn_stack import UvicornPort

    return await UvicornPort.start(app, sock)
