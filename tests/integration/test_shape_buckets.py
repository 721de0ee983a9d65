"""Shape buckets through the real HTTP client: requests of different lengths share one batch."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import RunningServer
from tests.models import double_model, write_model

LENGTHS = (1, 3, 5, 7)


def config(delay_us: int = 5_000_000, /, **params: str) -> str:
    return f"""
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }}]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ -1 ] }}
]
dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: {delay_us} }}
""" + "".join(
        f'parameters {{ key: "inferd.{key}" value: {{ string_value: "{value}" }} }}\n'
        for key, value in params.items()
    )


@pytest.fixture
def server(tmp_path: Path, server_factory: Callable[..., RunningServer]) -> RunningServer:
    padded = {"pad_inputs": "INPUT0", "pad_outputs": "OUTPUT0:INPUT0"}
    write_model(tmp_path, "padded", double_model(), config(**padded))
    write_model(
        tmp_path, "bucketed", double_model(), config(**padded, pad_buckets="8,16", pad_value="-1")
    )
    # Without the setting the last length waits out the queue delay alone: keep it short.
    write_model(tmp_path, "plain", double_model(), config(500_000))
    write_model(tmp_path, "broken", double_model(), config(pad_inputs="INPUT0", pad_buckets="8,4"))
    return server_factory(model_repositories=(tmp_path,))


def infer(url: str, model: str, length: int) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, length], "FP32")
        tensor.set_data_from_numpy(np.arange(1, length + 1, dtype=np.float32)[None])
        result = client.infer(model, [tensor])
        return {name: result.as_numpy(name) for name in ("OUTPUT0", "OUTPUT1")}
    finally:
        client.close()


def infer_concurrently(url: str, model: str) -> list[dict[str, np.ndarray]]:
    with ThreadPoolExecutor(len(LENGTHS)) as pool:
        return list(pool.map(lambda n: infer(url, model, n), LENGTHS))


def statistics(url: str, model: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url)
    try:
        stats: dict[str, Any] = client.get_inference_statistics(model)["model_stats"][0]
        return stats
    finally:
        client.close()


def expected(length: int) -> np.ndarray:
    return np.arange(1, length + 1, dtype=np.float32)[None] * 2


def test_different_lengths_run_as_one_batch_and_each_gets_its_own_result(
    server: RunningServer,
) -> None:
    results = infer_concurrently(server.http_url, "padded")
    for length, result in zip(LENGTHS, results, strict=True):
        np.testing.assert_array_equal(result["OUTPUT0"], expected(length))
        assert result["OUTPUT1"].shape == (1, max(LENGTHS))  # not listed: as the model made it
    stats = statistics(server.http_url, "padded")
    assert (stats["inference_count"], stats["execution_count"]) == (4, 1)


def test_without_the_setting_different_lengths_do_not_share_a_batch(
    server: RunningServer,
) -> None:
    results = infer_concurrently(server.http_url, "plain")
    for length, result in zip(LENGTHS, results, strict=True):
        np.testing.assert_array_equal(result["OUTPUT0"], expected(length))
    stats = statistics(server.http_url, "plain")
    assert stats["inference_count"] == 4
    assert stats["execution_count"] > 1


def test_buckets_round_the_padded_length_up_with_the_pad_value(server: RunningServer) -> None:
    results = infer_concurrently(server.http_url, "bucketed")
    for length, result in zip(LENGTHS, results, strict=True):
        np.testing.assert_array_equal(result["OUTPUT0"], expected(length))
        seen = result["OUTPUT1"]  # what the model saw: padded to the bucket of 8 with -1
        assert seen.shape == (1, 8)
        np.testing.assert_array_equal(seen[:, :length], expected(length) / 2)
        assert (seen[:, length:] == -1).all()
    assert statistics(server.http_url, "bucketed")["execution_count"] == 1


def test_an_invalid_setting_fails_the_load_with_its_reason(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        index = {m["name"]: m for m in client.get_model_repository_index()}
    finally:
        client.close()
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "inferd.pad_buckets" in index["broken"]["reason"]
    assert index["padded"]["state"] == "READY"
