"""Tiny stateful (sequence batching) models for tests: an ONNX accumulator with implicit state
and echoed controls, and a python-backend model that reports what the sequence batcher fed it."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from tests.models import finish


def accumulator_model() -> onnx.ModelProto:
    """INT32 ["batch", 1]: OUTPUT = INPUT + STATE_IN, STATE_OUT = OUTPUT (implicit state), and
    the control inputs echoed (START, READY, CORRID) so that tests see what the model saw."""
    rows: list[str | int] = ["batch", 1]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT", "STATE_IN"], ["OUTPUT"]),
            helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
            helper.make_node("Identity", ["START"], ["START_SEEN"]),
            helper.make_node("Identity", ["READY"], ["READY_SEEN"]),
            helper.make_node("Identity", ["CORRID"], ["CORRID_SEEN"]),
        ],
        "accumulator",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.INT32, rows),
            helper.make_tensor_value_info("STATE_IN", TensorProto.INT32, rows),
            helper.make_tensor_value_info("START", TensorProto.INT32, rows),
            helper.make_tensor_value_info("READY", TensorProto.FLOAT, rows),
            helper.make_tensor_value_info("CORRID", TensorProto.UINT64, rows),
        ],
        [
            helper.make_tensor_value_info(name, dtype, rows)
            for name, dtype in (
                ("OUTPUT", TensorProto.INT32),
                ("STATE_OUT", TensorProto.INT32),
                ("START_SEEN", TensorProto.INT32),
                ("READY_SEEN", TensorProto.FLOAT),
                ("CORRID_SEEN", TensorProto.UINT64),
            )
        ],
    )
    return finish(graph)


def accumulator_config(
    name: str, strategy: str = "", max_batch_size: int = 4, extra: str = "", initial: str = ""
) -> str:
    """Inputs and outputs are auto-completed from the graph (less the sequence tensors)."""
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
sequence_batching {{
  {strategy}
  {extra}
  control_input [
    {{ name: "START" control [{{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }}] }},
    {{ name: "READY" control [{{ kind: CONTROL_SEQUENCE_READY fp32_false_true: [0, 1] }}] }},
    {{ name: "CORRID" control [{{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }}] }}
  ]
  state [{{
    input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [1] {initial}
  }}]
}}
instance_group [{{ kind: KIND_CPU count: 1 }}]
"""


# Reports, per request, what the sequence batcher fed it and what the request API says; keeps
# a running sum in the implicit state.
SEQUENCE_PY = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        # What the whole batch looked like: padding rows of the direct strategy have READY=0.
        batch = [
            [
                pb_utils.get_input_tensor_by_name(r, "READY").as_numpy().ravel()[0].item(),
                r.correlation_id(),
            ]
            for r in requests
        ]
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            state = pb_utils.get_input_tensor_by_name(request, "STATE_IN").as_numpy()
            seen = {}
            for name in ("START", "END", "READY", "CORRID"):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    value = tensor.as_numpy().ravel()[0]
                    seen[name] = value.decode() if isinstance(value, bytes) else value.item()
            seen["correlation_id"] = request.correlation_id()
            seen["flags"] = request.flags()
            seen["parameters"] = json.loads(request.parameters())
            seen["batch"] = batch
            total = (x.reshape(state.shape) + state).astype(np.int32)
            info = np.array([json.dumps(seen).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT", total.reshape(x.shape)),
                pb_utils.Tensor("INFO", info.reshape(x.shape)),
                pb_utils.Tensor("STATE_OUT", total),
            ]))
        return responses
"""


def sequence_py_config(
    name: str,
    max_batch_size: int = 0,
    corrid: str = "TYPE_STRING",
    strategy: str = "oldest { max_candidate_sequences: 2 }",
) -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [{{ name: "INPUT" data_type: TYPE_INT32 dims: [1] }}]
output [
  {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [1] }},
  {{ name: "INFO" data_type: TYPE_STRING dims: [1] }}
]
sequence_batching {{
  {strategy}
  control_input [
    {{ name: "START" control [{{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }}] }},
    {{ name: "END" control [{{ kind: CONTROL_SEQUENCE_END bool_false_true: [false, true] }}] }},
    {{ name: "READY" control [{{ kind: CONTROL_SEQUENCE_READY int32_false_true: [0, 1] }}] }},
    {{ name: "CORRID" control [{{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }}] }}
  ]
  state [{{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [1] }}]
}}
instance_group [{{ kind: KIND_CPU count: 1 }}]
"""


# A model without sequence batching that forwards its request's sequence to the stateful
# accumulator through BLS (correlation_id and flags of pb_utils.InferenceRequest).
FORWARD_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name="acc_direct",
                inputs=[pb_utils.get_input_tensor_by_name(request, "INPUT")],
                requested_output_names=["OUTPUT"],
                correlation_id=request.correlation_id(),
                flags=request.flags(),
            )
            answer = call.exec()
            if answer.has_error():
                responses.append(pb_utils.InferenceResponse(error=answer.error()))
            else:
                total = pb_utils.get_output_tensor_by_name(answer, "OUTPUT")
                responses.append(pb_utils.InferenceResponse(output_tensors=[total]))
        return responses
"""

FORWARD_CONFIG = """
name: "forward"
backend: "python"
max_batch_size: 2
input [{ name: "INPUT" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUTPUT" data_type: TYPE_INT32 dims: [1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
"""
