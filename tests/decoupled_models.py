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


# `async def execute()` that waits 300 ms, then answers OUT = the most calls it saw in
# progress at once, IDX = 0. MODE 1 raises after the wait, MODE 2 returns [] (not allowed).
# Same inputs and outputs as REPEAT (REPEAT_CONFIG).
ASYNC_WAITER = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        self.running = 0
        self.peak = 0

    async def execute(self, requests):
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.3)
            for request in requests:
                mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
                if mode == 1:
                    raise ValueError("failed after waiting")
                if mode == 2:
                    return []
                response = pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUT", np.array([self.peak], np.int32)),
                    pb_utils.Tensor("IDX", np.array([0], np.uint32)),
                ])
                request.get_response_sender().send(response, flags=FINAL)
        finally:
            self.running -= 1
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

# BLS to a decoupled model: calls the "target" request parameter's model (default "repeat")
# with exec(decoupled=True), with async_exec(decoupled=True) twice at once when "async" is
# set, or with a plain exec() when "plain" is, and answers SEEN, a JSON
# list per call of what each response held: its OUT value, "empty", or "error: <message>".
# "cancel_after" > 0 cancels the call after that many responses.
BLS_DECOUPLED = """
import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def seen(responses, output, cancel_after):
    got = []
    for response in responses:
        if response.has_error():
            got.append("error: " + response.error().message())
        elif not response.output_tensors():
            got.append("empty")
        else:
            got.append(int(pb_utils.get_output_tensor_by_name(response, output).as_numpy()[0]))
        if len(got) == cancel_after:
            responses.cancel()
    return got


class TritonPythonModel:
    async def execute(self, requests):
        answers = []
        for request in requests:
            params = json.loads(request.parameters())
            target = params.get("target", "repeat")
            cancel_after = int(params.get("cancel_after", 0))
            inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in ("IN", "MODE")]
            output = "OUT"
            if target == "add_sub":  # not decoupled: one response, the final one
                x = np.ones(4, np.float32)
                inputs = [pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", x)]
                output = "OUTPUT0"
            call = pb_utils.InferenceRequest(
                model_name=target, inputs=inputs, requested_output_names=[]
            )
            if params.get("plain"):  # one answer asked of any model
                iterators = [[call.exec()]]
            elif params.get("async"):
                iterators = await asyncio.gather(
                    call.async_exec(decoupled=True), call.async_exec(decoupled=True)
                )
            else:
                iterators = [call.exec(decoupled=True)]
            got = [seen(iterator, output, cancel_after) for iterator in iterators]
            out = np.array([json.dumps(got).encode()], dtype=np.object_)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", out)]))
        return answers
"""

# Answers from a thread of its own, as Triton's decoupled examples do: the thread calls
# "repeat" with exec(decoupled=True) and sends each value it got, plus the sum of a plain
# exec() of add_sub (4 x 1 + 1 = 2 at each element), then the final flag. Same inputs and
# outputs as REPEAT (REPEAT_CONFIG).
THREADED_BLS = """
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


def answer(value, index):
    return pb_utils.InferenceResponse([
        pb_utils.Tensor("OUT", np.array([value], np.int32)),
        pb_utils.Tensor("IDX", np.array([index], np.uint32)),
    ])


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in ("IN", "MODE")]
            thread = threading.Thread(
                target=self.relay, args=(request.get_response_sender(), inputs)
            )
            thread.start()
        return None

    def relay(self, sender, inputs):
        call = pb_utils.InferenceRequest(model_name="repeat", inputs=inputs)
        values = [
            int(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()[0])
            for response in call.exec(decoupled=True)
            if response.output_tensors()
        ]
        x = np.ones(4, np.float32)
        plain = pb_utils.InferenceRequest(
            model_name="add_sub",
            inputs=[pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", x)],
            requested_output_names=["OUTPUT0"],
        ).exec()
        values.append(int(pb_utils.get_output_tensor_by_name(plain, "OUTPUT0").as_numpy()[0]))
        for index, value in enumerate(values):
            sender.send(answer(value, index))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

BLS_DECOUPLED_CONFIG = """
backend: "python"
max_batch_size: 0
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] }
]
output [{ name: "SEEN" data_type: TYPE_STRING dims: [ 1 ] }]
"""

# For ensembles around a decoupled model: ADD adds DELTA (a parameter) to X, as Y.
ADD = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.delta = int(parameters["DELTA"]["string_value"])

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + self.delta)]) for x in xs]
"""


