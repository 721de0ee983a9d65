"""Continuous batching of a generative model: iterative sequences against static batching, and
inferd against tritonserver 2.51 on the same model.

    python -m inferd.benchmarks.iterative_bench --out results/iterative
    python -m inferd.benchmarks.iterative_bench --servers inferd --users 8 --duration 5 \\
        --out results/iterative-quick

The model (python backend, decoupled, written once for both servers) generates INPUT tokens
for a request, one per decode step; a step costs `--step-ms` of waiting whatever the batch size,
as a GPU decode step does, and streams one response per request. Two copies:
- `gen_iterative` (`sequence_batching { iterative_sequence: true }`): one step per execution;
  a request that is not done is rescheduled, so every step's batch takes in new requests and a
  finished request's place goes to the next at once (continuous batching);
- `gen_static` (`dynamic_batching`): an execution runs its batch until its longest request is
  done; newcomers wait for the whole batch.

Load: `--users` clients, each with one gRPC stream (ModelStreamInfer) and one request at a time
(closed loop), asking for a number of tokens drawn uniformly from 1..`--max-tokens` (the same
seeded draws for every server and model). Reported per server and model: requests/s and
tokens/s over the measured window, time to first token and request latency (p50, p99), and the
mean batch of a step from the server's statistics (inferences per execution).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from inferd.benchmarks import peers, ports, procs, servers

MODELS = ("gen_iterative", "gen_static")
# inferd-process: inferd with the python models in stub processes, as Triton runs them.
SERVERS = ("inferd", "inferd-process", "triton-py")
DEFAULT_SERVERS = ("inferd", "triton-py")

MODEL_PY = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
RESCHEDULE = pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE


def token(left):
    return pb_utils.InferenceResponse([pb_utils.Tensor("TOKEN", np.array([[left]], np.int32))])


def wanted(request):
    return int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().ravel()[0])


class TritonPythonModel:
    def initialize(self, args):
        self.left = {}

    def execute(self, requests):
        if ITERATIVE:
            time.sleep(STEP_S)
            for request in requests:
                key = request.correlation_id()
                left = self.left.pop(key, None)
                left = (wanted(request) if left is None else left) - 1
                sender = request.get_response_sender()
                if left > 0:
                    self.left[key] = left
                    request.set_release_flags(RESCHEDULE)
                    sender.send(token(left))
                else:
                    sender.send(token(left), flags=FINAL)
            return None
        left = [wanted(request) for request in requests]
        senders = [request.get_response_sender() for request in requests]
        while any(n > 0 for n in left):
            time.sleep(STEP_S)
            for i, sender in enumerate(senders):
                if left[i] > 0:
                    left[i] -= 1
                    sender.send(token(left[i]), flags=FINAL if left[i] == 0 else 0)
        return None
"""

CONFIG = """
backend: "python"
max_batch_size: {batch}
input [{{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }}]
output [{{ name: "TOKEN" data_type: TYPE_INT32 dims: [ 1 ] }}]
model_transaction_policy {{ decoupled: {decoupled} }}
{scheduling}
instance_group [{{ kind: KIND_CPU count: 1 }}]
"""

# A single-answer model that proves a server is serving (decoupled models refuse HTTP infer).
PROBE_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("TOKEN", np.zeros((1, 1), np.int32))])
            for _ in requests
        ]
"""
PROBE = procs.Probe.of("gen_probe", {"INPUT": ("INT32", (1, 1))})


ITERATIVE_SCHEDULING = "sequence_batching { iterative_sequence: true }"
# tritonserver's python stub must find the numpy of the environment it was built with first.
TRITON_PREAMBLE = "import sys\n\nsys.path.insert(0, {site!r})\n"


def write_repository(repo: Path, step_ms: float, batch: int, site_packages: str) -> None:
    """The models; with `site_packages`, for tritonserver's python stub (TRITON_PREAMBLE)."""
    preamble = TRITON_PREAMBLE.format(site=site_packages) if site_packages else ""
    models = (  # name, model.py, scheduling, decoupled
        ("gen_iterative", MODEL_PY.replace("ITERATIVE", "True"), ITERATIVE_SCHEDULING, "true"),
        ("gen_static", MODEL_PY.replace("ITERATIVE", "False"), "dynamic_batching { }", "true"),
        ("gen_probe", PROBE_PY, "", "false"),
    )
    for name, source, scheduling, decoupled in models:
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        source = preamble + source.replace("STEP_S", repr(step_ms / 1000))
        (repo / name / "1" / "model.py").write_text(source)
        config = CONFIG.format(batch=batch, scheduling=scheduling, decoupled=decoupled)
        (repo / name / "config.pbtxt").write_text(config)


