"""Latency-objective (SLA) benchmark: offered load from below to above capacity, with and
without `inferd.latency_slo_ms`.

What it does, in order:

1. builds a small MLP with the onnx helper API (no downloads) and times it with onnxruntime
   directly (one intra-op thread) at batch sizes 1, 4, 8 and 16;
2. writes two copies into a temporary model repository: "plain" (dynamic batching only) and
   "sla" (the same plus the latency objective);
3. starts one inferd server on 127.0.0.1 (free ports picked at runtime; always stopped at the
   end, Ctrl-C included);
4. measures the capacity of "plain" with a closed loop of --concurrency clients;
5. for every load factor and both models, runs an open loop (Poisson arrivals, fixed seed: both
   models see the same arrival times) at load x capacity for --duration seconds;
6. prints a markdown table and writes it, a JSON summary and the raw per-request samples to --out.

Run `python benchmarks/sla_bench.py --help` for the flags; benchmarks/README.md explains the
output. This is a benchmark, never a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from inferd.benchmarks.http_pool import CONNECTION_LOST, HttpPool, get_request, post_request
from inferd.benchmarks.ports import free_port

FEATURES = 512  # input and output width: FP32 [batch, 512]
MAX_BATCH = 16
QUEUE_DELAY_US = 2000
PLAIN, SLA = "plain", "sla"
TIMEOUT, UNSENT, CONN_ERROR = -1, -2, CONNECTION_LOST  # pseudo HTTP statuses of a sample
LATE_MS = 2.0  # a request sent this much after its scheduled time counts as late
CAPACITY_SECONDS = 3.0
WARMUP_SECONDS = 1.0
PAUSE_SECONDS = 0.5  # between runs, so the previous run's leftovers drain
WARMUP_OBJECTIVE_MS = 1000.0


# ---- model -----------------------------------------------------------------------------------


def build_model(width: int, depth: int, seed: int = 0) -> bytes:
    """FP32 [batch, 512] -> `depth` MatMul+Relu layers (hidden width `width`) -> [batch, 512]."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    previous, width_in = "INPUT0", FEATURES
    for layer in range(depth):
        width_out = width if layer < depth - 1 else FEATURES
        matrix = rng.standard_normal((width_in, width_out)) / np.sqrt(width_in)
        weights.append(numpy_helper.from_array(matrix.astype(np.float32), f"W{layer}"))
        output = "OUTPUT0" if layer == depth - 1 else f"relu{layer}"
        nodes.append(helper.make_node("MatMul", [previous, f"W{layer}"], [f"matmul{layer}"]))
        nodes.append(helper.make_node("Relu", [f"matmul{layer}"], [output]))
        previous, width_in = output, width_out
    graph = helper.make_graph(
        nodes,
        "sla_bench_mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", FEATURES])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def measure_exec_ms(model: bytes, batch_sizes: Sequence[int], runs: int = 40) -> dict[int, float]:
    """Median onnxruntime execution time per batch size, one intra-op thread (as served)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    times: dict[int, float] = {}
    for size in batch_sizes:
        feed = {"INPUT0": np.random.default_rng(size).random((size, FEATURES), np.float32)}
        for _ in range(5):
            session.run(None, feed)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feed)
            samples.append(time.perf_counter() - start)
        times[size] = float(np.median(samples)) * 1e3
    return times


def config_text(name: str, objective_ms: float | None) -> str:
    slo = ""
    if objective_ms is not None:
        slo = (
            f'parameters {{ key: "inferd.latency_slo_ms" '
            f'value: {{ string_value: "{objective_ms:g}" }} }}\n'
        )
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {MAX_BATCH}\n"
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }} ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n' + slo
    )


def write_repository(root: Path, model: bytes, objective_ms: float) -> None:
    for name, objective in ((PLAIN, None), (SLA, objective_ms)):
        version = root / name / "1"
        version.mkdir(parents=True)
        (version / "model.onnx").write_bytes(model)
        (root / name / "config.pbtxt").write_text(config_text(name, objective))


# ---- server ----------------------------------------------------------------------------------


def wait_ready(process: subprocess.Popen[bytes], base_url: str, log: Path, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"inferd exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{base_url}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"inferd was not ready after {limit_s:g} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def inferd_server(
    repository: Path, log: Path, cpus: frozenset[int] | None = None
) -> Iterator[Server]:
    """One inferd subprocess on 127.0.0.1 (on `cpus` if given); yields its HTTP address and
    always stops it."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "inferd",
        "serve",
        f"--model-repository={repository}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--log-level=warning",
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
    try:
        base_url = f"http://127.0.0.1:{http_port}"
        wait_ready(process, base_url, log, limit_s=60)
        yield Server(f"127.0.0.1:{http_port}", ("127.0.0.1", http_port))
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---- load generation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    host: str  # host:port, for the Host header
    address: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Target:
    request: bytes  # the whole HTTP request, encoded once


