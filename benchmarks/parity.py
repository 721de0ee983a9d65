"""Drop-in parity with Triton: the same requests to inferd and to tritonserver 2.51 (the
peers' `triton-py`) on one repository of python models, over HTTP and gRPC, answers compared.

    python -m inferd.benchmarks.parity --out /tmp/parity

Writes the repository, starts both servers on 127.0.0.1, sends each request of the catalogue
below to both and compares the status and the answer (HTTP: the JSON body; gRPC: the status
code and message, or the response message). Prints one line per request: `same`, `differs on
purpose` (KNOWN: where inferd answers otherwise by choice, and why) or `DIFFERS`, and exits 1
when something differs that KNOWN does not list. Needs the peers (../shared/bench/peers). Not
a test: CI has no Triton; run it after touching the protocol, the python backend or the
config rules.
"""

from __future__ import annotations

import argparse
import http.client
import json
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc

from inferd.benchmarks import peers, ports, procs, servers
from inferd.benchmarks.procs import LOCALHOST, Probe

# The python backend's stub does not read PYTHONPATH: the models add the peers' site-packages
# (numpy) themselves, from this variable.
SITE = "PARITY_SITE_PACKAGES"
PRELUDE = f"""import json
import os
import sys

if os.environ.get("{SITE}"):
    sys.path.insert(0, os.environ["{SITE}"])

import numpy as np
import triton_python_backend_utils as pb_utils
"""

# Echoes each input as the output of the same position; leaves out those not given.
ECHO = """
class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            tensors = []
            for spec, out in zip(self.config["input"], self.config["output"]):
                given = pb_utils.get_input_tensor_by_name(request, spec["name"])
                if given is not None:
                    tensors.append(pb_utils.Tensor(out["name"], given.as_numpy().copy()))
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
"""

# Misbehaves as its MODE input asks: another dtype than its config's, no outputs, an error.
MODES = """
class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy().ravel()[0]
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            y = np.array([[1.0, 2.0]], np.float32)
            if mode == "fp64":  # as numpy code often makes it (np.mean of integers)
                y64 = y.astype(np.float64) * 0.5
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y64)]))
            elif mode == "none":
                responses.append(pb_utils.InferenceResponse([]))
            elif mode == "error":
                error = pb_utils.TritonError("gone", pb_utils.TritonError.NOT_FOUND)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return responses
"""

# Returns its outputs in an order that is neither its config's nor their names'.
ORDER = """
class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            names = ("M", "Z", "A")
            tensors = [pb_utils.Tensor(name, x + i) for i, name in enumerate(names)]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
"""

MODELS = {
    "add": (
        ECHO,
        "max_batch_size: 8\ndynamic_batching {}\n"
        'input [{name: "INPUT0" data_type: TYPE_FP32 dims: [4]}, '
        '{name: "INPUT1" data_type: TYPE_FP32 dims: [4]}]\n'
        'output [{name: "OUTPUT0" data_type: TYPE_FP32 dims: [4]}, '
        '{name: "OUTPUT1" data_type: TYPE_FP32 dims: [4]}]\n',
    ),
    "text": (
        ECHO,
        "max_batch_size: 4\n"
        'input [{name: "S" data_type: TYPE_STRING dims: [-1]}, '
        '{name: "B" data_type: TYPE_BOOL dims: [-1] optional: true}]\n'
        'output [{name: "SO" data_type: TYPE_STRING dims: [-1]}, '
        '{name: "BO" data_type: TYPE_BOOL dims: [-1]}]\n',
    ),
    "modes": (
        MODES,
        "max_batch_size: 4\n"
        'input [{name: "MODE" data_type: TYPE_STRING dims: [1]}]\n'
        'output [{name: "Y" data_type: TYPE_FP32 dims: [2]}]\n',
    ),
    "order": (
        ORDER,
        'input [{name: "X" data_type: TYPE_FP32 dims: [2]}]\n'
        'output [{name: "Z" data_type: TYPE_FP32 dims: [2]}, '
        '{name: "A" data_type: TYPE_FP32 dims: [2]}, '
        '{name: "M" data_type: TYPE_FP32 dims: [2]}]\n',
    ),
    "seq": (
        ECHO,
        "max_batch_size: 2\nsequence_batching { max_sequence_idle_microseconds: 5000000 }\n"
        'input [{name: "X" data_type: TYPE_INT32 dims: [1]}]\n'
        'output [{name: "Y" data_type: TYPE_INT32 dims: [1]}]\n',
    ),
}

