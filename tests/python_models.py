"""Tiny Triton python-backend models for tests: model.py sources written against the
`triton_python_backend_utils` API, their configs, and a writer for repositories."""

from __future__ import annotations

from pathlib import Path

# Triton's canonical example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, with the
# output types read from the config the way Triton's own example does.
ADD_SUB = """
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"]
            )
            for name in ("OUTPUT0", "OUTPUT1")
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            sum_ = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.dtypes["OUTPUT0"]))
            diff = pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(self.dtypes["OUTPUT1"]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[sum_, diff]))
        return responses

    def finalize(self):
        pb_utils.Logger.log_info("add_sub: finalize")
"""

ADD_SUB_CONFIG = """
name: "add_sub"
backend: "python"
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
instance_group [{ kind: KIND_CPU }]
"""

# BYTES in and out: each string reversed.
REVERSE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            flipped = np.array([item[::-1] for item in text.ravel()], dtype=np.object_)
            out = pb_utils.Tensor("REVERSED", flipped.reshape(text.shape))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

REVERSE_CONFIG = """
backend: "python"
max_batch_size: 8
input [{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }]
output [{ name: "REVERSED" data_type: TYPE_STRING dims: [ 1 ] }]
"""

# No config at all: auto_complete_config() says everything. OUTPUT0 = 2 * INPUT0.
AUTO = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.add_input(
            {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [2]}
        )
        auto_complete_model_config.add_output(
            {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [2]}
        )
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", 2 * x)]))
        return responses
"""

# Tells what it was given: its initialize() args, and per request what the request says.
INFO = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = dict(args)
        self.args["get_model_dir()"] = pb_utils.get_model_dir()  # not Triton's: for the test

    def execute(self, requests):
        responses = []
        for request in requests:
            seen = {
                "request_id": request.request_id(),
                "parameters": json.loads(request.parameters()),
                "correlation_id": request.correlation_id(),
                "flags": request.flags(),
                "requested": sorted(request.requested_output_names()),
            }
            outputs = [
                pb_utils.Tensor(name, np.array([json.dumps(value).encode()], dtype=np.object_))
                for name, value in (("ARGS", self.args), ("REQUEST", seen))
                if name in request.requested_output_names()
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""

INFO_CONFIG = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]
output [
  { name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "REQUEST" data_type: TYPE_STRING dims: [ 1 ] }
]
"""

# Tells the shape of each input it was given (SHAPES) and the request's parameters (PARAMS),
# as JSON; its outputs' config order is not their name order.
SHAPES = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            shapes = {t.name(): list(t.as_numpy().shape) for t in request.inputs()}
            texts = {"SHAPES": json.dumps(shapes), "PARAMS": request.parameters()}
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(name, np.array([text.encode()], dtype=np.object_))
                        for name, text in texts.items()
                    ]
                )
            )
        return responses
"""

SHAPES_CONFIG = """
backend: "python"
input [
  { name: "A" data_type: TYPE_STRING dims: [ -1, -1 ] optional: true },
  { name: "D" data_type: TYPE_INT64 dims: [ 3 ] optional: true },
  { name: "F" data_type: TYPE_INT32 dims: [ -1, 3 ] optional: true },
  { name: "H" data_type: TYPE_INT32 dims: [ 2, -1, 3 ] optional: true }
]
output [
  { name: "SHAPES" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] }
]
"""

# Dynamic batching: every request learns how many requests its execute() call got (COUNT);
# a request with a negative value fails alone, with an INVALID_ARG error.
BATCHER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if (x < 0).any():
                error = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            count = np.full((x.shape[0], 1), len(requests), dtype=np.int32)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("COUNT", count)]
                )
            )
        return responses
"""

BATCHER_CONFIG = """
backend: "python"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] }
]
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000 }
"""

RAISER = """
class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("cannot compute this batch")
"""

# finalize() leaves a file named after the instance in the model's folder.
FINALIZER = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marker = f"{args['model_repository']}/finalized_{args['model_instance_name']}"

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy())])
            for r in requests
        ]

    def finalize(self):
        with open(self.marker, "w") as marker:
            marker.write("done")
"""

IDENTITY_CONFIG = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
"""


# As PyTorch models use their tensors: the inputs are the model's to change in place (Triton's
# stub gets its own copy), and tensors cross to a DLPack consumer and back without a copy
# (numpy plays the framework). INPUT0 [x] gives OUTPUT0 [2x + 1].
IN_PLACE_DLPACK = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            tensor.as_numpy()[...] *= 2
            seen = np.from_dlpack(tensor)  # as torch.from_dlpack(tensor)
            seen += 1
            out = pb_utils.Tensor.from_dlpack("OUTPUT0", tensor.to_dlpack())
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

