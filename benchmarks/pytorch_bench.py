"""The PyTorch backend's serving cost: a TorchScript MLP served by inferd (perf_analyzer over
HTTP) against the same weights exported to ONNX and served by the same server, and against the
module called in-process by raw torch. No peer here serves TorchScript (the peers' Triton has
no libtorch backend), so these are the references.

    python -m inferd.benchmarks.pytorch_bench --out /tmp/torchbench

Writes the repository (models "mlp" and "mlp_onnx": FP32 [batch, --width], --depth
Linear+ReLU layers, dynamic batching up to 16, one CPU instance each), measures raw torch at
batch 1 and 16, then serves both and sweeps perf_analyzer at --concurrency. Prints a table (and
writes it, with results.json, to --out). A benchmark, never a test: nothing here asserts. Needs
the pytorch extra (and onnx, from the test extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferd.backends.pytorch import import_torch
from inferd.benchmarks import compare, peers, perf_sweep, ports, servers
from inferd.benchmarks.procs import Probe

MODEL = "mlp"
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript: deprecated, still served
        return torch.jit.script(torch.nn.Sequential(*layers).eval())


def write_repository(module: Any, repo: Path, width: int) -> None:
    """The TorchScript module and its ONNX export, side by side."""
    import torch

    for name, platform, filename in (
        (MODEL, "pytorch_libtorch", "model.pt"),
        (ONNX_MODEL, "onnxruntime_onnx", "model.onnx"),
    ):
        folder = repo / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(CONFIG.format(platform=platform, width=width))
        if filename == "model.pt":
            module.save(str(folder / "1" / filename))
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
        for _ in range(20):  # warm-up: TorchScript optimises over the first calls
            module(x)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            module(x)
            calls += 1
    return calls * batch / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (created)")
    parser.add_argument("--width", type=int, default=256, help="features per layer")
    parser.add_argument("--depth", type=int, default=4, help="Linear+ReLU layers")
    parser.add_argument("--startup-timeout", type=float, default=120)
    perf_sweep.add_sweep_arguments(parser)
    parser.set_defaults(concurrency=[1, 16])
    args = parser.parse_args(argv)
    args.models = [MODEL, ONNX_MODEL]
    args.protocols = ["http"]
    found = peers.peers_dir(args.peers, required=False)
    pa = peers.find_perf_analyzer(args.perf_analyzer, found if found.is_dir() else None)
    if pa is None:
        sys.exit(f"perf_analyzer not found: {peers.SETUP_HINT}")
    for folder_name in ("logs", "work"):
        (args.out / folder_name).mkdir(parents=True, exist_ok=True)
    module = build_module(args.width, args.depth)
    write_repository(module, args.out / "repo", args.width)
    raw = {batch: raw_samples_per_s(module, args.width, batch, 3.0) for batch in (1, 16)}
    probe = Probe.of(MODEL, {"INPUT__0": ("FP32", (1, args.width))})
    port = ports.free_port_block(3)
    base = servers.inferd(port, args.out / "work", repository=args.out / "repo")
    server = servers.Server("inferd", [*base.argv, "--log-level=warning"], base.cwd, port, probe)
    _, cells = compare.run_server(server, args, pa, found)
    onnx = {c.concurrency: c.infer_per_s for c in cells if c.model == ONNX_MODEL}
    lines = [
        "| measure | samples/s | p99 ms | vs the ONNX export served alike |",
        "|---|---|---|---|",
        *(f"| raw torch in-process, batch {b} | {v:,.0f} | | |" for b, v in raw.items()),
        *(
            f"| inferd `{c.model}`, concurrency {c.concurrency} | {c.infer_per_s:,.0f} "
            f"| {c.p99_ms} | {c.infer_per_s / (onnx.get(c.concurrency) or c.infer_per_s):.2f} |"
            for c in cells
            if c.infer_per_s
        ),
    ]
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    results = {
        "raw": raw,
        "inferd": [[c.model, c.concurrency, c.infer_per_s, c.p99_ms] for c in cells],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    return 1 if not cells or any(c.error for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