# Where inferd answers otherwise by choice (README, "Where inferd differs from Triton").
KNOWN = {
    "http bad json": "400 with what is wrong; Triton 2.51 answers 500 with its parser's words",
    "http data count": "400 naming the counts; Triton 2.51 answers 500",
    "http int8 out of range": "refused (400); Triton 2.51 wraps the value silently",
    "grpc extra raw contents": "refused; Triton 2.51 ignores raw_input_contents past its inputs",
    "grpc raw count": "Triton's words, then the counts",
}


def write_repository(root: Path) -> Path:
    for name, (source, config) in MODELS.items():
        folder = root / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "1" / "model.py").write_text(PRELUDE + source)
        (folder / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n{config}')
    return root


# ---- the catalogue ---------------------------------------------------------------------------


def _tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


FOUR = [1.0, 2.5, -3.0, 4.125]
ADD = [_tensor("INPUT0", "FP32", [1, 4], FOUR), _tensor("INPUT1", "FP32", [1, 4], FOUR)]


def _mode(mode: str) -> dict[str, Any]:
    return {"inputs": [_tensor("MODE", "BYTES", [1, 1], [mode])]}


HTTP: dict[str, tuple[str, Any]] = {  # label: (path, JSON body, or bytes as they are)
    "http infer": ("/v2/models/add/infer", {"inputs": ADD}),
    "http id and parameters": ("/v2/models/add/infer", {"id": "r1", "inputs": ADD}),
    "http binary output": (
        "/v2/models/add/infer",
        {"inputs": ADD, "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]},
    ),
    "http output asked twice": (
        "/v2/models/add/infer",
        {"inputs": ADD, "outputs": [{"name": "OUTPUT1"}, {"name": "OUTPUT1"}]},
    ),
    "http classification": (
        "/v2/models/add/infer",
        {"inputs": ADD, "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]},
    ),
    "http floats as doubles": (
        "/v2/models/add/infer",
        {"inputs": [_tensor("INPUT0", "FP32", [1, 4], [0.1, 1e-8, 3.5, -0.0]), ADD[1]]},
    ),
    "http unknown model": ("/v2/models/nope/infer", {"inputs": ADD}),
    "http unknown version": ("/v2/models/add/versions/7/infer", {"inputs": ADD}),
    "http missing input": ("/v2/models/add/infer", {"inputs": ADD[:1]}),
    "http wrong datatype": (
        "/v2/models/add/infer",
        {"inputs": [_tensor("INPUT0", "INT32", [1, 4], [1, 2, 3, 4]), ADD[1]]},
    ),
    "http batch too big": (
        "/v2/models/add/infer",
        {"inputs": [{**t, "shape": [9, 4], "data": FOUR * 9} for t in ADD]},
    ),
    "http duplicate input": ("/v2/models/add/infer", {"inputs": ADD + ADD[:1]}),
    "http unknown output": ("/v2/models/add/infer", {"inputs": ADD, "outputs": [{"name": "X"}]}),
    "http bad json": ("/v2/models/add/infer", b"{bad"),
    "http data count": (
        "/v2/models/add/infer",
        {"inputs": [_tensor("INPUT0", "FP32", [1, 4], [1.0]), ADD[1]]},
    ),
    "http int8 out of range": (
        "/v2/models/text/infer",
        {"inputs": [_tensor("S", "BYTES", [1, 1], ["a"]), _tensor("B", "INT8", [1, 1], [300])]},
    ),
    "http bytes and bools": (
        "/v2/models/text/infer",
        {
            "inputs": [
                _tensor("S", "BYTES", [1, 2], ["a", "é"]),
                _tensor("B", "BOOL", [1, 1], [True]),
            ]
        },
    ),
    "http optional input left out": (
        "/v2/models/text/infer",
        {"inputs": [_tensor("S", "BYTES", [1, 1], ["a"])]},
    ),
    "http output of another dtype": ("/v2/models/modes/infer", _mode("fp64")),
    "http no outputs": ("/v2/models/modes/infer", _mode("none")),
    "http error response": ("/v2/models/modes/infer", _mode("error")),
    "http outputs in the order returned": (
        "/v2/models/order/infer",
        {"inputs": [_tensor("X", "FP32", [2], [1.0, 2.0])]},
    ),
    "http outputs asked in another order": (
        "/v2/models/order/infer",
        {
            "inputs": [_tensor("X", "FP32", [2], [1.0, 2.0])],
            "outputs": [{"name": "A"}, {"name": "Z"}],
        },
    ),
    "http sequence without id": (
        "/v2/models/seq/infer",
        {"inputs": [_tensor("X", "INT32", [1, 1], [1])]},
    ),
    "http sequence not started": (
        "/v2/models/seq/infer",
        {"inputs": [_tensor("X", "INT32", [1, 1], [1])], "parameters": {"sequence_id": 9}},
    ),
    "http sequence start and end": (
        "/v2/models/seq/infer",
        {
            "inputs": [_tensor("X", "INT32", [1, 1], [1])],
            "parameters": {"sequence_id": 9, "sequence_start": True, "sequence_end": True},
        },
    ),
    "http generate": ("/v2/models/add/generate", {"INPUT0": FOUR, "INPUT1": FOUR}),
    "http generate fills the config dims": (
        "/v2/models/text/generate",
        {"S": "a", "B": [True, False], "parameters": {"p": 1}},
    ),
    "http generate that fits no shape": (
        "/v2/models/add/generate",
        {"INPUT0": FOUR[:2], "INPUT1": FOUR},
    ),
    "http generate parameter of no kind": ("/v2/models/text/generate", {"S": "a", "p": [1]}),
    "http triton_ parameter": (
        "/v2/models/add/infer",
        {"inputs": ADD, "parameters": {"triton_enable_empty_final_response": True}},
    ),
    "http statistics of a missing version": ("GET /v2/models/add/versions/3/stats", None),
    "http model metadata": ("GET /v2/models/text", None),
    "http model config": ("GET /v2/models/add/config", None),
}


def _infer_message(raws: list[bytes], **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="add", **fields)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
    request.raw_input_contents.extend(raws)
    return request


def _typed_message(field: str) -> pb.ModelInferRequest:
    """Both inputs in typed `contents`, INPUT1's in `field`."""
    request = pb.ModelInferRequest(model_name="add")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        values = getattr(tensor.contents, "fp32_contents" if name == "INPUT0" else field)
        values.extend([int(v) for v in FOUR] if field == "int_contents" else FOUR)
    return request


FOUR_RAW = struct.pack("<4f", *FOUR)
GRPC: dict[str, tuple[str, Any]] = {  # label: (method, request message)
    "grpc infer": ("ModelInfer", _infer_message([FOUR_RAW, FOUR_RAW], id="g1")),
    "grpc raw size": ("ModelInfer", _infer_message([FOUR_RAW[:12], FOUR_RAW])),
    "grpc raw size with an id": ("ModelInfer", _infer_message([FOUR_RAW[:12], FOUR_RAW], id="z")),
    "grpc raw count": ("ModelInfer", _infer_message([FOUR_RAW])),
    "grpc extra raw contents": ("ModelInfer", _infer_message([FOUR_RAW] * 3)),
    "grpc unknown model": ("ModelInfer", pb.ModelInferRequest(model_name="nope")),
    "grpc metadata of a version that is no number": (
        "ModelMetadata",
        pb.ModelMetadataRequest(name="add", version="x"),
    ),
    "grpc readiness of a version that is no number": (
        "ModelReady",
        pb.ModelReadyRequest(name="add", version="x"),
    ),
    "grpc statistics of a missing version": (
        "ModelStatistics",
        pb.ModelStatisticsRequest(name="add", version="3"),
    ),
    "grpc named repository": (
        "RepositoryIndex",
        pb.RepositoryIndexRequest(repository_name="elsewhere"),
    ),
    "grpc outputs in the order returned": (
        "ModelInfer",
        pb.ModelInferRequest(
            model_name="order",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="X", datatype="FP32", shape=[2])],
            raw_input_contents=[struct.pack("<2f", 1.0, 2.0)],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in "AZ"],
        ),
    ),
    "grpc model config": ("ModelConfig", pb.ModelConfigRequest(name="text")),
    "grpc sequence_start as an int64": (
        "ModelInfer",
        _infer_message(
            [FOUR_RAW] * 2, parameters={"sequence_start": pb.InferParameter(int64_param=1)}
        ),
    ),
    "grpc parameter as a uint64": (
        "ModelInfer",
        _infer_message([FOUR_RAW] * 2, parameters={"p": pb.InferParameter(uint64_param=1)}),
    ),
    "grpc contents of another type": ("ModelInfer", _typed_message("int_contents")),
    "grpc typed contents": ("ModelInfer", _typed_message("fp32_contents")),
}


