"""GPU benchmark: inferd against raw in-process ONNX Runtime on the same GPU.

What it does, in order:

1. checks that onnxruntime really runs on CUDA here (else it exits with status 2 and says why);
2. builds a ResNet-50-shaped model with the onnx helper API, random weights, no downloads:
   ResNet-50 v1.5's layers (7x7 stem, max pool, bottleneck stages of 3, 4, 6 and 3 blocks,
   stride on the 3x3 convolutions, projection shortcuts, global average pool, 1000-way Gemm)
   with each BatchNorm folded into its convolution's bias, as inference engines do: the same
   25.5 M parameters and about 4.1 GMACs per image; FP32 "input" [batch, 3, 224, 224] ->
   "output" [batch, 1000];
3. raw ONNX Runtime: --instances sessions on the CUDA provider, driven by `concurrency`
   threads in a closed loop (each `session.run` takes a numpy batch and returns numpy, as a
   request does through the server);
4. inferd: the same model served from a temporary repository (KIND_GPU, --instances instances,
   no dynamic batching unless --dynamic-batching, so that each request runs alone at its batch
   size as in the raw run), driven over HTTP with binary tensors by `concurrency` client
   processes in a closed loop;
5. for every (batch size, concurrency): images/s of both, the ratio inferd / raw (goal: at
   least 0.95), p50/p99 latency, and the GPU utilization NVML reports during each run; prints
   a markdown table and writes it with a JSON summary to --out.

Needs a CUDA GPU, onnxruntime-gpu and cupy (the inferd[gpu] extra), onnx, and nvidia-ml-py for
the utilization column; nothing from the network. This is a benchmark, never a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferd.benchmarks.ports import free_port

MODEL = "resnet50_like"
IMAGE = (3, 224, 224)
CLASSES = 1000
# (blocks, bottleneck width, output channels, stride) per stage, as in ResNet-50.
STAGES = ((3, 64, 256, 1), (4, 128, 512, 2), (6, 256, 1024, 2), (3, 512, 2048, 2))
EXIT_NO_GPU = 2


# ---- model ---------------------------------------------------------------------------------


class _Builder:
    """Accumulates nodes and He-initialised weights for a conv net."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.weights: list[Any] = []

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int, relu: bool, gain: float = 1.0
    ) -> str:
        from onnx import helper, numpy_helper

        name = f"conv{len(self.weights) // 2}"
        std = gain * np.sqrt(2.0 / (cin * k * k))
        w = (self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)
        self.weights += [
            numpy_helper.from_array(w, f"{name}_w"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"),
        ]
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [name],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        return self.relu(name) if relu else name

    def relu(self, x: str) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node("Relu", [x], [f"{x}_relu"]))
        return f"{x}_relu"

    def bottleneck(self, x: str, cin: int, width: int, cout: int, stride: int) -> str:
        from onnx import helper

        y = self.conv(x, cin, width, 1, 1, relu=True)
        y = self.conv(y, width, width, 3, stride, relu=True)
        # A small last layer keeps the residual sums of random weights in range.
        y = self.conv(y, width, cout, 1, 1, relu=False, gain=0.2)
        shortcut = x if cin == cout and stride == 1 else self.conv(x, cin, cout, 1, stride, False)
        self.nodes.append(helper.make_node("Add", [y, shortcut], [f"{y}_add"]))
        return self.relu(f"{y}_add")