def add_config(delta: int, dims: str) -> str:
    return f"""
backend: "python"
max_batch_size: 0
input [{{ name: "X" data_type: TYPE_INT32 dims: [ {dims} ] }}]
output [{{ name: "Y" data_type: TYPE_INT32 dims: [ {dims} ] }}]
parameters {{ key: "DELTA" value: {{ string_value: "{delta}" }} }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""


def ensemble_config(steps: str, outputs: str = "OUT") -> str:
    """An ensemble with REPEAT's inputs (IN, MODE) and INT32 [1] outputs, of these steps."""
    out = ", ".join(
        f'{{ name: "{name}" data_type: TYPE_INT32 dims: [ 1 ] }}' for name in outputs.split()
    )
    return f"""
platform: "ensemble"
max_batch_size: 0
input [
  {{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] }}
]
output [ {out}, {{ name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }} ]
ensemble_scheduling {{ step [ {steps} ] }}
"""


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'{{ model_name: "{model}" model_version: -1 {" ".join(maps)} }}'


# A decoupled stateful model: per request, one response per unit of IN, each the sequence's
# running count, its CORRID and the END flag, then the final flag alone. Decoupled models have
# no implicit state: the counts live in the instance, keyed by CORRID. Slots without a request
# (READY 0, the direct strategy's padding) get the final flag only.
COUNTING_SEQUENCE = """
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        self.counts = {}

    def execute(self, requests):
        for request in requests:
            def control(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy().item()

            sender = request.get_response_sender()
            if control("READY"):
                corrid = control("CORRID")
                if control("START"):
                    self.counts[corrid] = 0
                for _ in range(control("IN")):
                    self.counts[corrid] += 1
                    out = np.array([[self.counts[corrid], corrid, control("END")]], np.int64)
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
            sender.send(flags=FINAL)
        return None
"""

COUNTING_SEQUENCE_CONFIG = """
backend: "python"
max_batch_size: 2
model_transaction_policy { decoupled: true }
input [{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }]
output [{ name: "OUT" data_type: TYPE_INT64 dims: [ 3 ] }]
sequence_batching {
  control_input [
    { name: "START" control [{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }] },
    { name: "END" control [{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }] },
    { name: "READY" control [{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }] },
    { name: "CORRID" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }] }
  ]
}
instance_group [{ count: 1 kind: KIND_CPU }]
"""


# Counts down from INPUT: each run (after the config's delay_ms) answers OUTPUT = what is
# left, then reschedules the request until nothing is (an iterative sequence model's way).
# SEEN tells what the run saw: its request's correlation ID and flags, and the flags of every
# request of its batch. Decoupled, it streams one response per run.
COUNTDOWN = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.delay = float(config["parameters"]["delay_ms"]["string_value"]) / 1000
        self.left = {}

    def execute(self, requests):
        time.sleep(self.delay)
        batch = [request.flags() for request in requests]
        responses = []
        for request in requests:
            key = request.correlation_id()
            if key not in self.left:
                count = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                self.left[key] = int(count.ravel()[0])
            self.left[key] -= 1
            left = self.left[key]
            seen = {"corrid": key, "flags": request.flags(), "batch": batch}
            response = pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", np.array([[left]], np.int32)),
                pb_utils.Tensor("SEEN", np.array([[json.dumps(seen).encode()]], np.object_)),
            ])
            if left > 0:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
            else:
                del self.left[key]
            if self.decoupled:
                flags = 0 if left > 0 else pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                request.get_response_sender().send(response, flags=flags)
            else:
                responses.append(None if left > 0 else response)
        return None if self.decoupled else responses
"""


# The same as `async def execute()`: a decoupled model's calls of it overlap on an instance.
ASYNC_COUNTDOWN = COUNTDOWN.replace("import json\n", "import asyncio\nimport json\n").replace(
    "    def execute(self, requests):\n        time.sleep(self.delay)",
    "    async def execute(self, requests):\n        await asyncio.sleep(self.delay)",
)
assert ASYNC_COUNTDOWN.count("async def execute") == 1


def countdown_config(decoupled: bool, scheduling: str, delay_ms: int = 0) -> str:
    return f"""
backend: "python"
max_batch_size: 4
input [{{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }}]
output [
  {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "SEEN" data_type: TYPE_STRING dims: [ 1 ] }}
]
model_transaction_policy {{ decoupled: {str(decoupled).lower()} }}
{scheduling}
parameters {{ key: "delay_ms" value {{ string_value: "{delay_ms}" }} }}
instance_group [{{ kind: KIND_CPU count: 1 }}]
"""