# BF16 in and out: numpy holds it (ml_dtypes), and a DLPack producer hands it back.
BF16_DOUBLE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            doubled = pb_utils.Tensor("DOUBLED", x * 2)
            out = pb_utils.Tensor.from_dlpack("OUTPUT0", doubled)
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

BF16_CONFIG = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_BF16 dims: [ 3 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_BF16 dims: [ 3 ] }]
"""


# Imports a file beside it (scaling.py, written by the test): OUTPUT0 = scale(INPUT0).
HELPED = """
import triton_python_backend_utils as pb_utils
from scaling import scale


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", scale(x))]))
        return responses
"""


# Holds every request until the test creates the file "release" in its folder.
GATE = """
import os
import time

import triton_python_backend_utils as pb_utils

FOLDER = {folder!r}


class TritonPythonModel:
    def execute(self, requests):
        open(os.path.join(FOLDER, "started"), "w").close()
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(FOLDER, "release")):
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.005)
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy())]
            )
            for r in requests
        ]
"""


def config_named(config: str, name: str) -> str:
    """The add_sub config for a model folder of another name."""
    return config.replace('name: "add_sub"', f'name: "{name}"')


def write_python_model(
    repo: Path, name: str, source: str, config: str | None = None, versions: tuple[int, ...] = (1,)
) -> Path:
    """Write <repo>/<name>/<v>/model.py for each version, and config.pbtxt if given."""
    model_dir = repo / name
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (model_dir / str(version) / "model.py").write_text(source)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


# BLS: calls add_sub for each request and doubles the sum; also reports what calling a
# missing model and calling itself give (an error response, and an exception).
BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in ("INPUT0", "INPUT1")]
            call = pb_utils.InferenceRequest(
                model_name="add_sub",
                requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.Tensor(t.name(), t.as_numpy()) for t in inputs],
            )
            answer = call.exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            total = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
            missing = pb_utils.InferenceRequest(
                model_name="no_such_model", requested_output_names=["x"], inputs=[]
            ).exec()
            try:
                pb_utils.InferenceRequest(
                    model_name="bls", requested_output_names=["OUTPUT0"], inputs=inputs
                ).exec()
                itself = "called itself"
            except pb_utils.TritonModelException as error:
                itself = error.message()
            try:
                pb_utils.InferenceRequest(
                    model_name="add_sub", inputs=inputs, parameters={"t": 0.5}
                ).exec()
                floats = "sent"
            except pb_utils.TritonModelException as error:
                floats = error.message()
            notes = [missing.error().message(), str(missing.error().code()), itself, floats]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", total * 2),
                pb_utils.Tensor("NOTES", np.array([n.encode() for n in notes], dtype=np.object_)),
            ]))
        return responses
"""

BLS_CONFIG = """
name: "bls"
backend: "python"
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "NOTES" data_type: TYPE_STRING dims: [ 4 ] }
]
"""

# async execute(): both add_sub outputs fetched by two concurrent BLS calls.
BLS_ASYNC = """
import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in ("INPUT0", "INPUT1")]
            calls = [
                pb_utils.InferenceRequest(
                    model_name="add_sub", requested_output_names=[name], inputs=inputs
                ).async_exec()
                for name in ("OUTPUT0", "OUTPUT1")
            ]
            total, difference = await asyncio.gather(*calls)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(total, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(difference, "OUTPUT1"),
            ]))
        return responses
"""


