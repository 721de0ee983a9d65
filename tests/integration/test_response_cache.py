"""The response cache through real servers: hits answer without running the model, over HTTP
and gRPC, for models and ensembles; statistics and metrics count them as Triton does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferd.server.cache_config import LocalCacheConfig
from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.python_models import RAISER, write_python_model
from tests.wire import PROTOCOLS, client_for, fails, infer

# Each instance counts its executions: an answer from the cache repeats the count it was
# stored with.
COUNTER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.calls = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            self.calls += 1
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            calls = np.full((x.shape[0], 1), self.calls, dtype=np.int32)
            outputs = [pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("CALLS", calls)]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""

COUNTER_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "CALLS" data_type: TYPE_INT32 dims: [ 1 ] }
]
response_cache { enable: true }
"""

ENSEMBLE = """
name: "cached_ensemble"
platform: "ensemble"
max_batch_size: 4
input [{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "CALLS" data_type: TYPE_INT32 dims: [ 1 ] }]
ensemble_scheduling { step [{
  model_name: "uncached" model_version: -1
  input_map { key: "X" value: "X" }
  output_map { key: "CALLS" value: "CALLS" }
}] }
response_cache { enable: true }
"""

RAISING_CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }]
response_cache { enable: true }
"""


def write_repository(root: Path) -> Path:
    write_python_model(root, "cached", COUNTER, COUNTER_CONFIG)
    write_python_model(
        root, "uncached", COUNTER, COUNTER_CONFIG.replace("response_cache { enable: true }", "")
    )
    write_python_model(root, "raising", RAISER, RAISING_CONFIG)
    (root / "cached_ensemble" / "1").mkdir(parents=True)
    (root / "cached_ensemble" / "config.pbtxt").write_text(ENSEMBLE)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = write_repository(tmp_path_factory.mktemp("cache"))
    running = start_server(
        replace(TEST_SETTINGS, model_repositories=(root,), response_cache=LocalCacheConfig(1 << 20))
    )
    yield running
    running.stop()


def calls(server: RunningServer, protocol: str, model: str, x: np.ndarray, **kw: Any) -> int:
    outputs = infer(server, protocol, model, {"X": x}, **kw)
    return int(outputs["CALLS"][0, 0])


def stats(server: RunningServer, model: str) -> dict[str, Any]:
    with client_for(server, "http") as client:
        document: dict[str, Any] = client.get_inference_statistics(model)["model_stats"][0]
    return document


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_repeated_request_is_answered_from_the_cache(
    server: RunningServer, protocol: str
) -> None:
    x = np.array([[1.0, 2.0]], np.float32) + (10 if protocol == "grpc" else 0)
    before = stats(server, "cached")
    first = calls(server, protocol, "cached", x)
    assert calls(server, protocol, "cached", x) == first  # the model did not run again
    assert calls(server, protocol, "cached", x + 1) > first  # other data: it runs
    outputs = infer(server, protocol, "cached", {"X": x})
    np.testing.assert_array_equal(outputs["Y"], x * 2)

    after = stats(server, "cached")
    counts = {
        field: after["inference_stats"][field]["count"] - before["inference_stats"][field]["count"]
        for field in ("cache_hit", "cache_miss", "success", "queue")
    }
    assert counts == {"cache_hit": 2, "cache_miss": 2, "success": 4, "queue": 4}
    # Hits run nothing: only the two misses count as inferences and executions.
    assert after["inference_count"] - before["inference_count"] == 2
    assert after["execution_count"] - before["execution_count"] == 2


def test_requests_for_fewer_outputs_share_the_entry(server: RunningServer) -> None:
    x = np.array([[5.0, 6.0]], np.float32)
    first = calls(server, "http", "cached", x)  # all outputs
    outputs = infer(server, "grpc", "cached", {"X": x}, outputs=["CALLS"])
    assert int(outputs["CALLS"][0, 0]) == first
    assert set(outputs) == {"CALLS"}
    # A python model answers only what was asked: an entry without Y cannot answer for Y.
    y = np.array([[6.0, 5.0]], np.float32)
    partial = calls(server, "http", "cached", y, outputs=["CALLS"])
    full = infer(server, "http", "cached", {"X": y})
    assert int(full["CALLS"][0, 0]) > partial
    assert calls(server, "http", "cached", y, outputs=["CALLS"]) == int(full["CALLS"][0, 0])


def test_own_parameters_are_part_of_the_key(server: RunningServer) -> None:
    x = np.array([[7.0, 8.0]], np.float32)
    plain = calls(server, "http", "cached", x)
    assert calls(server, "http", "cached", x, parameters={"mode": "other"}) != plain
    assert calls(server, "http", "cached", x, timeout=10_000_000) == plain  # scheduling only


def test_models_without_response_cache_run_every_request(server: RunningServer) -> None:
    x = np.array([[3.0, 4.0]], np.float32)
    assert calls(server, "http", "uncached", x) != calls(server, "http", "uncached", x)
    assert stats(server, "uncached")["inference_stats"]["cache_hit"]["count"] == 0


def test_an_ensemble_is_cached_as_a_whole(server: RunningServer) -> None:
    x = np.array([[9.0, 9.0]], np.float32)
    composing = stats(server, "uncached")["inference_count"]
    first = calls(server, "grpc", "cached_ensemble", x)
    assert calls(server, "http", "cached_ensemble", x) == first
    assert stats(server, "uncached")["inference_count"] == composing + 1
    assert stats(server, "cached_ensemble")["inference_stats"]["cache_hit"]["count"] >= 1


def test_failures_are_not_cached(server: RunningServer) -> None:
    x = np.ones(4, np.float32)
    for _ in range(2):
        fails(lambda: infer(server, "http", "raising", {"X": x}), "http", "internal")
    inference = stats(server, "raising")["inference_stats"]
    assert inference["cache_hit"]["count"] == 0
    assert inference["cache_miss"]["count"] == 2


def test_metrics_count_hits_and_misses_per_model(server: RunningServer) -> None:
    x = np.array([[11.0, 12.0]], np.float32)
    calls(server, "http", "cached", x)
    calls(server, "http", "cached", x)
    text = httpx.get(f"http://{server.http_url}/metrics").text
    samples = {
        (sample.name, sample.labels.get("model", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    document = stats(server, "cached")["inference_stats"]
    assert (
        samples[("nv_cache_num_hits_per_model_total", "cached")] == document["cache_hit"]["count"]
    )
    assert (
        samples[("nv_cache_num_misses_per_model_total", "cached")]
        == document["cache_miss"]["count"]
    )
    assert ("nv_cache_num_hits_per_model_total", "uncached") not in samples
    assert samples[("nv_cache_num_entries", "")] >= 2
    assert 0 < samples[("nv_cache_util", "")] < 1
    # The cache-wide gauges count every model's lookups.
    lookups = samples[("nv_cache_num_lookups", "")]
    assert lookups == samples[("nv_cache_num_hits", "")] + samples[("nv_cache_num_misses", "")]
    assert lookups >= document["cache_hit"]["count"] + document["cache_miss"]["count"]
    assert samples[("nv_cache_insertion_duration", "")] >= 0


def test_without_a_server_cache_nothing_is_cached(tmp_path: Path) -> None:
    running = start_server(replace(TEST_SETTINGS, model_repositories=(write_repository(tmp_path),)))
    try:
        x = np.array([[1.0, 2.0]], np.float32)
        assert calls(running, "http", "cached", x) != calls(running, "http", "cached", x)
        assert "nv_cache_num_entries" not in httpx.get(f"http://{running.http_url}/metrics").text
    finally:
        running.stop()