def make_target(server: Server, model: str, objective_ms: float | None = None) -> Target:
    """A pre-encoded binary-extension request: JSON header, then 2 KiB of raw FP32 data.
    `objective_ms` overrides the model's objective (request parameter inferd.latency_slo_ms)."""
    data = np.random.default_rng(1).random((1, FEATURES), np.float32).tobytes()
    parameters: dict[str, Any] = {"binary_data_output": True}
    if objective_ms is not None:
        parameters["inferd.latency_slo_ms"] = objective_ms
    tensor = {
        "name": "INPUT0",
        "shape": [1, FEATURES],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(data)},
    }
    header = json.dumps(
        {"inputs": [tensor], "parameters": parameters}, separators=(",", ":")
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    path = f"/v2/models/{model}/infer"
    return Target(post_request(server.host, path, header + data, headers))


@dataclass(slots=True)
class Sample:
    scheduled_s: float  # offset of the Poisson arrival from the run's start
    lag_ms: float = 0.0  # how late the client sent it
    status: int = TIMEOUT  # HTTP status, or TIMEOUT / UNSENT / CONN_ERROR
    latency_ms: float | None = None  # send -> full response; None = no response

    def answered(self, status: int, body: bytes, elapsed_s: float) -> None:
        self.status = status
        self.latency_ms = elapsed_s * 1e3


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.5) + 100)
    times = np.cumsum(gaps)
    return times[times < duration_s]


async def open_loop(
    server: Server, target: Target, arrivals: np.ndarray, max_in_flight: int, grace_s: float
) -> list[Sample]:
    """Send at the scheduled times whatever happened to earlier requests (no coordinated
    omission), each on an idle connection of a pool of `max_in_flight`; with none idle, a
    request is recorded as UNSENT instead of sent late. Requests unanswered `grace_s` after the
    last one was sent stay TIMEOUT."""
    pool = await HttpPool.open(*server.address, max_in_flight)
    samples: list[Sample] = []
    try:
        start = time.perf_counter()
        for at in arrivals.tolist():
            delay = start + at - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            sample = Sample(at, lag_ms=max(0.0, (time.perf_counter() - start - at) * 1e3))
            samples.append(sample)
            if not pool.try_send(target.request, sample.answered):
                sample.status = UNSENT
        deadline = time.perf_counter() + grace_s
        while pool.busy and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
    finally:
        pool.close()
    return samples


async def closed_loop(server: Server, target: Target, clients: int, seconds: float) -> float:
    """Successful requests per second with `clients` back-to-back senders."""
    pool = await HttpPool.open(*server.address, clients)
    finished = asyncio.get_running_loop().create_future()
    done = 0
    deadline = time.perf_counter() + seconds

    def answered(status: int, body: bytes, elapsed_s: float) -> None:
        nonlocal done
        done += status == 200
        if time.perf_counter() < deadline and status != CONNECTION_LOST:
            pool.try_send(target.request, answered)
        elif not pool.busy and not finished.done():
            finished.set_result(None)

    start = time.perf_counter()
    try:
        for _ in range(clients):
            pool.try_send(target.request, answered)
        await finished
    finally:
        pool.close()
    return done / (time.perf_counter() - start)