# Response parameters, as Triton's own test models set them: PARAMETERS holds them as JSON (a
# dict; for the decoupled model, a list of dicts, one response each), OUTPUT echoes each one's
# JSON. Parameters the constructor refuses come back as the request's INVALID_ARG error.
RESPONSE_PARAMETERS = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def echo(params):
    return pb_utils.Tensor("OUTPUT", np.array([json.dumps(params).encode()], dtype=np.object_))


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(
                pb_utils.get_input_tensor_by_name(request, "PARAMETERS").as_numpy().item()
            )
            try:
                responses.append(pb_utils.InferenceResponse([echo(params)], parameters=params))
            except pb_utils.TritonModelException as exc:
                error = pb_utils.TritonError(exc.message(), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
"""

RESPONSE_PARAMETERS_DECOUPLED = RESPONSE_PARAMETERS.replace(
    """            try:
                responses.append(pb_utils.InferenceResponse([echo(params)], parameters=params))
            except pb_utils.TritonModelException as exc:
                error = pb_utils.TritonError(exc.message(), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses""",
    """            sender = request.get_response_sender()
            for each in params:
                sender.send(pb_utils.InferenceResponse([echo(each)], parameters=each))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None""",
)

# Through BLS: OUTPUT is the JSON of [what response_parameters answered PARAMETERS with, [what
# each response of response_parameters_decoupled to STREAM held]], as parameters() gives them.
RESPONSE_PARAMETERS_BLS = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def call(model, tensor, **options):
    request = pb_utils.InferenceRequest(
        model_name=model, inputs=[tensor], requested_output_names=["OUTPUT"]
    )
    return request.exec(**options)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            single = call(
                "response_parameters", pb_utils.get_input_tensor_by_name(request, "PARAMETERS")
            )
            stream = pb_utils.Tensor(
                "PARAMETERS", pb_utils.get_input_tensor_by_name(request, "STREAM").as_numpy()
            )
            streamed = []
            for each in call("response_parameters_decoupled", stream, decoupled=True):
                if each.has_error():
                    raise pb_utils.TritonModelException(each.error().message())
                if each.output_tensors():  # not the final flag alone
                    streamed.append(json.loads(each.parameters()))
            seen = json.dumps([json.loads(single.parameters()), streamed]).encode()
            output = pb_utils.Tensor("OUTPUT", np.array([seen], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse([output]))
        return responses
"""


def response_parameters_config(inputs: tuple[str, ...], decoupled: bool = False) -> str:
    tensors = ", ".join(f'{{ name: "{n}" data_type: TYPE_STRING dims: [ 1 ] }}' for n in inputs)
    policy = "model_transaction_policy { decoupled: true }" if decoupled else ""
    return f"""
backend: "python"
input [{tensors}]
output [{{ name: "OUTPUT" data_type: TYPE_STRING dims: [ 1 ] }}]
{policy}
"""


# Model control from model code (pb_utils.load_model & co.). Each request's OP is a JSON
# [function, args, kwargs] run on pb_utils; RESULT is {"value": ...} or {"error": "Type: ..."}.
# ["notes"] gives what initialize() saw: it loads the model its config names in
# `load_on_init`, tries to call it (BLS) and to load itself; finalize() unloads
# `unload_on_finalize`.
MANAGER = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def attempt(call, *args, **kwargs):
    try:
        return {"value": call(*args, **kwargs)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.unload_on_finalize = parameters.get("unload_on_finalize")
        self.notes = {}
        target = parameters.get("load_on_init")
        if target:
            self.notes["ready_before"] = attempt(pb_utils.is_model_ready, target)
            self.notes["load"] = attempt(pb_utils.load_model, target)
            self.notes["ready_after"] = attempt(pb_utils.is_model_ready, target, "1")
            self.notes["bls"] = attempt(
                lambda: pb_utils.InferenceRequest(
                    model_name=target, requested_output_names=["OUTPUT0"], inputs=[]
                ).exec()
            )
            self.notes["load_itself"] = attempt(pb_utils.load_model, self.name)

    def execute(self, requests):
        responses = []
        for request in requests:
            op = pb_utils.get_input_tensor_by_name(request, "OP").as_numpy()[0]
            function, args, kwargs = json.loads(op)
            if function == "notes":
                result = {"value": self.notes}
            else:
                if "files" in kwargs:  # JSON has no bytes: strings are encoded, others kept
                    kwargs["files"] = {
                        k: v.encode() if isinstance(v, str) else v
                        for k, v in kwargs["files"].items()
                    }
                result = attempt(getattr(pb_utils, function), *args, **kwargs)
            text = np.array([json.dumps(result).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", text)]))
        return responses

    def finalize(self):
        if self.unload_on_finalize:
            pb_utils.unload_model(self.unload_on_finalize)
"""


def manager_config(load_on_init: str = "", unload_on_finalize: str = "") -> str:
    parameters = "".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
        for key, value in (
            ("load_on_init", load_on_init),
            ("unload_on_finalize", unload_on_finalize),
        )
        if value
    )
    return (
        'backend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "OP" data_type: TYPE_STRING dims: [ 1 ] }]\n'
        'output [{ name: "RESULT" data_type: TYPE_STRING dims: [ 1 ] }]\n' + parameters
    )


# A python model that calls `simple` through BLS with its own request's trace, and answers
# the trace context model code gets.
BLS_TRACE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = [
                pb_utils.Tensor(n, pb_utils.get_input_tensor_by_name(request, n).as_numpy())
                for n in ("INPUT0", "INPUT1")
            ]
            answer = pb_utils.InferenceRequest(
                model_name="simple", inputs=inputs, requested_output_names=["OUTPUT0"],
                trace=request.trace(),
            ).exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            context = request.trace().get_context() or "None"
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(answer, "OUTPUT0"),
                pb_utils.Tensor("CONTEXT", np.array([context.encode()], np.object_)),
            ]))
        return responses
"""
BLS_TRACE_CONFIG = """
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "CONTEXT" data_type: TYPE_STRING dims: [ 1 ] }
]
"""