@dataclass(frozen=True)
class Done:
    """One request: when it was sent and finished, its first token's delay, its tokens."""

    sent: float
    finished: float
    first_s: float
    tokens: int
    error: str = ""


def request_message(model: str, tokens: int) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    tensor = message.inputs.add()
    tensor.name, tensor.datatype = "INPUT", "INT32"
    tensor.shape.extend([1, 1])
    message.raw_input_contents.append(np.full((1, 1), tokens, np.int32).tobytes())
    return message


async def user(
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    lengths: list[int],
    stop_at: float,
    done: list[Done],
) -> None:
    """One stream, one request at a time, until `stop_at`."""
    call = stub.ModelStreamInfer()
    for tokens in lengths:
        if time.perf_counter() >= stop_at:
            break
        sent = time.perf_counter()
        await call.write(request_message(model, tokens))
        first = 0.0
        got = 0
        while True:
            answer = await call.read()
            if answer is grpc.aio.EOF or answer.error_message:
                error = "stream ended" if answer is grpc.aio.EOF else answer.error_message
                done.append(Done(sent, time.perf_counter(), first, got, error))
                return
            got += 1
            first = first or time.perf_counter() - sent
            if answer.infer_response.parameters["triton_final_response"].bool_param:
                break
        done.append(Done(sent, time.perf_counter(), first, got))
    await call.done_writing()


