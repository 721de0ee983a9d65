"""Triton's response sender (`request.get_response_sender()`) for python models.

Decoupled models send 0..n responses per request through it, from `execute()` or from any
thread after it returned, and end with the final flag; each response goes to the request's
ResponseSink (batching/decoupled.py) as it is sent. Non-decoupled models may use it too (as in
Triton since 23.x): the one response it sends during `execute()` is the request's answer.
Messages are Triton's own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from inferd.backends import python_api as api
from inferd.backends.base import RequestOutcome, ResponseSink
from inferd.server.errors import InferdError, internal

_CLOSED = "Unable to send response. Response sender has been closed."
_NO_RESPONSE = "Inference Response object must be provided when the response flags is set to zero."
_ONE_ONLY = "Unable to send response. Non-decoupled model cannot send more than one response."
_BAD_FLAGS = "Unable to send response. Unsupported flag provided."
_FINAL_FIRST = "Non-decoupled model cannot send complete final before sending a response"

# A model's InferenceResponse as what the client gets: outputs or that response's error.
Convert = Callable[[object], RequestOutcome]


def _is_final(response: api.InferenceResponse | None, flags: int) -> bool:
    """Whether a send ends the request; flags but 0 and COMPLETE_FINAL are refused."""
    if flags == api.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
        return True
    if flags != 0:
        raise api.TritonModelException(_BAD_FLAGS)
    if response is None:
        raise api.TritonModelException(_NO_RESPONSE)
    return False


class ResponseSender:
    """Triton's InferenceResponseSender: `send(response=None, flags=0)`, `is_cancelled()`."""

    __slots__ = ("_convert", "_sink")

    def __init__(self, convert: Convert, sink: ResponseSink) -> None:
        self._convert = convert
        self._sink = sink

    def send(self, response: api.InferenceResponse | None = None, flags: int = 0) -> None:
        final = _is_final(response, flags)
        sink = self._sink
        if sink.closed:  # before converting: a late send costs nothing
            raise api.TritonModelException(_CLOSED)
        item = None if response is None else _as_item(self._convert(response))
        if not sink.send(item, final):
            raise api.TritonModelException(_CLOSED)

    def is_cancelled(self) -> bool:
        return self._sink.cancelled


class SingleResponseSender:
    """The sender of a non-decoupled model's request: it keeps the one response sent during
    `execute()`, which then answers the request (what execute() returns for it is ignored)."""

    __slots__ = ("_closed", "_convert", "_lock", "answer")

    def __init__(self, convert: Convert) -> None:
        self._convert = convert
        self._lock = threading.Lock()
        self._closed = False
        self.answer: RequestOutcome | None = None

    def send(self, response: api.InferenceResponse | None = None, flags: int = 0) -> None:
        final = _is_final(response, flags)
        with self._lock:
            if self._closed:
                raise api.TritonModelException(_CLOSED)
            if response is None and self.answer is None:  # `final` alone ends nothing yet
                raise api.TritonModelException(_FINAL_FIRST)
            if response is not None:
                if self.answer is not None:
                    raise api.TritonModelException(_ONE_ONLY)
                self.answer = self._convert(response)
            self._closed = final

    def close(self) -> None:
        """execute() returned: later sends are refused."""
        with self._lock:
            self._closed = True

    def is_cancelled(self) -> bool:
        return False


class DiscardSink:
    """Where a decoupled model's responses to warmup requests go."""

    cancelled = False
    closed = False
    holds_back = False

    def send(self, item: dict[str, np.ndarray] | InferdError | None, final: bool) -> bool:
        return True

    def seal(self) -> None:
        return


def _as_item(outcome: RequestOutcome) -> dict[str, np.ndarray] | InferdError:
    if isinstance(outcome, Exception) and not isinstance(outcome, InferdError):
        return internal(str(outcome))
    return outcome
