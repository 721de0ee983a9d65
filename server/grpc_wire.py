"""gRPC over HTTP/2 on the wire: request heads, response header blocks, message codecs.

Follows https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md. Everything here is
stateless; `grpc_transport` drives it per call.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from inferd.server.grpc_calls import RpcMethod
from inferd.server.http2_wire import (
    CONTENT_TYPE_INDEX,
    literal,
    literal_indexed_name,
    status_line,
)

ACCEPT_ENCODING = b"identity,deflate,gzip"
_CONTENT_TYPE = literal_indexed_name(CONTENT_TYPE_INDEX, b"application/grpc")
_ACCEPT = literal(b"grpc-accept-encoding", ACCEPT_ENCODING)

RESPONSE_HEADERS = status_line(200) + _CONTENT_TYPE + _ACCEPT
TRAILERS_OK = literal(b"grpc-status", b"0")
TRAILERS_ONLY_OK = RESPONSE_HEADERS + TRAILERS_OK

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_UNESCAPED = frozenset(range(0x20, 0x7F)) - {ord("%")}


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What a call needs from its request headers (cached per header block by the HTTP/2 layer)."""

    method: RpcMethod | None
    timeout: float | None  # seconds, from grpc-timeout
    encoding: bytes  # grpc-encoding; b"identity" when absent
    # An answer decided by the headers alone: (HTTP status, gRPC status, message).
    refusal: tuple[int, grpc.StatusCode, str] | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # as the block had them


def parse_head(
    headers: list[tuple[bytes, bytes]], methods: Mapping[bytes, RpcMethod]
) -> RequestHead:
    verb = path = content_type = timeout_value = None
    encoding = b"identity"
    for name, value in headers:
        if name == b":path":
            path = value
        elif name == b":method":
            verb = value
        elif name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            timeout_value = value
        elif name == b"grpc-encoding":
            encoding = value
    if content_type is None or not content_type.startswith(b"application/grpc"):
        # The spec's 415 keeps plain HTTP/2 clients from reading an error as a success.
        refusal = (415, grpc.StatusCode.INTERNAL, "invalid gRPC request content-type")
        return RequestHead(None, None, encoding, refusal)
    if verb != b"POST":
        refusal = (405, grpc.StatusCode.INTERNAL, "gRPC requires the POST method")
        return RequestHead(None, None, encoding, refusal)
    method = methods.get(path or b"")
    if method is None:
        return RequestHead(
            None, None, encoding, (200, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        )
    if method.required_header is not None:
        key, required = method.required_header
        if (key.encode(), required.encode()) not in headers:
            return RequestHead(
                None, None, encoding, (200, grpc.StatusCode.UNAVAILABLE, method.refusal)
            )
    timeout = None
    if timeout_value is not None:
        timeout = parse_timeout(timeout_value)
        if timeout is None:
            refusal = (200, grpc.StatusCode.INTERNAL, "malformed grpc-timeout")
            return RequestHead(None, None, encoding, refusal)
    if encoding not in (b"identity", b"gzip", b"deflate"):
        refusal = (
            200,
            grpc.StatusCode.UNIMPLEMENTED,
            f"Compression algorithm '{encoding.decode('latin-1')}' is not supported",
        )
        return RequestHead(None, None, encoding, refusal)
    return RequestHead(method, timeout, encoding, None, headers)


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout: at most 8 digits and a unit; None when malformed."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8, with bytes outside printable ASCII and '%' as %XX."""
    raw = message.encode("utf-8")
    if all(byte in _UNESCAPED for byte in raw):
        return raw
    return b"".join(bytes((byte,)) if byte in _UNESCAPED else b"%%%02X" % byte for byte in raw)


def status_block(code: grpc.StatusCode, message: str) -> bytes:
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    return block


def trailers_only(code: grpc.StatusCode, message: str, http_status: int = 200) -> bytes:
    """A complete response in one header block, for calls that end before any message."""
    head = (
        RESPONSE_HEADERS
        if http_status == 200
        else status_line(http_status) + _CONTENT_TYPE + _ACCEPT
    )
    return head + status_block(code, message)


def decompress(encoding: bytes, data: bytes, limit: int) -> bytes | None:
    """Inflate one message (gzip or zlib-wrapped deflate); None when it exceeds `limit`."""
    wbits = 31 if encoding == b"gzip" else 15
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit:
        return None
    if not inflater.eof:
        raise zlib.error("truncated compressed message")
    return out
