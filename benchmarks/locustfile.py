"""Locust users for the KServe v2 / Triton inference protocols.

- ``HttpJsonUser``: POST /v2/models/M/infer with JSON tensors.
- ``HttpBinaryUser``: the same with the binary tensor extension (binary outputs too).
- ``GrpcUser``: unary ``ModelInfer``, one channel (connection) per user.
- ``GrpcStreamUser``: one ``ModelStreamInfer`` stream per user, one request in flight.

Each user sends requests for --model back to back (closed loop), or paced so that all users
together send --target-rate infer/s. Tensors come from --input-data (perf_analyzer's JSON
format) or are random; their shapes from the model's metadata, with dynamic dimensions from
--shape NAME:d1,d2 (the full request shape) or 1. Normally run by loadgen.py; directly:

    locust -f benchmarks/locustfile.py --headless -H http://127.0.0.1:8000 -u 8 -t 10s \\
        HttpBinaryUser --model simple
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.user.wait_time import constant_throughput
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd.benchmarks import tensors

# grpcio blocks in C unless told to cooperate with gevent; must precede any channel.
grpc_gevent.init_gevent()

MAX_MESSAGE = 2**31 - 1


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("inferd load test")
    group.add_argument("--model", default="simple", help="model name (default simple)")
    group.add_argument("--model-version", default="", help="model version (default: server's)")
    group.add_argument(
        "--shape",
        action="append",
        default=[],
        help="NAME:d1,d2: full request shape of an input (repeatable)",
    )
    group.add_argument(
        "--input-data",
        default="",
        help="perf_analyzer-style JSON file of input values (default: random)",
    )
    group.add_argument(
        "--target-rate",
        type=float,
        default=0.0,
        help="infer/s over all users; 0 = each user back to back",
    )
    group.add_argument(
        "--summary-file",
        default="",
        help="write the final aggregate (requests, failures, rate, ms) as JSON",
    )


@events.init.add_listener  # type: ignore[untyped-decorator]
def _refresh_clock(**_: Any) -> None:
    """Bring gevent's cached loop time up to date before locust arms its --run-time timer.

    The timer counts from that cached time, which stops advancing while the interpreter is busy
    without yielding (importing this file on a loaded machine): a stale clock ended 2-second
    runs before their first request.
    """
    gevent.get_hub().loop.update_now()


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _write_summary(environment: Environment, **_: Any) -> None:
    """The final totals; locust's CSV is only rewritten every second, so it can miss the end."""
    options = _options(environment)
    if not options.summary_file or isinstance(environment.runner, WorkerRunner):
        return
    total = environment.stats.total
    summary = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "requests_per_s": round(total.total_rps, 1),
        "avg_ms": round(total.avg_response_time, 3),
        # locust keeps response times in whole ms below 100 ms: use perf_analyzer for sub-ms work.
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": total.get_response_time_percentile(0.99),
        "errors": [f"{e.method} {e.name}: {e.error}" for e in environment.stats.errors.values()],
    }
    if environment.runner is not None:  # exceptions outside requests, e.g. in on_start
        summary["errors"] += [e["msg"] for e in environment.runner.exceptions.values()]
    Path(options.summary_file).write_text(json.dumps(summary, indent=1) + "\n")


def _options(environment: Environment) -> argparse.Namespace:
    """The parsed command line, with the arguments added above."""
    if environment.parsed_options is None:
        raise RuntimeError("run this locustfile through locust's command line (or loadgen.py)")
    options: argparse.Namespace = environment.parsed_options
    return options


def _paced_wait(user: User) -> float:
    """Seconds to wait before the next request: none, or the user's share of --target-rate."""
    options = _options(user.environment)
    if options.target_rate <= 0:
        return 0.0
    return constant_throughput(options.target_rate / max(1, options.num_users))(user)


def _samples(
    environment: Environment, metadata_inputs: list[dict[str, Any]]
) -> list[tensors.Sample]:
    options = _options(environment)
    shapes = tensors.request_shapes(metadata_inputs, tensors.parse_shapes(options.shape))
    if options.input_data:
        return tensors.file_samples(Path(options.input_data), shapes)
    return tensors.random_samples(shapes)


