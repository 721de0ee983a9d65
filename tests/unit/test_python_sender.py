"""The response sender of python models and the response stream behind it: flags, Triton's
messages, errors, send order across threads, and the end of a stream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.backends import python_api as pb_utils
from inferd.backends.base import InstanceRequest
from inferd.backends.python_sender import ResponseSender, SingleResponseSender
from inferd.batching.decoupled import ResponseStream, StreamItem
from inferd.server.errors import ErrorCode, InferdError, unavailable
from tests.decoupled_models import REPEAT, REPEAT_CONFIG
from tests.unit.test_python_backend import make_instance

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CLOSED = "Unable to send response. Response sender has been closed."


class Received:
    """A stream on a real loop, and what it handed over."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[tuple[StreamItem, bool]] = []
        self.closed: list[ResponseStream] = []
        self.stream = ResponseStream(
            loop, lambda item, final: self.items.append((item, final)), self.closed.append
        )

    def settle(self) -> list[tuple[StreamItem, bool]]:
        """Run the loop until what was sent so far has arrived."""
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.run_until_complete(asyncio.sleep(0))
        return self.items


@pytest.fixture
def received() -> Iterator[Received]:
    loop = asyncio.new_event_loop()
    yield Received(loop)
    loop.close()


def convert(response: Any) -> Any:
    """What the backend makes of a response: outputs by name, or the response's error."""
    if response.has_error():
        error = response.error()
        return InferdError(
            pb_utils.ERROR_CODES.get(error.code(), ErrorCode.INTERNAL), error.message()
        )
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def out(value: int) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.int32))])


def values(items: list[tuple[StreamItem, bool]]) -> list[tuple[Any, bool]]:
    return [
        (item["OUT"].tolist() if isinstance(item, dict) else item, final) for item, final in items
    ]


def test_responses_then_the_final_flag_alone(received: Received) -> None:
    sender = ResponseSender(convert, received.stream)
    sender.send(out(1))
    sender.send(out(2))
    sender.send(flags=FINAL)
    assert values(received.settle()) == [([1], False), ([2], False), (None, True)]
    assert received.closed == [received.stream]


def test_the_final_flag_may_ride_on_the_last_response(received: Received) -> None:
    sender = ResponseSender(convert, received.stream)
    sender.send(out(7), flags=FINAL)
    assert values(received.settle()) == [([7], True)]


def test_nothing_may_be_sent_after_the_final_flag(received: Received) -> None:
    sender = ResponseSender(convert, received.stream)
    sender.send(flags=FINAL)
    with pytest.raises(pb_utils.TritonModelException, match=CLOSED):
        sender.send(out(1))
    with pytest.raises(pb_utils.TritonModelException, match=CLOSED):
        sender.send(flags=FINAL)
    assert values(received.settle()) == [(None, True)]


def test_a_response_is_required_unless_the_flag_is_final(received: Received) -> None:
    sender = ResponseSender(convert, received.stream)
    with pytest.raises(
        pb_utils.TritonModelException,
        match="Inference Response object must be provided when the response flags is set to zero",
    ):
        sender.send(None, flags=0)
    # Flags but 0 and the final flag are refused in Triton's words, and nothing is sent.
    with pytest.raises(pb_utils.TritonModelException, match="Unsupported flag provided"):
        sender.send(out(1), flags=7)
    sender.send(flags=FINAL)
    assert values(received.settle()) == [(None, True)]


def test_an_error_response_is_that_response_s_error(received: Received) -> None:
    sender = ResponseSender(convert, received.stream)
    error = pb_utils.TritonError("bad value", pb_utils.TritonError.INVALID_ARG)
    sender.send(pb_utils.InferenceResponse(error=error))
    sender.send(out(3), flags=FINAL)
    [(first, final), second] = received.settle()
    assert isinstance(first, InferdError) and not final
    assert (first.code, first.message) == (ErrorCode.INVALID_ARG, "bad value")
    assert values([second]) == [([3], True)]


