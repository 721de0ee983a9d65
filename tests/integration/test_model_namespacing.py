"""--model-namespacing=true: models of the same name in two repositories, served by a real
server and driven by the real tritonclient over HTTP and gRPC. Each repository's ensembles run
their own repository's model; a request by the shared name is refused in Triton's words;
explicit load/unload act on every repository; poll mode follows models that come and go;
metrics name the repository. (Observed in tritonserver 2.51 with the same layout.)"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from inferd.server.cache_config import LocalCacheConfig
from tests.conftest import RunningServer
from tests.python_models import write_python_model
from tests.waiting import wait_for
from tests.wire import PROTOCOLS, client_for, fails, infer

Factory = Callable[..., RunningServer]

# OUTPUT0 = INPUT0 + ADD: each repository's copy adds its own number.
ADDER = """
import numpy as np
import triton_python_backend_utils as pb_utils

ADD = {add}


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([
                pb_utils.Tensor(
                    "OUTPUT0",
                    pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + np.float32(ADD),
                )
            ])
            for r in requests
        ]
"""

ADDER_CONFIG = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
"""

# One step: Y = <model>(X).
ENSEMBLE = """
platform: "ensemble"
input [{{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }}]
output [{{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }}]
ensemble_scheduling {{ step [{{
  model_name: "{model}" model_version: -1
  input_map {{ key: "INPUT0" value: "X" }} output_map {{ key: "OUTPUT0" value: "Y" }}
}}] }}
"""

AMBIGUOUS = (
    "There are 2 identifiers of model 'm' in global map, model namespace must be provided to "
    "resolve ambiguity."
)
X = np.array([1, 2], dtype=np.float32)


def write_adder(repo: Path, name: str, add: int) -> None:
    write_python_model(repo, name, ADDER.format(add=add), ADDER_CONFIG)


def write_ensemble(repo: Path, name: str, step_model: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(ENSEMBLE.format(model=step_model))


def two_repositories(tmp_path: Path) -> tuple[Path, Path]:
    """a: m (+1), only_a (+2), ens_a (m), ens_far (only_b, which only b holds);
    b: m (+100), only_b (+200), ens_b (m)."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_adder(a, "m", 1)
    write_adder(a, "only_a", 2)
    write_ensemble(a, "ens_a", "m")
    write_ensemble(a, "ens_far", "only_b")
    write_adder(b, "m", 100)
    write_adder(b, "only_b", 200)
    write_ensemble(b, "ens_b", "m")
    return a, b


def add(server: RunningServer, model: str, protocol: str = "http") -> list[float]:
    """What `model` adds to X."""
    inputs = {"X": X} if model.startswith("ens") else {"INPUT0": X}
    [output] = infer(server, protocol, model, inputs).values()
    return [float(v) for v in output - X]


def index(server: RunningServer) -> list[tuple[str, str]]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return [(e["name"], e.get("state", "")) for e in client.get_model_repository_index()]
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_repository_runs_its_own_models(
    tmp_path: Path, server_factory: Factory, protocol: str
) -> None:
    a, b = two_repositories(tmp_path)
    server = server_factory(model_repositories=(a, b), model_namespacing=True)
    assert add(server, "ens_a", protocol) == [1, 1]
    assert add(server, "ens_b", protocol) == [100, 100]
    # A step's model that its own repository lacks is the only one of that name anywhere.
    assert add(server, "ens_far", protocol) == [200, 200]
    assert add(server, "only_a", protocol) == [2, 2]
    assert add(server, "only_b", protocol) == [200, 200]
    client = client_for(server, protocol)
    try:
        assert fails(lambda: add(server, "m", protocol), protocol, "invalid") == AMBIGUOUS
        assert fails(lambda: client.get_model_metadata("m"), protocol, "invalid") == AMBIGUOUS
        assert fails(lambda: client.get_model_config("m"), protocol, "invalid") == AMBIGUOUS
        assert client.is_model_ready("m") is False
        assert client.is_server_ready()
        message = fails(lambda: client.get_inference_statistics("m"), protocol, "invalid")
        assert message == "requested model 'm' is not available"
    finally:
        client.close()


def test_index_statistics_and_metrics_name_both(tmp_path: Path, server_factory: Factory) -> None:
    a, b = two_repositories(tmp_path)
    server = server_factory(model_repositories=(a, b), model_namespacing=True)
    assert index(server).count(("m", "READY")) == 2
    add(server, "ens_a")
    add(server, "ens_b")
    add(server, "ens_b")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics()["model_stats"]
    finally:
        client.close()
    # Triton 2.51 fails this call with namespacing on; inferd lists each model.
    counts = sorted(s["inference_stats"]["success"]["count"] for s in stats if s["name"] == "m")
    assert counts == [1, 2]
    metrics = httpx.get(f"http://{server.http_url}/metrics").text
    assert f'nv_inference_request_success{{model="m",namespace="{a}",version="1"}} 1\n' in metrics
    assert f'nv_inference_request_success{{model="m",namespace="{b}",version="1"}} 2\n' in metrics


def test_explicit_load_and_unload_act_on_every_repository(
    tmp_path: Path, server_factory: Factory
) -> None:
    a, b = two_repositories(tmp_path)
    server = server_factory(
        model_repositories=(a, b),
        model_namespacing=True,
        model_control_mode="explicit",
        load_models=("ens_b",),
    )
    # The ensemble loads the model its step runs: its own repository's.
    assert ("m", "READY") in index(server)
    assert add(server, "m") == [100, 100]
    assert add(server, "ens_b") == [100, 100]
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("m")
        assert index(server).count(("m", "READY")) == 2
        assert fails(lambda: add(server, "m"), "http", "invalid") == AMBIGUOUS
        assert add(server, "ens_b") == [100, 100]
        client.unload_model("m")
        wait_for(lambda: index(server).count(("m", "UNAVAILABLE")) == 2)
        assert not client.is_model_ready("ens_b")
    finally:
        client.close()


def test_poll_mode_follows_models_that_come_and_go(tmp_path: Path, server_factory: Factory) -> None:
    a, b = two_repositories(tmp_path)
    server = server_factory(
        model_repositories=(a, b),
        model_namespacing=True,
        model_control_mode="poll",
        repository_poll_secs=0.1,
    )
    shutil.rmtree(b / "m")
    wait_for(lambda: [name for name, _ in index(server)].count("m") == 1)  # b's is gone
    # b's ensemble now runs the only 'm' left, as Triton's does.
    assert add(server, "m") == [1, 1]
    assert add(server, "ens_b") == [1, 1]
    write_adder(b, "m", 300)
    wait_for(lambda: index(server).count(("m", "READY")) == 2)
    assert add(server, "ens_b") == [300, 300]
    assert add(server, "ens_a") == [1, 1]


def test_the_response_cache_tells_the_repositories_apart(
    tmp_path: Path, server_factory: Factory
) -> None:
    a, b = two_repositories(tmp_path)
    for repo in (a, b):
        config = repo / "m" / "config.pbtxt"
        config.write_text(config.read_text() + "response_cache { enable: true }\n")
    server = server_factory(
        model_repositories=(a, b), model_namespacing=True, response_cache=LocalCacheConfig(1 << 20)
    )
    for _ in range(2):  # the second time from the cache
        assert add(server, "ens_a") == [1, 1]
        assert add(server, "ens_b") == [100, 100]
