"""The OpenVINO backend's serving cost: an MLP served by inferd from OpenVINO's IR (perf_analyzer
over HTTP), against the same ONNX graph served by ONNX Runtime in the same server, and against
the IR compiled and called in-process by raw OpenVINO with the server's settings. No peer here
serves OpenVINO (the peers' Triton has only the python backend), so these are the references.

    python -m inferd.benchmarks.openvino_bench --out /tmp/ovbench

Writes the repository (models "mlp_ov" and "mlp_onnx": FP32 [batch, --width], --depth
Gemm+Relu layers with random weights, dynamic batching up to 16, one CPU instance each),
measures raw OpenVINO at batch 1 and 16, then serves both and sweeps perf_analyzer at
--concurrency. Prints a table (and writes it, with results.json, to --out). Needs the openvino
extra and onnx (test extra).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import openvino as ov
from onnx import TensorProto, helper, numpy_helper

from inferd.backends.openvino import parse_parameters, serving_properties
from inferd.benchmarks import backend_bench
from inferd.benchmarks.procs import Probe

MODEL = "mlp_ov"
ONNX_MODEL = "mlp_onnx"
CONFIG = """
{kind}
max_batch_size: 16
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {width} ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {width} ] }}]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""


def build_graph(width: int, depth: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "INPUT0"
    for layer in range(depth):
        w, b = f"w{layer}", f"b{layer}"
        scale = 1 / np.sqrt(width)
        weights += [
            numpy_helper.from_array(rng.normal(0, scale, (width, width)).astype(np.float32), w),
            numpy_helper.from_array(np.zeros(width, np.float32), b),
        ]
        out = "OUTPUT0" if layer == depth - 1 else f"h{layer}"
        nodes += [
            helper.make_node("Gemm", [current, w, b], [f"g{layer}"]),
            helper.make_node("Relu", [f"g{layer}"], [out]),
        ]
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width])],
        initializer=weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_repository(graph: onnx.ModelProto, repo: Path, width: int) -> Path:
    """The ONNX graph for ONNX Runtime and its IR for OpenVINO; returns the IR's path."""
    for name, kind in (
        (ONNX_MODEL, 'platform: "onnxruntime_onnx"'),
        (MODEL, 'backend: "openvino"'),
    ):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(CONFIG.format(kind=kind, width=width))
    onnx.save(graph, repo / ONNX_MODEL / "1" / "model.onnx")
    ir = repo / MODEL / "1" / "model.xml"
    ov.save_model(ov.convert_model(repo / ONNX_MODEL / "1" / "model.onnx"), ir, False)
    return ir


def raw_samples_per_s(ir: Path, width: int, batch: int, seconds: float) -> float:
    """Samples per second of back-to-back infer() calls on one request, compiled as the server
    compiles it (one stream, its thread default)."""
    core = ov.Core()
    model = core.read_model(ir)
    model.reshape({"INPUT0": ov.PartialShape([-1, width])})
    properties: Any = serving_properties(parse_parameters({}), 1)
    request = core.compile_model(model, "CPU", properties).create_infer_request()
    x = np.random.default_rng(0).random((batch, width), dtype=np.float32)
    return backend_bench.samples_per_s(lambda: request.infer({"INPUT0": x}), batch, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = backend_bench.arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=256, help="features per layer")
    parser.add_argument("--depth", type=int, default=4, help="Gemm+Relu layers")
    args = parser.parse_args(argv)
    ir = write_repository(build_graph(args.width, args.depth), args.out / "repo", args.width)
    raw = {
        f"raw OpenVINO in-process, batch {b}": raw_samples_per_s(ir, args.width, b, 3.0)
        for b in (1, 16)
    }
    probe = Probe.of(MODEL, {"INPUT0": ("FP32", (1, args.width))})
    return backend_bench.serve_and_compare(args, [MODEL, ONNX_MODEL], ONNX_MODEL, raw, probe)


if __name__ == "__main__":
    sys.exit(main())
