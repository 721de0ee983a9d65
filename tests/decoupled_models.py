"""Decoupled python-backend models for tests, written as Triton's decoupled examples are: the
model answers through `request.get_response_sender()`, from a thread it starts per request, and
`execute()` returns None."""

from __future__ import annotations

# MODE picks the behaviour; IN's values are what is repeated (one response per element, OUT =
# the value, IDX = its position).
#   0: the responses, then the final flag alone      1: the final flag rides on the last response
#   2: an error response at IDX 1, the stream goes on  3: execute() raises
#   4: execute() returns responses (not allowed)     5: one response, then no final flag until
#      the request is cancelled (the stream is ended by the server); 6: only the final flag
#   7: like 0, a response every 50 ms (still streaming while the model unloads)
REPEAT = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def response(value, index):
    return pb_utils.InferenceResponse([
        pb_utils.Tensor("OUT", np.array([value], np.int32)),
        pb_utils.Tensor("IDX", np.array([index], np.uint32)),
    ])


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []
        cancelled = pb_utils.MetricFamily(
            "repeat_cancelled", "requests that saw is_cancelled()", pb_utils.MetricFamily.COUNTER
        )
        self.cancelled = cancelled.Metric(labels={"model": args["model_name"]})

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().tolist()
            mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
            if mode == 3:
                raise ValueError("execute failed on purpose")
            if mode == 4:
                return [response(0, 0) for _ in requests]
            sender = request.get_response_sender()
            thread = threading.Thread(target=self.respond, args=(sender, values, mode))
            thread.start()
            self.threads.append(thread)
        return None

    def respond(self, sender, values, mode):
        time.sleep(0.01)  # after execute() returned
        if mode == 5:
            sender.send(response(values[0], 0))
            for _ in range(1000):
                if sender.is_cancelled():
                    self.cancelled.increment(1)
                    break
                time.sleep(0.01)
            try:
                sender.send(flags=FINAL)
            except pb_utils.TritonModelException:
                pass  # the server ended the stream already
            return
        for index, value in enumerate(values):
            if mode == 7:
                time.sleep(0.05)
            last = index == len(values) - 1
            if mode == 2 and index == 1:
                code = pb_utils.TritonError.INVALID_ARG
                error = pb_utils.TritonError(f"no value at {index}", code)
                sender.send(pb_utils.InferenceResponse(error=error))
            else:
                sender.send(response(value, index), flags=FINAL if mode == 1 and last else 0)
        if mode != 1 or not values:
            sender.send(flags=FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join()
"""

REPEAT_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] }
]
output [
  { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
instance_group [{ count: 1 kind: KIND_CPU }]
"""

# A non-decoupled model that answers through the response sender inside execute() and returns
# None (Triton allows it since 23.x).
SENDER_ANSWERS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            answer = pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)])
            request.get_response_sender().send(
                answer, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            )
        return None
"""