def build_model(seed: int = 0, width_divisor: int = 1) -> bytes:
    """The ResNet-50-shaped model, serialized; `width_divisor` shrinks every layer (tests)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    b = _Builder(seed)
    x = b.conv("input", 3, 64 // width_divisor, 7, 2, relu=True)
    b.nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    x, channels = "pool", 64 // width_divisor
    for blocks, width, out, stride in STAGES:
        for block in range(blocks):
            x = b.bottleneck(
                x,
                channels,
                width // width_divisor,
                out // width_divisor,
                stride if block == 0 else 1,
            )
            channels = out // width_divisor
    fc = (b.rng.standard_normal((channels, CLASSES)) / np.sqrt(channels)).astype(np.float32)
    b.weights += [
        numpy_helper.from_array(fc, "fc_w"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b"),
    ]
    b.nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"]),
    ]
    graph = helper.make_graph(
        b.nodes,
        MODEL,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *IMAGE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=b.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


# ---- GPU checks and utilization ------------------------------------------------------------


def gpu_problem(model: bytes | None, device: int) -> str:
    """Why this machine cannot run the benchmark ('' = it can)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed: install inferd[gpu] (onnxruntime-gpu)"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            "no CUDA: onnxruntime has no CUDA execution provider (install onnxruntime-gpu, the "
            "inferd[gpu] extra, instead of onnxruntime)"
        )
    if model is None:
        return ""
    from inferd.backends.ort_providers import preload_cuda_libraries

    preload_cuda_libraries()  # as the server does: NVIDIA's library wheels, for the raw runs too
    session = ort.InferenceSession(
        model, providers=[("CUDAExecutionProvider", {"device_id": str(device)})]
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return (
            "no CUDA: onnxruntime's CUDA provider did not start (no GPU, or the CUDA/cuDNN "
            "libraries are missing: see onnxruntime's error above)"
        )
    return ""


class Utilization:
    """GPU utilization (%) sampled by NVML every 100 ms while `measuring()`."""

    def __init__(self, device: int) -> None:
        self._handle: Any = None
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(device))
            self._nvml = pynvml
        except Exception as exc:  # ImportError or an NVML error: report n/a
            print(f"GPU utilization not measured: {exc}", file=sys.stderr)

    @contextmanager
    def measuring(self) -> Iterator[list[float]]:
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                samples.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

        thread = threading.Thread(target=sample, daemon=True) if self._nvml else None
        if thread is not None:
            thread.start()
        try:
            yield samples
        finally:
            stop.set()
            if thread is not None:
                thread.join()


def _nvml_index(device: int) -> int:
    """NVML ignores CUDA_VISIBLE_DEVICES: map a CUDA ordinal back when it lists ordinals."""
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and all(v.strip().isdigit() for v in visible):
        return int(visible[device])
    return device


# ---- measurements --------------------------------------------------------------------------


@dataclass
class Run:
    images_per_s: float
    p50_ms: float
    p99_ms: float
    gpu_util: float | None


def _summarize(latencies: Sequence[float], images: int, seconds: float, util: list[float]) -> Run:
    ordered = sorted(latencies) or [float("nan")]
    return Run(
        images_per_s=images / seconds,
        p50_ms=1000 * ordered[len(ordered) // 2],
        p99_ms=1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        gpu_util=statistics.fmean(util) if util else None,
    )


def raw_ort(
    model: bytes,
    device: int,
    instances: int,
    batch: int,
    concurrency: int,
    args: Any,
    util: Utilization,
) -> Run:
    """`concurrency` threads over `instances` sessions, numpy in and out, closed loop."""
    import onnxruntime as ort

    providers = [("CUDAExecutionProvider", {"device_id": str(device)}), "CPUExecutionProvider"]
    sessions = [ort.InferenceSession(model, providers=providers) for _ in range(instances)]
    x = np.random.default_rng(batch).standard_normal((batch, *IMAGE)).astype(np.float32)
    start, end = time.time() + args.warmup, time.time() + args.warmup + args.duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]

    def loop(worker: int) -> None:
        session = sessions[worker % instances]
        while (now := time.time()) < end:
            began = time.perf_counter()
            session.run(["output"], {"input": x})
            if now >= start:
                latencies[worker].append(time.perf_counter() - began)

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, start - time.time()))
    with util.measuring() as samples:
        for thread in threads:
            thread.join()
    done = [lat for worker in latencies for lat in worker]
    return _summarize(done, len(done) * batch, args.duration, samples)


