"""What a gRPC handler sees, whichever stack carries the call.

The gRPC port runs on inferd's own HTTP/2 layer (`grpc_transport`) or on grpc.aio; handlers are
written once against these types and never touch either stack directly.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc


class RpcError(Exception):
    """Ends a call with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ServerCall(Protocol):
    """One call, as its handler sees it."""

    async def write(self, message: Any) -> None:
        """Send one response message of a streaming call (waits while flow control blocks)."""

    def metadata(self) -> list[tuple[str, str]]:
        """The call's request metadata (names in lower case), text values only: what a client
        sent, without the protocol's own headers."""

    def set_trailing_metadata(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Metadata sent with the call's OK status (names in lower case, text values)."""


class MethodKind(enum.Enum):
    # Handler signatures, with `call` a ServerCall:
    UNARY_UNARY = "unary_unary"  # async (request, call) -> response
    UNARY_STREAM = "unary_stream"  # async (request, call) -> None, writing with call.write
    STREAM_STREAM = "stream_stream"  # async (AsyncIterator[request], call) -> None, likewise


# How a callback-style unary handler answers: the response message, or an RpcError. Once.
Respond = Callable[[Any], None]
# (request, respond, arrival_ns, call) -> a future that cancelling the call cancels, or None
# when answered already. arrival_ns (monotonic): the start of the loop turn that read the call.
AnswerNow = Callable[[Any, Respond, int, ServerCall], "asyncio.Future[Any] | None"]


@dataclass(frozen=True, slots=True)
class RpcMethod:
    kind: MethodKind
    handler: Callable[..., Any]
    parse: Callable[[bytes], Any]
    serialize: Callable[[Any], bytes]
    # The same unary method without a task per call, for a stack that can take it (inferd's
    # own): answered from a callback. grpc.aio always runs `handler`.
    answer_now: AnswerNow | None = None
    # --grpc-restricted-protocol: the (metadata key, value) a call must carry, else UNAVAILABLE.
    required_header: tuple[str, str] | None = None
    refusal: str = ""  # the message for a call without it