def test_sends_from_several_threads_arrive_in_send_order(received: Received) -> None:
    sender = ResponseSender(convert, received.stream)
    order: list[int] = []
    lock = threading.Lock()

    def send_from_thread(offset: int) -> None:
        for i in range(30):  # 120 in all: below MAX_UNDELIVERED, as the loop does not run yet
            with lock:  # the order in which the sends happened
                value = offset + i
                order.append(value)
                sender.send(out(value))

    threads = [threading.Thread(target=send_from_thread, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sender.send(flags=FINAL)
    got = values(received.settle())
    assert [v[0] for v, _ in got[:-1]] == order
    assert got[-1] == (None, True)


def test_abort_ends_an_open_stream_once_and_cancels_the_request(received: Received) -> None:
    sender = ResponseSender(convert, received.stream)
    sender.send(out(1))
    received.settle()
    assert not sender.is_cancelled()
    received.stream.abort(unavailable("unloaded"))
    received.stream.abort(unavailable("again"))  # a finished stream takes nothing more
    assert sender.is_cancelled()
    with pytest.raises(pb_utils.TritonModelException, match=CLOSED):
        sender.send(flags=FINAL)
    items = received.settle()
    assert len(items) == 2 and items[1][1] is True
    assert isinstance(items[1][0], InferdError) and items[1][0].message == "unloaded"


def test_a_failed_request_ends_its_stream_and_a_done_one_leaves_it_open(
    received: Received,
) -> None:
    done: asyncio.Future[Any] = received.loop.create_future()
    done.set_result({})
    received.stream.settle(done)
    assert received.settle() == []  # execute() returned: the model sends on
    failed: asyncio.Future[Any] = received.loop.create_future()
    failed.set_exception(unavailable("Request timeout expired"))
    received.stream.settle(failed)
    [(error, final)] = received.settle()
    assert isinstance(error, InferdError) and final


def test_a_non_decoupled_request_takes_one_response() -> None:
    sender = SingleResponseSender(convert)
    sender.send(out(4), flags=FINAL)
    assert sender.answer is not None and not isinstance(sender.answer, Exception)
    assert sender.answer["OUT"].tolist() == [4]
    with pytest.raises(pb_utils.TritonModelException, match=CLOSED):
        sender.send(out(5))
    twice = SingleResponseSender(convert)
    twice.send(out(1))
    with pytest.raises(pb_utils.TritonModelException, match="cannot send more than one response"):
        twice.send(out(2))
    twice.close()
    with pytest.raises(pb_utils.TritonModelException, match=CLOSED):
        twice.send(flags=FINAL)
    assert not twice.is_cancelled()


def test_a_non_decoupled_final_flag_needs_a_response_first() -> None:
    sender = SingleResponseSender(convert)
    with pytest.raises(pb_utils.TritonModelException, match="cannot send complete final before"):
        sender.send(flags=FINAL)  # Triton's words: the request would get no answer


# Sends its answer, then a second one, which raises out of execute().
SENDS_TWICE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        answer = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([7], np.int32))])
        sender.send(answer)
        sender.send(answer)
"""


def test_a_response_sent_before_execute_fails_still_answers(tmp_path: Path) -> None:
    # As in Triton, which delivered it when it was sent.
    config = REPEAT_CONFIG.replace("model_transaction_policy { decoupled: true }", "")
    instance = make_instance(tmp_path, "twice", SENDS_TWICE, config)
    try:
        inputs = {"IN": np.array([1], np.int32), "MODE": np.array([0], np.int32)}
        [answer] = instance.execute_requests([InstanceRequest(inputs)])
    finally:
        instance.close()
    assert not isinstance(answer, Exception) and answer["OUT"].tolist() == [7]


def test_requests_made_by_models_have_no_sender() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="handed to execute"):
        pb_utils.InferenceRequest(model_name="m").get_response_sender()
    assert pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL == 1


def test_a_decoupled_instance_answers_through_the_stream(
    tmp_path: Path, received: Received
) -> None:
    instance = make_instance(tmp_path, "repeat", REPEAT, REPEAT_CONFIG)
    try:
        request = InstanceRequest(
            {"IN": np.array([4, 5], np.int32), "MODE": np.array([1], np.int32)},
            id="r",
            outputs=("OUT",),  # IDX is dropped, as for any request
            responses=received.stream,
        )
        assert instance.execute_requests([request]) == [{}]  # execute() itself is done
        instance.close()  # finalize() joins the model's threads: every send happened
        items = received.settle()
    finally:
        if instance._model is not None:
            instance.close()
    assert [(sorted(item), final) for item, final in items if isinstance(item, dict)] == [
        (["OUT"], False),
        (["OUT"], True),
    ]
    assert values(items) == [([4], False), ([5], True)]


# Answers whether its request was cancelled (an iterative model may stop between runs).
ASKS_CANCELLED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            cancelled = np.array([int(request.is_cancelled())], np.int32)
            response = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", cancelled)])
            request.get_response_sender().send(
                response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            )
"""
ASKS_CANCELLED_CONFIG = """
backend: "python"
input [{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }]
model_transaction_policy { decoupled: true }
"""


@pytest.mark.parametrize("left", [False, True])
def test_a_decoupled_request_knows_when_its_client_left(
    tmp_path: Path, received: Received, left: bool
) -> None:
    instance = make_instance(tmp_path, "asks", ASKS_CANCELLED, ASKS_CANCELLED_CONFIG)
    received.stream.cancelled = left
    request = InstanceRequest({"IN": np.zeros(1, np.int32)}, responses=received.stream)
    instance.execute_requests([request])
    instance.close()
    assert values(received.settle()) == [([int(left)], True)]