async def model_stats(server: Server, model: str) -> dict[str, Any]:
    pool = await HttpPool.open(*server.address, 1)
    try:
        status, body = await pool.fetch(get_request(server.host, f"/v2/models/{model}/stats"))
    finally:
        pool.close()
    if status != 200:
        raise RuntimeError(f"GET /v2/models/{model}/stats answered {status}: {body[:200]!r}")
    document: dict[str, Any] = json.loads(body)["model_stats"][0]
    return document


async def objective_answers(server: Server, model: str) -> tuple[int, int, float]:
    """(met, missed, margin) of the model's latency objective, from the server's /metrics:
    answers by and after the objective, and the share of it held back as a safety margin."""
    pool = await HttpPool.open(*server.address, 1)
    try:
        status, body = await pool.fetch(get_request(server.host, "/metrics"))
    finally:
        pool.close()
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}: {body[:200]!r}")
    counts = {"met": 0, "missed": 0}
    margin = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "inferd_latency_objective_answers_total":
                counts[sample.labels["outcome"]] = int(sample.value)
            elif sample.name == "inferd_latency_margin_ratio":
                margin = sample.value
    return counts["met"], counts["missed"], margin


def batch_means(document: dict[str, Any]) -> dict[int, float]:
    """Mean compute (input + infer + output) per batch size over the server's lifetime, ms."""
    means: dict[int, float] = {}
    for entry in document["batch_stats"]:
        parts = [entry[key] for key in ("compute_input", "compute_infer", "compute_output")]
        count = max(1, int(parts[1]["count"]))
        means[int(entry["batch_size"])] = sum(int(part["ns"]) for part in parts) / count / 1e6
    return means


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Server-side view of one run: accepted, rejected, executions, mean batch and queue time."""

    def count(doc: dict[str, Any], key: str) -> int:
        return int(doc["inference_stats"][key]["count"])

    def nanos(doc: dict[str, Any], key: str) -> int:
        return int(doc["inference_stats"][key]["ns"])

    success = count(after, "success") - count(before, "success")
    executions = int(after["execution_count"]) - int(before["execution_count"])
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    queue_ns = nanos(after, "queue") - nanos(before, "queue")
    return {
        "success": success,
        "fail": count(after, "fail") - count(before, "fail"),
        "executions": executions,
        "mean_batch": inferences / executions if executions else 0.0,
        "mean_queue_ms": queue_ns / max(1, count(after, "queue") - count(before, "queue")) / 1e6,
        "mean_success_ms": (nanos(after, "success") - nanos(before, "success"))
        / max(1, success)
        / 1e6,
    }


# ---- the benchmark ---------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    model: str
    load: float
    offered_rps: float
    duration_s: float
    samples: list[Sample]
    server: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Options:
    objective_ms: float
    duration_s: float
    loads: tuple[float, ...]
    concurrency: int
    max_in_flight: int
    grace_s: float
    seed: int
    client_cpus: int


@dataclass(slots=True)
class Outcome:
    capacity_rps: float
    runs: list[Run]
    batch_ms: dict[str, dict[int, float]]  # server-side mean compute per batch size, per model


async def run_benchmark(server: Server, options: Options) -> Outcome:
    targets = {name: make_target(server, name) for name in (PLAIN, SLA)}
    await warm_up(server, options.concurrency)
    capacity = await closed_loop(server, targets[PLAIN], options.concurrency, CAPACITY_SECONDS)
    print(f"capacity of '{PLAIN}': {capacity:.0f} requests/s", flush=True)
    runs: list[Run] = []
    for index, load in enumerate(options.loads):
        arrivals = poisson_arrivals(load * capacity, options.duration_s, options.seed + index)
        for name in (PLAIN, SLA):
            await asyncio.sleep(PAUSE_SECONDS)
            run = Run(name, load, load * capacity, options.duration_s, [])
            await one_run(server, targets[name], arrivals, run, options)
            runs.append(run)
            print(format_progress(run, options.objective_ms), flush=True)
    batch_ms = {name: batch_means(await model_stats(server, name)) for name in targets}
    return Outcome(capacity, runs, batch_ms)


async def warm_up(server: Server, clients: int) -> None:
    """Run both models until onnxruntime is warm. The 'sla' warm-up relaxes the objective per
    request so that its execution-time estimator learns from real executions, not only from
    the cold first one (whose outlier alone can make it reject everything, see README)."""
    targets = (make_target(server, PLAIN), make_target(server, SLA, WARMUP_OBJECTIVE_MS))
    for target in targets:
        await closed_loop(server, target, 1, WARMUP_SECONDS / 2)
        await closed_loop(server, target, clients, WARMUP_SECONDS)


async def one_run(
    server: Server, target: Target, arrivals: np.ndarray, run: Run, options: Options
) -> None:
    """Fill `run` with the open loop's samples and the server's statistics over it."""
    before = await model_stats(server, run.model)
    met_before, missed_before, _ = await objective_answers(server, run.model)
    run.samples = await open_loop(server, target, arrivals, options.max_in_flight, options.grace_s)
    after = await model_stats(server, run.model)
    met, missed, margin = await objective_answers(server, run.model)
    run.server = stats_delta(before, after)
    met, missed = met - met_before, missed - missed_before
    # Answered after the objective, as the server measures (no objective: nothing to miss).
    run.server["late_pct"] = _pct(missed, met + missed) if met + missed else -1.0
    run.server["margin_pct"] = 100.0 * margin


def summarize(run: Run, objective_ms: float) -> dict[str, Any]:
    total = len(run.samples)
    statuses = np.array([s.status for s in run.samples], dtype=np.int64)
    ok = [s.latency_ms for s in run.samples if 200 <= s.status < 300 and s.latency_ms]
    answered = [s.latency_ms for s in run.samples if s.latency_ms is not None]
    lags = np.array([s.lag_ms for s in run.samples if s.status != UNSENT] or [0.0])
    p99_ok = _percentile(ok, 99)
    return {
        "model": run.model,
        "load": run.load,
        "offered_rps": run.offered_rps,
        "requests": total,
        "goodput_rps": len(ok) / run.duration_s,
        "reject_pct": _pct(int(np.sum(statuses == 503)), total),
        "other_error_pct": _pct(int(np.sum((statuses >= 300) & (statuses != 503))), total),
        "conn_error_pct": _pct(int(np.sum(statuses == CONN_ERROR)), total),
        "timeout_pct": _pct(int(np.sum(statuses == TIMEOUT)), total),
        "unsent_pct": _pct(int(np.sum(statuses == UNSENT)), total),
        "late_pct": _pct(int(np.sum(lags > LATE_MS)), total),
        "p50_ok_ms": _percentile(ok, 50),
        "p99_ok_ms": p99_ok,
        "p99_all_ms": _percentile(answered, 99),
        "meets_objective": p99_ok is not None and p99_ok <= objective_ms,
        "server": run.server,
    }


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


# ---- reporting -------------------------------------------------------------------------------

COLUMNS = (
    "model",
    "load",
    "offered/s",
    "goodput/s",
    "reject %",
    "timeout %",
    "unsent %",
    "late %",
    "p50 ok ms",
    "p99 ok ms",
    "p99 all ms",
    "p99 ok <= obj",
)
SERVER_COLUMNS = (
    "model",
    "load",
    "accepted",
    "rejected",
    "executions",
    "mean batch",
    "mean queue ms",
    "mean ok ms",
    "late % (server)",
    "margin % (end)",
)


def table_row(summary: dict[str, Any]) -> list[str]:
    return [
        summary["model"],
        f"{summary['load']:.2f}",
        f"{summary['offered_rps']:.0f}",
        f"{summary['goodput_rps']:.0f}",
        f"{summary['reject_pct']:.1f}",
        f"{summary['timeout_pct']:.1f}",
        f"{summary['unsent_pct']:.1f}",
        f"{summary['late_pct']:.1f}",
        _ms(summary["p50_ok_ms"]),
        _ms(summary["p99_ok_ms"]),
        _ms(summary["p99_all_ms"]),
        "yes" if summary["meets_objective"] else "NO",
    ]


def server_row(summary: dict[str, Any]) -> list[str]:
    server = summary["server"]
    return [
        summary["model"],
        f"{summary['load']:.2f}",
        f"{server['success']:.0f}",
        f"{server['fail']:.0f}",
        f"{server['executions']:.0f}",
        f"{server['mean_batch']:.1f}",
        f"{server['mean_queue_ms']:.1f}",
        f"{server['mean_success_ms']:.1f}",
        f"{server['late_pct']:.1f}" if server["late_pct"] >= 0 else "n/a",
        f"{server['margin_pct']:.0f}",
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_progress(run: Run, objective_ms: float) -> str:
    s = summarize(run, objective_ms)
    return (
        f"  {s['model']:>5} load {s['load']:.2f}: goodput {s['goodput_rps']:.0f}/s, "
        f"reject {s['reject_pct']:.1f} %, p99 ok {_ms(s['p99_ok_ms'])} ms, "
        f"server fail {run.server['fail']:.0f}"
    )


def header_text(options: Options, exec_ms: dict[int, float], capacity: float) -> str:
    return (
        f"# SLA benchmark\n\n"
        f"- objective: {options.objective_ms:g} ms; duration per run: {options.duration_s:g} s; "
        f"seed {options.seed}; max in flight {options.max_in_flight}; CPUs reserved for the "
        f"client: {options.client_cpus or 'none'}\n"
        f"- onnxruntime alone (1 thread, median): {_per_batch(exec_ms)}\n"
        f"- capacity of '{PLAIN}' (closed loop, {options.concurrency} clients): "
        f"{capacity:.0f} requests/s\n"
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}\n"
    )


def _per_batch(ms: dict[int, float]) -> str:
    return ", ".join(f"batch {size}: {value:.2f} ms" for size, value in sorted(ms.items()))


def warnings_text(summaries: Sequence[dict[str, Any]]) -> str:
    """Hints for reading a bad result (the README explains them)."""
    notes: list[str] = []
    for s in summaries:
        where = f"{s['model']} at load {s['load']:.2f}"
        if s["model"] == SLA and s["requests"] and s["server"]["executions"] == 0:
            notes.append(
                f"- {where}: every request rejected, none executed (execution-time estimate "
                f"stuck above the objective?)"
            )
        if s["late_pct"] > 5:
            notes.append(
                f"- {where}: {s['late_pct']:.0f} % sent > {LATE_MS:g} ms late: the client is "
                f"CPU-starved, latencies include its own lag"
            )
    return "\n".join(["## Warnings", "", *notes, ""]) if notes else ""


def report_text(options: Options, exec_ms: dict[int, float], outcome: Outcome) -> str:
    summaries = [summarize(run, options.objective_ms) for run in outcome.runs]
    batch_lines = [f"- {name}: {_per_batch(ms)}" for name, ms in outcome.batch_ms.items()]
    parts = [
        header_text(options, exec_ms, outcome.capacity_rps),
        "## Client view (latency: send to full response)\n",
        markdown_table(COLUMNS, [table_row(s) for s in summaries]) + "\n",
        "## Server view (GET /v2/models/<model>/stats, difference over each run)\n",
        markdown_table(SERVER_COLUMNS, [server_row(s) for s in summaries]) + "\n",
        "Server-side mean compute per batch size over the whole benchmark:\n",
        "\n".join(batch_lines) + "\n",
        warnings_text(summaries),
    ]
    return "\n".join(part for part in parts if part)


def write_results(out: Path, options: Options, exec_ms: dict[int, float], outcome: Outcome) -> str:
    report = report_text(options, exec_ms, outcome)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(report)
    summary = {
        "options": asdict(options),
        "exec_ms": exec_ms,
        "capacity_rps": outcome.capacity_rps,
        "server_batch_ms": outcome.batch_ms,
        "runs": [summarize(run, options.objective_ms) for run in outcome.runs],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    raw = [
        {
            "model": run.model,
            "load": run.load,
            "samples": [
                [round(s.scheduled_s, 6), round(s.lag_ms, 3), s.status, _round(s.latency_ms)]
                for s in run.samples
            ],
        }
        for run in outcome.runs
    ]
    (out / "samples.json").write_text(json.dumps({"columns": SAMPLE_COLUMNS, "runs": raw}))
    return report


SAMPLE_COLUMNS = ["scheduled_s", "lag_ms", "status", "latency_ms"]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Offered load from below to above capacity against one local inferd server, with "
            "and without a latency objective (inferd.latency_slo_ms): p50/p99 latency, goodput "
            "and rejects per model and load."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--objective-ms", type=float, default=10.0, help="latency objective of the 'sla' model"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds of open-loop load per run"
    )
    parser.add_argument(
        "--loads",
        type=_loads,
        default="0.5,0.75,1,1.25,1.5",
        help="comma-separated load factors (offered rate = factor x measured capacity)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="closed-loop clients for the capacity measurement (and the warm-up)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=512,
        help="open-loop cap on outstanding requests; arrivals past it count as unsent",
    )
    parser.add_argument(
        "--grace", type=float, default=2.0, help="seconds to wait for stragglers after a run"
    )
    parser.add_argument(
        "--width", type=int, default=512, help="hidden width of the benchmark model"
    )
    parser.add_argument(
        "--depth", type=int, default=16, help="MatMul+Relu layers of the benchmark model"
    )
    parser.add_argument(
        "--client-cpus",
        type=int,
        default=1,
        help="CPUs reserved for the load generator, the server getting the rest (Linux); 0 lets "
        "both share every CPU, where a CPU-starved client adds its own lag to every latency",
    )
    parser.add_argument("--out", type=Path, default=Path("results/sla"), help="results folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    return parser.parse_args(argv)


def _loads(text: str) -> tuple[float, ...]:
    try:
        loads = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not loads or any(load <= 0 for load in loads):
        raise argparse.ArgumentTypeError("load factors must be positive")
    return loads


def split_cpus(client_cpus: int) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """Give the load generator the last `client_cpus` CPUs and the server the others, so that
    neither takes CPU time from the other (0: no pinning, both share every CPU)."""
    available = sorted(os.sched_getaffinity(0))
    if client_cpus <= 0 or client_cpus >= len(available):
        return None, None
    return frozenset(available[:-client_cpus]), frozenset(available[-client_cpus:])


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the finally that stops the server


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        objective_ms=args.objective_ms,
        duration_s=args.duration,
        loads=args.loads,
        concurrency=args.concurrency,
        max_in_flight=args.max_in_flight,
        grace_s=args.grace,
        seed=args.seed,
        client_cpus=args.client_cpus,
    )
    signal.signal(signal.SIGTERM, _sigterm)
    model = build_model(args.width, args.depth)
    exec_ms = measure_exec_ms(model, (1, 4, 8, 16))
    print(f"model {args.width}x{args.depth}, onnxruntime alone (1 thread, median):")
    for size, ms in exec_ms.items():
        print(f"  batch {size:>2}: {ms:.2f} ms")
    try:
        with tempfile.TemporaryDirectory(prefix="inferd-sla-bench-") as tmp:
            repository = Path(tmp) / "models"
            write_repository(repository, model, options.objective_ms)
            server_cpus, client_cpus = split_cpus(args.client_cpus)
            if client_cpus is not None:
                os.sched_setaffinity(0, client_cpus)
                print(f"CPUs: server {sorted(server_cpus or ())}, client {sorted(client_cpus)}")
            with inferd_server(repository, Path(tmp) / "server.log", server_cpus) as server:
                outcome = _run_async(run_benchmark(server, options))
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:  # the server did not come up
        print(error, file=sys.stderr)
        return 1
    print()
    print(write_results(args.out, options, exec_ms, outcome))
    print(f"results written to {args.out}/ (table.md, summary.json, samples.json)")
    return 0


def _run_async(coroutine: Coroutine[Any, Any, Outcome]) -> Outcome:
    try:
        import uvloop  # the client shares the CPU with the server: the cheaper loop helps
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


if __name__ == "__main__":
    sys.exit(main())