def _client(port: int, body: bytes, header_length: int, start: float, end: float) -> list[float]:
    """One closed-loop HTTP client (a process of its own, so the client never holds the GIL
    that the measurement needs); latencies of the requests sent inside [start, end)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_length),
    }
    latencies: list[float] = []
    while (now := time.time()) < end:
        began = time.perf_counter()
        connection.request("POST", f"/v2/models/{MODEL}/infer", body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"inferd answered {response.status}")
        if now >= start:
            latencies.append(time.perf_counter() - began)
    connection.close()
    return latencies


def through_inferd(port: int, batch: int, concurrency: int, args: Any, util: Utilization) -> Run:
    x = np.random.default_rng(batch).standard_normal((batch, *IMAGE)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [batch, *IMAGE],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    start = time.time() + args.warmup + 1.0  # + process start-up
    end = start + args.duration
    with multiprocessing.get_context("spawn").Pool(concurrency) as pool:
        pending = pool.starmap_async(
            _client, [(port, header + x.tobytes(), len(header), start, end)] * concurrency
        )
        time.sleep(max(0.0, start - time.time()))
        with util.measuring() as samples:
            per_client = pending.get(timeout=args.warmup + args.duration + 300)
    done = [lat for client in per_client for lat in client]
    return _summarize(done, len(done) * batch, args.duration, samples)


# ---- the server ----------------------------------------------------------------------------


def write_repository(root: Path, model: bytes, args: Any) -> None:
    (root / MODEL / "1").mkdir(parents=True)
    (root / MODEL / "1" / "model.onnx").write_bytes(model)
    batching = "dynamic_batching {}\n" if args.dynamic_batching else ""
    (root / MODEL / "config.pbtxt").write_text(
        f'name: "{MODEL}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max(args.batch_sizes)}\n'
        f'input [{{name: "input" data_type: TYPE_FP32 dims: [3, 224, 224]}}]\n'
        f'output [{{name: "output" data_type: TYPE_FP32 dims: [{CLASSES}]}}]\n'
        f"instance_group [{{kind: KIND_GPU count: {args.instances} gpus: [{args.device}]}}]\n"
        + batching
    )


@contextmanager
def inferd_server(repository: Path, log: Path) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, "-m", "inferd", "serve", "--model-repository", str(repository)]
    argv += ["--http-address", "127.0.0.1", "--http-port", str(port)]
    argv += ["--allow-grpc", "false", "--allow-metrics", "false", "--exit-on-error", "true"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_ready(port, proc, log)
            yield port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"inferd exited during start-up:\n{log.read_text()[-4000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("inferd did not become ready within 600 s")


# ---- main ----------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-sizes", type=_ints, default=[1, 8, 32])
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16])
    p.add_argument("--instances", type=int, default=2, help="sessions / inferd instances")
    p.add_argument("--device", type=int, default=0, help="CUDA device ordinal")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--dynamic-batching", action="store_true", help="let inferd merge requests")
    p.add_argument("--out", type=Path, default=Path("results/gpu"))
    return p.parse_args(argv)


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    args = parse_args(argv)
    problem = gpu_problem(None, args.device)
    if problem:
        print(f"gpu_bench needs a CUDA GPU: {problem}", file=sys.stderr)
        return EXIT_NO_GPU
    try:
        model = build_model()
    except ImportError as exc:
        print(f"gpu_bench needs the onnx package to build its model: {exc}", file=sys.stderr)
        return 1
    problem = gpu_problem(model, args.device)
    if problem:
        print(f"gpu_bench needs a CUDA GPU: {problem}", file=sys.stderr)
        return EXIT_NO_GPU
    util = Utilization(args.device)
    points = [(b, c) for b in args.batch_sizes for c in args.concurrency]
    raw = _each(points, lambda b, c: raw_ort(model, args.device, args.instances, b, c, args, util))
    workdir = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        write_repository(workdir / "repository", model, args)
        with inferd_server(workdir / "repository", workdir / "inferd.log") as port:
            served = _each(points, lambda b, c: through_inferd(port, b, c, args, util))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(points, raw, served, args)
    return 0


def _each(points: list[tuple[int, int]], measure: Callable[[int, int], Run]) -> list[Run]:
    runs = []
    for batch, concurrency in points:
        runs.append(measure(batch, concurrency))
        print(f"  batch {batch:>3}, concurrency {concurrency:>3}: {runs[-1]}", file=sys.stderr)
    return runs


def report(points: list[tuple[int, int]], raw: list[Run], served: list[Run], args: Any) -> None:
    def util(run: Run) -> str:
        return "n/a" if run.gpu_util is None else f"{run.gpu_util:.0f}"

    lines = [
        "| batch | conc | raw img/s | inferd img/s | ratio | raw p99 ms | inferd p50 ms "
        "| inferd p99 ms | GPU % raw | GPU % inferd | input MB/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for (batch, conc), r, s in zip(points, raw, served, strict=True):
        ratio = s.images_per_s / r.images_per_s if r.images_per_s else float("nan")
        megabytes = s.images_per_s * 4 * np.prod(IMAGE) / 1e6
        lines.append(
            f"| {batch} | {conc} | {r.images_per_s:.0f} | {s.images_per_s:.0f} | {ratio:.2f} "
            f"| {r.p99_ms:.1f} | {s.p50_ms:.1f} | {s.p99_ms:.1f} | {util(r)} | {util(s)} "
            f"| {megabytes:.0f} |"
        )
        rows.append({"batch": batch, "concurrency": conc, "raw": asdict(r), "inferd": asdict(s)})
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.out / "summary.json").write_text(json.dumps({"args": settings, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
