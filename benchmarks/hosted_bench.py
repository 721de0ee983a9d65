"""The hosted platforms' inference routes under load, SageMaker's `POST /invocations` and
Vertex AI's predict route: inferd and Triton 2.51 (`--allow-sagemaker`, `--allow-vertex-ai`),
each serving Triton's python-backend repository of the peers unchanged ($PEERS/models/repo-py,
model `tiny`), with inferd's own `/v2/models/tiny/infer` beside them for what the routes cost.

    python -m inferd.benchmarks.hosted_bench --out /tmp/hosted

For each server in turn: launch on 127.0.0.1, first inference, then at each concurrency C a
closed loop of C keep-alive connections (`http_pool.py`: pre-encoded requests, no task per
request) for --duration seconds, in the binary tensor form SageMaker marks by content type.
Prints a table (and writes it, with results.json, to --out) of throughput and latency
percentiles. A benchmark, never a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from inferd.benchmarks import peers, ports, servers
from inferd.benchmarks.http_pool import HttpPool, post_request
from inferd.benchmarks.procs import LOCALHOST, launch, stop, wait_first_infer

MODEL = "tiny"
BINARY_TYPES = {
    "/invocations": "application/vnd.sagemaker-triton.binary+json;json-header-size=",
    "/predict": "application/vnd.vertex-ai-triton.binary+json;json-header-size=",
}
Route = tuple[str, int]  # a path and the port it is served on


@dataclass(frozen=True)
class Row:
    server: str
    route: str
    concurrency: int
    infer_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def request_body() -> tuple[bytes, int]:
    """The binary form of one `tiny` request ([1, 16] FP32), the output asked for binary."""
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 16],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 64},
            }
        ],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    return head + struct.pack("<16f", *([0.5] * 16)), len(head)


def requests(port: int, route: str) -> bytes:
    """One request's bytes, its binary data marked as the route's platform marks it."""
    body, header_length = request_body()
    host = f"{LOCALHOST}:{port}"
    binary_type = BINARY_TYPES.get(route)
    if binary_type is not None:
        return post_request(host, route, body, {"Content-Type": f"{binary_type}{header_length}"})
    headers = {"Inference-Header-Content-Length": str(header_length)}
    return post_request(host, route, body, headers)


async def closed_loop(port: int, request: bytes, concurrency: int, duration_s: float) -> Row:
    """`concurrency` connections, each sending the next request as the last one is answered."""
    for _ in range(100):  # a server's other ports may open a moment after its HTTP port
        try:
            pool = await HttpPool.open(LOCALHOST, port, concurrency)
            break
        except ConnectionRefusedError:
            await asyncio.sleep(0.1)
    else:
        pool = await HttpPool.open(LOCALHOST, port, concurrency)
    latencies: list[float] = []
    errors = 0
    done = asyncio.get_running_loop().create_future()
    deadline = time.perf_counter() + duration_s
    open_loops = concurrency

    def answered(status: int, body: bytes, elapsed: float) -> None:
        nonlocal errors, open_loops
        if status == 200:
            latencies.append(elapsed)
        else:
            errors += 1
        if time.perf_counter() < deadline:
            pool.try_send(request, answered)
            return
        open_loops -= 1
        if not open_loops and not done.done():
            done.set_result(None)

    started = time.perf_counter()
    for _ in range(concurrency):
        pool.try_send(request, answered)
    await done
    elapsed = time.perf_counter() - started
    pool.close()
    latencies.sort()
    count = len(latencies)

    def percentile(q: float) -> float:
        return latencies[min(count - 1, int(q * count))] * 1000 if count else float("nan")

    return Row("", "", concurrency, count / elapsed, percentile(0.5), percentile(0.99), errors)


def server_for(name: str, peers_path: Path, workdir: Path) -> tuple[servers.Server, list[Route]]:
    """The server with its SageMaker and Vertex AI ports on (other free ports), both running
    `tiny` by default; the routes to measure, with their ports."""
    sagemaker_port, vertex_port = ports.free_port(), ports.free_port()
    env = {
        "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": MODEL,
        "AIP_PREDICT_ROUTE": "/predict",
        "AIP_HEALTH_ROUTE": "/health",
    }
    flags = [
        "--allow-sagemaker=true",
        f"--sagemaker-port={sagemaker_port}",
        "--allow-vertex-ai=true",
        f"--vertex-ai-port={vertex_port}",
        f"--vertex-ai-default-model={MODEL}",
    ]
    base = servers.build(name, peers_path, ports.free_port_block(3), workdir)
    routes = [("/invocations", sagemaker_port), ("/predict", vertex_port)]
    if name.startswith("inferd"):
        flags.append("--log-level=warning")
        routes.append((f"/v2/models/{MODEL}/infer", base.base_port))
    server = replace(base, argv=[*base.argv, *flags], env={**base.env, **env})
    return server, routes


def run(name: str, args: argparse.Namespace, peers_path: Path) -> list[Row]:
    server, routes = server_for(name, peers_path, args.out / "work" / name)
    rows: list[Row] = []
    with (args.out / "logs" / f"{name}.log").open("wb") as log:
        proc = launch(server.argv, cwd=server.cwd, env=server.env, log=log)
        try:
            startup = wait_first_infer(
                proc, server.http_url, server.probe, started=time.perf_counter()
            )
            if startup.first_infer_s is None:
                print(f"{name} did not start: see {log.name}", file=sys.stderr)
                return rows
            for route, port in routes:
                request = requests(port, route)
                asyncio.run(closed_loop(port, request, 4, 1.0))  # warm-up
                for concurrency in args.concurrency:
                    row = asyncio.run(closed_loop(port, request, concurrency, args.duration))
                    rows.append(replace(row, server=name, route=route))
                    print(_line(rows[-1]), flush=True)
        finally:
            stop(proc)
    return rows


def _line(row: Row) -> str:
    return (
        f"| {row.server} | {row.route} | {row.concurrency} | {row.infer_per_s:,.0f} "
        f"| {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.errors} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (created)")
    parser.add_argument("--servers", default="inferd-py,triton-py", help="inferd-py, triton-py")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 16],
        help="comma-separated connection counts",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--peers", help="the peers directory (default $PEERS or /tmp/peers)")
    args = parser.parse_args(argv)
    peers_path = peers.peers_dir(args.peers)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for name in args.servers.split(","):
        rows += run(name, args, peers_path)
    table = "\n".join(
        [
            "| server | route | connections | infer/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|---|",
            *map(_line, rows),
        ]
    )
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if any(row.errors for row in rows) or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