async def load(grpc_url: str, model: str, args: argparse.Namespace) -> list[Done]:
    draws = random.Random(args.seed)
    per_user = 100_000  # more than a run can use: users stop at the deadline
    lengths = [
        [draws.randint(1, args.max_tokens) for _ in range(per_user)] for _ in range(args.users)
    ]
    done: list[Done] = []
    async with grpc.aio.insecure_channel(grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stop_at = time.perf_counter() + args.warmup + args.duration
        await asyncio.gather(*(user(stub, model, each, stop_at, done) for each in lengths))
    return done


def summarize(done: list[Done], start: float, args: argparse.Namespace) -> dict[str, float]:
    """Requests finished in the measured window (after the warm-up)."""
    begin, end = start + args.warmup, start + args.warmup + args.duration
    kept = [d for d in done if begin <= d.finished <= end and not d.error]
    first = [d.first_s * 1000 for d in kept]
    latency = [(d.finished - d.sent) * 1000 for d in kept]
    return {
        "requests_per_s": len(kept) / args.duration,
        "tokens_per_s": sum(d.tokens for d in kept) / args.duration,
        "first_token_p50_ms": _percentile(first, 50),
        "first_token_p99_ms": _percentile(first, 99),
        "latency_p50_ms": _percentile(latency, 50),
        "latency_p99_ms": _percentile(latency, 99),
        "errors": float(sum(1 for d in done if d.error)),
    }


def _percentile(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def mean_batch(http_url: str, model: str) -> float:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as r:
        stats = json.loads(r.read())["model_stats"][0]
    executions = int(stats["execution_count"])
    return int(stats["inference_count"]) / executions if executions else float("nan")


def build(name: str, peers_path: Path | None, port: int, work: Path, repo: Path) -> servers.Server:
    if name.startswith("inferd"):
        isolation = "process" if name == "inferd-process" else "thread"
        args = ["--log-level=warning", f"--backend-config=python,isolation={isolation}"]
        return servers.inferd(port, work, repository=repo, extra_args=args, name=name)
    assert peers_path is not None
    triton = servers.triton_py(peers_path, port, work)
    argv = [*triton.argv, f"--model-repository={repo}"]
    return servers.Server(triton.name, argv, work, port, PROBE, triton.env)


def run_server(
    server: servers.Server, args: argparse.Namespace
) -> dict[str, dict[str, float]] | None:
    log_path = args.out / "logs" / f"{server.name}.log"
    print(f"== {server.name}: starting (log {log_path})", flush=True)
    results: dict[str, dict[str, float]] = {}
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = procs.launch(server.argv, cwd=server.cwd, env=server.env, log=log)
        try:
            up = procs.wait_first_infer(proc, server.http_url, PROBE, started=started, timeout_s=90)
            if up.first_infer_s is None:
                print(f"== {server.name}: did not start; see {log_path}")
                return None
            for model in args.models:
                start = time.perf_counter()
                done = asyncio.run(load(server.grpc_url, model, args))
                row = summarize(done, start, args)
                row["mean_batch"] = mean_batch(server.http_url, model)
                results[model] = row
                print(f"   {model}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
        finally:
            procs.stop(proc)
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    columns = list(next(iter(next(iter(results.values())).values())))
    lines = [
        "| server | model | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for server, models in results.items():
        for model, row in models.items():
            cells = " | ".join(f"{row[c]:,.1f}" for c in columns)
            lines.append(f"| {server} | {model} | {cells} |")
    ratios = []
    for name in ("inferd", "inferd-process"):
        inferd = results.get(name, {})
        for model, row in results.get("triton-py", {}).items():
            if model in inferd and row["tokens_per_s"] > 0:
                ratio = inferd[model]["tokens_per_s"] / row["tokens_per_s"]
                ratios.append(f"- {model}: {name} / triton-py tokens/s = {ratio:.2f}x")
    for server, models in results.items():
        if {"gen_iterative", "gen_static"} <= set(models) and models["gen_static"]["tokens_per_s"]:
            gain = models["gen_iterative"]["tokens_per_s"] / models["gen_static"]["tokens_per_s"]
            ratios.append(f"- {server}: iterative / static tokens/s = {gain:.2f}x")
    return "\n".join([*lines, "", *ratios]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (created)")
    parser.add_argument(
        "--servers", default=",".join(DEFAULT_SERVERS), help=f"of {', '.join(SERVERS)}"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="gen_iterative, gen_static")
    parser.add_argument("--users", type=int, default=16, help="concurrent streams (default 16)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request: 1..N")
    parser.add_argument("--step-ms", type=float, default=5.0, help="cost of a decode step")
    parser.add_argument("--max-batch-size", type=int, default=8, help="the models' batch limit")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not measured")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--peers", help="peers folder (default $PEERS or /tmp/peers)")
    args = parser.parse_args(argv)
    names = [s for s in args.servers.split(",") if s]
    args.models = [m for m in args.models.split(",") if m]
    if not set(names) <= set(SERVERS) or not set(args.models) <= set(MODELS):
        parser.error(f"servers are {SERVERS}, models {MODELS}")
    peers_path: Path | None = None
    site_packages = ""
    if "triton-py" in names:
        try:
            peers_path = peers.peers_dir(args.peers)
            found = next(peers_path.glob("venv-pytriton/lib/python*/site-packages"), None)
            site_packages = str(peers.require(found or peers_path / "venv-pytriton"))
        except peers.MissingTool as exc:
            sys.exit(str(exc))
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        work = args.out / "work" / name
        repo = work / "repository"
        repo.mkdir(parents=True, exist_ok=True)
        site = site_packages if name == "triton-py" else ""
        write_repository(repo, args.step_ms, args.max_batch_size, site)
        server = build(name, peers_path, ports.free_port_block(3), work, repo.resolve())
        outcome = run_server(server, args)
        if outcome is None:
            return 1
        results[name] = outcome
    report = table(results)
    (args.out / "results.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
    )
    (args.out / "table.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