# ---- sending ---------------------------------------------------------------------------------


def http_answer(port: int, path: str, body: Any) -> tuple[int, Any]:
    method, _, path = path.rpartition(" ") if " " in path else ("POST", "", path)
    connection = http.client.HTTPConnection(LOCALHOST, port, timeout=30)
    try:
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, payload)
        answer = connection.getresponse()
        data = answer.read()
        size = answer.getheader("Inference-Header-Content-Length")
        head = data[: int(size)] if size else data
        try:
            return answer.status, json.loads(head)
        except ValueError:
            return answer.status, head.decode(errors="replace")
    finally:
        connection.close()


def grpc_answer(port: int, method: str, message: Any) -> tuple[str, str]:
    with grpc.insecure_channel(f"{LOCALHOST}:{port}") as channel:
        call: Callable[..., Any] = getattr(rpc.GRPCInferenceServiceStub(channel), method)
        try:
            return "OK", str(call(message, timeout=30))
        except grpc.RpcError as error:
            return error.code().name, error.details() or ""


def compare(ours: tuple[int, int], theirs: tuple[int, int]) -> list[tuple[str, str, str]]:
    """(label, verdict, detail) per request of the catalogue; the servers by their (HTTP,
    gRPC) ports."""
    rows = []
    for label, (path, body) in HTTP.items():
        mine, triton = (http_answer(port, path, body) for port, _ in (ours, theirs))
        rows.append(_verdict(label, mine, triton))
    for label, (method, message) in GRPC.items():
        mine_rpc, triton_rpc = (grpc_answer(port, method, message) for _, port in (ours, theirs))
        rows.append(_verdict(label, mine_rpc, triton_rpc))
    return rows


