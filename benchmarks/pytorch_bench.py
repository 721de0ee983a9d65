"""The PyTorch backend's serving cost: an MLP served by inferd as TorchScript and as a PyTorch 2
AOTInductor package (perf_analyzer over HTTP), against the same weights exported to ONNX and
served by the same server, and against the module called in-process by raw torch. No peer here
serves PyTorch models (the peers' Triton has no PyTorch backend), so these are the references.

    python -m inferd.benchmarks.pytorch_bench --out /tmp/torchbench

Writes the repository (models "mlp", "mlp_aoti" and "mlp_onnx": FP32 [batch, --width], --depth
Linear+ReLU layers, dynamic batching up to 16, one CPU instance each), measures raw torch at
batch 1 and 16, then serves both and sweeps perf_analyzer at --concurrency. Prints a table (and
writes it, with results.json, to --out). A benchmark, never a test: nothing here asserts. Needs
the pytorch extra (and onnx, from the test extra).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferd.backends.pytorch import import_torch
from inferd.benchmarks import backend_bench
from inferd.benchmarks.procs import Probe

MODEL = "mlp"
AOTI_MODEL = "mlp_aoti"
ONNX_MODEL = "mlp_onnx"
CONFIG = """
platform: "{platform}"
max_batch_size: 16
input [{{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {width} ] }}]
output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {width} ] }}]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""


def build_module(width: int, depth: int) -> Any:
    torch = import_torch()  # as the server imports it (OpenMP's threads asleep between ops)

    layers: list[Any] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    torch.manual_seed(0)
    return torch.nn.Sequential(*layers).eval()


def script(module: Any) -> Any:
    import torch

    with warnings.catch_warnings():  # TorchScript: deprecated, still served
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def write_repository(module: Any, repo: Path, width: int) -> None:
    """The module scripted, compiled ahead of time, and exported to ONNX, side by side."""
    import torch

    for name, platform, filename in (
        (MODEL, "pytorch_libtorch", "model.pt"),
        (AOTI_MODEL, "torch_aoti", "model.pt2"),
        (ONNX_MODEL, "onnxruntime_onnx", "model.onnx"),
    ):
        folder = repo / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(CONFIG.format(platform=platform, width=width))
        if filename == "model.pt":
            script(module).save(str(folder / "1" / filename))
            continue
        if filename == "model.pt2":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exported = torch.export.export(
                    module,
                    (torch.rand(2, width),),
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=16)},),
                )
                torch._inductor.aoti_compile_and_package(
                    exported, package_path=str(folder / "1" / filename)
                )
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.rand(1, width),),
                str(folder / "1" / filename),
                input_names=["INPUT__0"],
                output_names=["OUTPUT__0"],
                dynamic_axes={"INPUT__0": {0: "batch"}, "OUTPUT__0": {0: "batch"}},
                dynamo=False,
            )


def raw_samples_per_s(module: Any, width: int, batch: int, seconds: float) -> float:
    """Samples per second of back-to-back forward() calls at one batch size, one thread."""
    import torch

    x = torch.rand(batch, width)
    with torch.no_grad():
        return backend_bench.samples_per_s(lambda: module(x), batch, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = backend_bench.arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=256, help="features per layer")
    parser.add_argument("--depth", type=int, default=4, help="Linear+ReLU layers")
    args = parser.parse_args(argv)
    module = build_module(args.width, args.depth)
    write_repository(module, args.out / "repo", args.width)
    raw = {
        f"raw torch in-process, batch {b}": raw_samples_per_s(script(module), args.width, b, 3.0)
        for b in (1, 16)
    }
    probe = Probe.of(MODEL, {"INPUT__0": ("FP32", (1, args.width))})
    models = [MODEL, AOTI_MODEL, ONNX_MODEL]
    return backend_bench.serve_and_compare(args, models, ONNX_MODEL, raw, probe)


if __name__ == "__main__":
    sys.exit(main())
