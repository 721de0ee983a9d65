"""The coalescing transport behind the HTTP port, over a real socket pair."""

from __future__ import annotations

import asyncio
import socket

from inferd.server.http_protocol import CoalescingTransport


async def _connected() -> tuple[CoalescingTransport, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return CoalescingTransport(transport, loop), peer


def _available(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 16)
    except BlockingIOError:
        return b""


async def test_writes_of_one_callback_leave_together_and_in_order() -> None:
    transport, peer = await _connected()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"ok")
    assert _available(peer) == b""  # held until the callback is over
    await asyncio.sleep(0)
    assert _available(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    transport.close()
    peer.close()


async def test_close_delivers_what_was_written_before_it() -> None:
    transport, peer = await _connected()
    transport.write(b"last words")
    transport.close()
    await asyncio.sleep(0.01)
    assert _available(peer) == b"last words"
    assert transport.is_closing()  # everything else is the real transport's
    peer.close()
