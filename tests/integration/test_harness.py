"""Smoke tests of the load-test harness (inferd.benchmarks): short runs, no timing asserted."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inferd.benchmarks import report, tensors
from inferd.benchmarks.http_pool import HttpPool, get_request
from inferd.benchmarks.perf_sweep import Cell, SweepOptions, sweep
from tests.conftest import RunningServer
from tests.perf_analyzer import PERF_ANALYZER, needs_perf_analyzer


@pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="locust is not installed (the test extra has it)",
)
def test_locust_runs(examples_server: RunningServer, tmp_path: Path) -> None:
    # Subprocesses (locust monkey-patches its interpreter with gevent), all four at once so
    # that the 2-second runs cost 2 seconds.
    runs = {}
    for protocol in ("http", "grpc", "http-json", "grpc-stream"):
        url = examples_server.grpc_url if protocol.startswith("grpc") else examples_server.http_url
        command = [sys.executable, "-m", "inferd.benchmarks.loadgen", "--protocol", protocol]
        command += ["--host", url, "--model", "simple", "--users", "2", "--duration", "2s"]
        command += ["--quiet", "--summary", str(tmp_path / f"{protocol}.json")]
        runs[protocol] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    try:
        for protocol, run in runs.items():
            output, _ = run.communicate(timeout=90)
            assert run.returncode == 0, f"{protocol}:\n{output[-4000:]}"
            totals = json.loads((tmp_path / f"{protocol}.json").read_text())
            assert totals["requests"] > 0, protocol
            assert totals["failures"] == 0, (protocol, totals["errors"])
    finally:
        for run in runs.values():  # the others, when one failed
            if run.poll() is None:
                run.kill()
                run.wait()


async def test_http_pool_sends_on_idle_connections_only(examples_server: RunningServer) -> None:
    host, port = examples_server.http_url.rsplit(":", 1)
    pool = await HttpPool.open(host, int(port), 2)
    ready = get_request(examples_server.http_url, "/v2/health/ready")
    answers: list[tuple[int, float]] = []
    all_answered = asyncio.Event()

    def answered(status: int, body: bytes, elapsed_s: float) -> None:
        answers.append((status, elapsed_s))
        if len(answers) == 2:
            all_answered.set()

    try:
        assert pool.try_send(ready, answered) and pool.try_send(ready, answered)
        assert not pool.try_send(ready, answered)  # both connections busy: nothing sent
        await asyncio.wait_for(all_answered.wait(), 10)
        assert [status for status, _ in answers] == [200, 200]
        assert all(elapsed > 0 for _, elapsed in answers)
        status, body = await pool.fetch(get_request(examples_server.http_url, "/v2/models/x"))
        assert status == 404 and b"error" in body  # the connections were reused
        assert pool.busy == 0
    finally:
        pool.close()


@needs_perf_analyzer
def test_perf_analyzer_sweep(examples_server: RunningServer) -> None:
    assert PERF_ANALYZER is not None
    opts = SweepOptions(
        perf_analyzer=PERF_ANALYZER,
        model="simple",
        concurrency=[1, 2],
        interval_ms=250,
        stability_pct=1000,
        max_trials=3,
        timeout_s=60,
    )
    urls = {"http": examples_server.http_url, "grpc": examples_server.grpc_url}
    cells = sweep(opts, urls, server="inferd", log=lambda _: None)
    assert [(c.protocol, c.concurrency) for c in cells] == [
        ("http", 1),
        ("http", 2),
        ("grpc", 1),
        ("grpc", 2),
    ]
    for cell in cells:
        assert cell.error is None, cell.command
        assert cell.infer_per_s and cell.infer_per_s > 0
        assert cell.p50_ms is not None and cell.p99_ms is not None and cell.p50_ms <= cell.p99_ms
    assert "| inferd | grpc | simple | 2 |" in report.perf_table(cells)


def test_tensor_encodings(tmp_path: Path) -> None:
    data = tmp_path / "input.json"
    data.write_text(json.dumps({"data": [{"x": [1.5, -2.0], "s": {"content": ["ab", "c"]}}]}))
    shapes = tensors.request_shapes(
        [
            {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "s", "datatype": "BYTES", "shape": [2]},
        ],
        tensors.parse_shapes([]),
    )
    (sample,) = tensors.file_samples(data, shapes)
    body, header_length = tensors.http_binary(sample)
    header = json.loads(body[:header_length])
    assert [i["parameters"]["binary_data_size"] for i in header["inputs"]] == [8, 11]
    assert body[header_length:] == (
        np.array([1.5, -2.0], np.float32).tobytes() + b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    )
    assert json.loads(tensors.http_json(sample))["inputs"][1]["data"] == ["ab", "c"]
    request = tensors.grpc_request(sample, "m", "")
    assert list(request.inputs[0].shape) == [1, 2]
    assert request.raw_input_contents[1] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


def _cells() -> list[Cell]:
    cells = [
        Cell(
            "http",
            "binary",
            "tiny",
            c,
            server="a",
            infer_per_s=100.0 * c,
            p50_ms=1.0,
            p99_ms=2.0,
            server_cpu_cores=0.5,
            other_cpu_cores=0.4 if c == 4 else 0.0,
        )
        for c in (1, 4)
    ]
    return [*cells, Cell("grpc", "binary", "tiny", 1, server="b", error="boom")]


def test_report_tables() -> None:
    table = report.perf_table(_cells())
    assert "| a | http | tiny | 4 | 400 | 1.00 | 2.00 | 0.50 |" in table
    assert "0.40 ⚠" in table
    assert "| b | grpc | tiny | 1 | FAIL |" in table
    runs: list[dict[str, float | None]] = [
        {"ready_s": 1.0, "first_infer_s": 1.5},
        {"ready_s": 2.0, "first_infer_s": None},
        {"ready_s": 3.0, "first_infer_s": 2.5},
    ]
    assert "| a | 3 | 2.00 | 2.00 | 1.50, FAIL, 2.50 |" in report.startup_table({"a": runs})


def test_report_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is in the bench extra only")
    paths = report.write_plots(_cells(), tmp_path)
    assert [p.name for p in paths] == ["throughput_vs_concurrency.png", "latency_vs_throughput.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_inferd_is_byte_compiled_before_a_measured_launch() -> None:
    import importlib.util

    from inferd.benchmarks.servers import byte_compile_inferd

    byte_compile_inferd()
    spec = importlib.util.find_spec("inferd.server.app")
    assert spec is not None and spec.origin is not None
    assert Path(importlib.util.cache_from_source(spec.origin)).is_file()


def test_iterative_bench_serves_both_models_and_reports_the_gain(tmp_path: Path) -> None:
    from inferd.benchmarks import iterative_bench

    argv = ["--servers", "inferd", "--users", "4", "--max-tokens", "4", "--step-ms", "1"]
    argv += ["--warmup", "0.3", "--duration", "1", "--out", str(tmp_path)]
    assert iterative_bench.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]["inferd"]
    for model in ("gen_iterative", "gen_static"):
        assert results[model]["errors"] == 0
        assert results[model]["tokens_per_s"] >= results[model]["requests_per_s"] > 0
    assert "inferd: iterative / static tokens/s" in (tmp_path / "table.md").read_text()


def test_the_parity_catalogue_runs_on_its_repository(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    """The Triton parity check (benchmarks/parity.py) without Triton: its repository loads,
    and each request of its catalogue gets an answer, the same one twice."""
    from inferd.benchmarks import parity

    repo = parity.write_repository(tmp_path / "repo")
    server = server_factory(model_repositories=(repo,))
    ports = (server.app.http_port, server.app.grpc_port)
    rows = parity.compare(ports, ports)
    assert [verdict for _, verdict, _ in rows] == ["same"] * len(rows)
    status, answer = parity.http_answer(ports[0], *parity.HTTP["http infer"])
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["OUTPUT0", "OUTPUT1"]