def _model_path(environment: Environment) -> str:
    options = _options(environment)
    version = f"/versions/{options.model_version}" if options.model_version else ""
    return f"/v2/models/{options.model}{version}"


class _HttpUser(FastHttpUser):
    abstract = True
    wait_time = _paced_wait
    protocol = ""

    def on_start(self) -> None:
        path = _model_path(self.environment)
        # Plain urllib (gevent-patched) so that the metadata call is not counted as load.
        with urllib.request.urlopen(f"{self.host}{path}", timeout=30) as answer:
            metadata = json.load(answer)
        self.infer_path = f"{path}/infer"
        self.samples = _samples(self.environment, metadata["inputs"])
        self.stat_name = f"{_options(self.environment).model} {self.protocol}"


class HttpJsonUser(_HttpUser):
    protocol = "http-json"

    def on_start(self) -> None:
        super().on_start()
        self.bodies = itertools.cycle([tensors.http_json(s) for s in self.samples])

    @task
    def infer(self) -> None:
        headers = {"Content-Type": "application/json"}
        self.client.post(
            self.infer_path,
            data=next(self.bodies),  # type: ignore[arg-type]  # bytes work; the hint is narrower
            headers=headers,
            name=self.stat_name,
        )


class HttpBinaryUser(_HttpUser):
    protocol = "http"

    def on_start(self) -> None:
        super().on_start()
        self.bodies = itertools.cycle([tensors.http_binary(s) for s in self.samples])

    @task
    def infer(self) -> None:
        body, header_length = next(self.bodies)
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        }
        # bytes work; locust's hint is narrower
        self.client.post(self.infer_path, data=body, headers=headers, name=self.stat_name)  # type: ignore[arg-type]


class _GrpcUser(User):
    abstract = True
    wait_time = _paced_wait
    protocol = ""

    def on_start(self) -> None:
        options = _options(self.environment)
        target = (self.host or "").removeprefix("grpc://").removeprefix("http://")
        # A local subchannel pool gives each user its own connection, like separate clients.
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ],
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        metadata = self.stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name=options.model, version=options.model_version),
            timeout=30,
        )
        inputs = [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in metadata.inputs
        ]
        requests = [
            tensors.grpc_request(s, options.model, options.model_version)
            for s in _samples(self.environment, inputs)
        ]
        self.requests = itertools.cycle(requests)
        self.stat_name = f"{options.model} {self.protocol}"

    def on_stop(self) -> None:
        self.channel.close()

    def _report(self, started: float, length: int, exception: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="grpc",
            name=self.stat_name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )


class GrpcUser(_GrpcUser):
    protocol = "grpc"

    @task
    def infer(self) -> None:
        started = time.perf_counter()
        try:
            response = self.stub.ModelInfer(next(self.requests), timeout=60)
        except grpc.RpcError as exc:
            self._report(started, 0, exc)
            return
        self._report(started, sum(len(b) for b in response.raw_output_contents), None)


class GrpcStreamUser(_GrpcUser):
    protocol = "grpc-stream"

    def on_start(self) -> None:
        super().on_start()
        self._open_stream()

    def _open_stream(self) -> None:
        self.outbox: queue.Queue[service_pb2.ModelInferRequest | None] = queue.Queue()
        self.responses: Iterator[service_pb2.ModelStreamInferResponse] = self.stub.ModelStreamInfer(
            iter(self.outbox.get, None)
        )

    def on_stop(self) -> None:
        self.outbox.put(None)  # half-close the stream, then drop it
        self.responses.cancel()  # type: ignore[attr-defined]
        super().on_stop()

    @task
    def infer(self) -> None:
        started = time.perf_counter()
        self.outbox.put(next(self.requests))
        try:
            response = next(self.responses)
        except (grpc.RpcError, StopIteration) as exc:
            self._report(started, 0, RuntimeError(f"stream ended: {exc!r}"))
            self._open_stream()  # a broken stream fails one request, not all that follow
            return
        if response.error_message:
            self._report(started, 0, RuntimeError(response.error_message))
            return
        raw = response.infer_response.raw_output_contents
        self._report(started, sum(len(b) for b in raw), None)
