"""Dynamic batching and the statistics extension through the real HTTP client and perf_analyzer."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import EXAMPLES, RunningServer
from tests.models import identity_model, write_model
from tests.perf_analyzer import needs_perf_analyzer, run_perf_analyzer

BATCHING_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 5000000
  priority_levels: 2
  default_priority_level: 2
}
parameters { key: "inferd.latency_slo_ms" value: { string_value: "60000" } }
"""


@pytest.fixture
def batching_server(tmp_path: Path, server_factory: Callable[..., RunningServer]) -> RunningServer:
    write_model(tmp_path, "batched", identity_model(), BATCHING_CONFIG)
    return server_factory(model_repositories=(tmp_path,))


def one_request(url: str, value: float) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
        result: np.ndarray = client.infer("batched", [tensor]).as_numpy("OUTPUT0")
        return result
    finally:
        client.close()


def test_concurrent_requests_form_preferred_batches_and_stats_agree(
    batching_server: RunningServer,
) -> None:
    url = batching_server.http_url
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda v: one_request(url, v), range(8)))
    for value, result in enumerate(results):  # each request got its own rows back
        np.testing.assert_array_equal(result, np.full((1, 4), value, np.float32))
    client = httpclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics("batched")["model_stats"]
    finally:
        client.close()
    assert len(stats) == 1
    model = stats[0]
    assert (model["name"], model["version"]) == ("batched", "1")
    assert model["inference_count"] == 8
    assert model["execution_count"] == 2  # two batches of the preferred size 4
    infer = model["inference_stats"]
    assert infer["success"]["count"] == 8 and infer["fail"]["count"] == 0
    assert infer["queue"]["count"] == 8
    # perf_analyzer checks that these three counts agree.
    assert infer["compute_input"]["count"] == infer["compute_infer"]["count"] == 8
    assert infer["compute_output"]["count"] == 8
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in model["batch_stats"]] == [
        (4, 2)
    ]
    assert model["last_inference"] > 0


def test_schedule_policy_parameters_over_http(batching_server: RunningServer) -> None:
    """Malformed scheduling parameters are refused (a priority past the levels is the default
    level, as in Triton 2.51: tests/unit/test_scheduler.py)."""
    body = {
        "parameters": {"priority": -1},
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    }
    with httpx.Client(base_url=f"http://{batching_server.http_url}") as http:
        response = http.post("/v2/models/batched/infer", json=body)
        assert response.status_code == 400
        assert "'priority' must be a non-negative integer" in response.json()["error"]
        body["parameters"] = {"timeout": "soon"}
        assert http.post("/v2/models/batched/infer", json=body).status_code == 400
        body["parameters"] = {"inferd.latency_slo_ms": -1}
        assert http.post("/v2/models/batched/infer", json=body).status_code == 400


def test_statistics_endpoints(examples_server: RunningServer) -> None:
    with httpx.Client(base_url=f"http://{examples_server.http_url}") as http:
        every = http.get("/v2/models/stats").json()["model_stats"]
        assert {m["name"] for m in every} == {"bytes_identity", "digits", "identity_fp32", "simple"}
        one = http.get("/v2/models/simple/versions/1/stats").json()["model_stats"]
        assert [(m["name"], m["version"]) for m in one] == [("simple", "1")]
        unknown = http.get("/v2/models/nope/stats")  # as Triton 2.51 answers it
        assert unknown.status_code == 400
        assert unknown.json() == {"error": "requested model 'nope' is not available"}


@pytest.mark.slow
@needs_perf_analyzer
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_unchanged(
    server_factory: Callable[..., RunningServer], protocol: str
) -> None:
    server = server_factory(model_repositories=(EXAMPLES,))
    url = server.http_url if protocol == "http" else server.grpc_url
    flags = ["-b", "2", "--concurrency-range", "4:4", "-p", "500", "-r", "3"]
    output = run_perf_analyzer("simple", url, protocol, *flags)
    assert "Server:" in output  # it read our statistics and found them consistent


def test_refused_requests_are_not_failures_of_the_model(batching_server: RunningServer) -> None:
    """As in Triton 2.51: a request that does not fit the model (here its shape) is counted in
    neither the model's statistics nor nv_inference_request_failure."""
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    with httpx.Client(base_url=f"http://{batching_server.http_url}") as http:
        assert http.post("/v2/models/batched/infer", json=body).status_code == 400
        stats = http.get("/v2/models/batched/stats").json()["model_stats"][0]
        metrics = http.get("/metrics").text
    assert stats["inference_stats"]["fail"]["count"] == 0
    assert stats["inference_stats"]["success"]["count"] == 0
    assert 'nv_inference_request_failure{model="batched",reason="OTHER",version="1"} 0' in metrics


def test_dynamic_batching_of_a_model_that_does_not_batch_runs_each_request_alone(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    """As in Triton, max_batch_size 0 with dynamic_batching loads: its queue settings apply
    (here priorities) and every request is an execution of its own."""
    config = (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1, 4 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1, 4 ] }]\n'
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 }\n"
    )
    write_model(tmp_path, "alone", identity_model(shape=(1, 4)), config)
    server = server_factory(model_repositories=(tmp_path,))

    def call(value: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
            answer: np.ndarray = client.infer("alone", [tensor], priority=1 + value % 2).as_numpy(
                "OUTPUT0"
            )
            return answer
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(16)))
    for value, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, 4), value, np.float32))
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics("alone")["model_stats"][0]
    finally:
        client.close()
    assert stats["inference_count"] == stats["execution_count"] == 16
    assert [b["batch_size"] for b in stats["batch_stats"]] == [1]