def _verdict(label: str, ours: Any, theirs: Any) -> tuple[str, str, str]:
    if ours == theirs:
        return label, "same", ""
    detail = f"inferd {str(ours)[:300]} / triton {str(theirs)[:300]}"
    if label in KNOWN:
        return label, "differs on purpose", KNOWN[label]
    return label, "DIFFERS", detail


# ---- running ---------------------------------------------------------------------------------


def _servers(peers_path: Path, repo: Path, workdir: Path) -> tuple[servers.Server, servers.Server]:
    probe = Probe.of("add", {"INPUT0": ("FP32", (1, 4)), "INPUT1": ("FP32", (1, 4))})
    site = next(peers_path.glob("venv-pytriton/lib/python*/site-packages"))
    triton = servers.triton_py(peers_path, ports.free_port_block(3), workdir / "triton")
    ours = servers.inferd(ports.free_port_block(3), workdir / "inferd", repository=repo)
    return (
        servers.Server(
            "triton-py",
            [*triton.argv, f"--model-repository={repo}"],  # the last one given wins
            triton.cwd,
            triton.base_port,
            probe,
            {**triton.env, SITE: str(site)},
        ),
        servers.Server("inferd", ours.argv, ours.cwd, ours.base_port, probe),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (created)")
    parser.add_argument("--peers", default=None, help="the peers folder (default $PEERS)")
    args = parser.parse_args(argv)
    try:
        peers_path = peers.peers_dir(args.peers)
    except peers.MissingTool as exc:
        sys.exit(str(exc))
    repo = write_repository(args.out / "repo")
    triton, ours = _servers(peers_path, repo, args.out / "work")
    started = []
    try:
        for server in (triton, ours):
            server.cwd.mkdir(parents=True, exist_ok=True)
            log = (args.out / f"{server.name}.log").open("wb")
            proc = procs.launch(server.argv, cwd=server.cwd, env=server.env, log=log)
            started.append(proc)
            up = procs.wait_first_infer(
                proc, server.http_url, server.probe, started=time.perf_counter()
            )
            if up.first_infer_s is None:
                sys.exit(f"{server.name} did not serve: see {args.out / server.name}.log")
        rows = compare(
            (ours.base_port, ours.base_port + 1), (triton.base_port, triton.base_port + 1)
        )
    finally:
        for proc in started:
            procs.stop(proc)
    width = max(len(label) for label, _, _ in rows)
    for label, verdict, detail in rows:
        print(f"{label:<{width}}  {verdict}" + (f": {detail}" if detail else ""))
    return 1 if any(verdict == "DIFFERS" for _, verdict, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
