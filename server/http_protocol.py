"""uvicorn's httptools protocol, with each response leaving in one system call.

uvicorn writes a response's head and its body separately: two `send` calls and two TCP
segments per response, about a fifth of the event loop's time on small inferences (and more
work for a client sharing the cores). Here writes made during one event-loop callback are held
and leave together, through one `writelines` (a single vectored write in uvloop), once the
callback is over. The protocol is plugged in through uvicorn's `http=` setting.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes within one loop callback are flushed together."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:  # asyncio's writelines (3.12+) never drains an empty chunk (gh-155888)
            return
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(data)

    def _flush(self) -> None:
        held = self._held
        if held:
            self._held = []
            if not self._transport.is_closing():  # the peer left: nothing to deliver
                self._transport.writelines(held)

    def close(self) -> None:
        self._flush()  # what was written before close() still goes out, in order
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
