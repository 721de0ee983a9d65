"""--rate-limit=execution_count on a real server: models sharing a resource never execute at
once, a model needing more than is available fails to load, and with the rate limiter off the
configs are accepted and ignored."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from inferd.server.rate_limit_settings import parse_rate_limit
from tests.conftest import RunningServer
from tests.python_models import write_python_model

# Appends "enter <model>" and "exit <model>" lines to one log shared by every model of the
# repository: each line is one O_APPEND write, so the file keeps the order they happened in.
RECORDER = """
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.log = os.path.join(os.path.dirname(args["model_repository"]), "executions.log")
        self.name = args["model_name"]

    def record(self, what):
        with open(self.log, "a") as log:
            log.write(f"{what} {self.name}\\n")

    def execute(self, requests):
        self.record("enter")
        time.sleep(0.005)  # widens the window in which an overlap would show
        self.record("exit")
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy())])
            for r in requests
        ]
"""


def recorder_config(count: int, resource_count: int, priority: int = 1) -> str:
    return f"""
backend: "python"
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}]
instance_group [
  {{
    count: {count}
    kind: KIND_CPU
    rate_limiter {{ resources [ {{ name: "R" count: {resource_count} }} ] priority: {priority} }}
  }}
]
"""


def write_repository(repo: Path) -> None:
    # Three instances of two models, all needing the one copy of R that --rate-limit-resource
    # gives; "greedy" needs two.
    write_python_model(repo, "first", RECORDER, recorder_config(count=2, resource_count=1))
    write_python_model(repo, "second", RECORDER, recorder_config(1, 1, priority=2))
    write_python_model(repo, "greedy", RECORDER, recorder_config(1, 2))


def infer(url: str, model: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("INPUT0", [4], "FP32")
        tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
        result: np.ndarray = client.infer(model, [tensor]).as_numpy("OUTPUT0")
        return result
    finally:
        client.close()


def test_models_sharing_a_resource_never_execute_at_once(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    write_repository(tmp_path)
    server = server_factory(
        model_repositories=(tmp_path,),
        rate_limit=parse_rate_limit("EXECUTION_COUNT", ["R:1"]),
    )
    url = server.http_url
    models = ["first", "second"] * 12
    with ThreadPoolExecutor(8) as pool:
        for result in pool.map(lambda model: infer(url, model), models):
            np.testing.assert_array_equal(result, np.arange(4, dtype=np.float32))
    lines = (tmp_path / "executions.log").read_text().splitlines()
    assert lines, "no execution was recorded"
    # Every "enter" is followed by the "exit" of the same model before anything else enters.
    pairs = list(zip(lines[0::2], lines[1::2], strict=True))
    for enter, exit_ in pairs:
        assert enter.startswith("enter ") and exit_ == "exit " + enter.removeprefix("enter ")
    executed = {enter.removeprefix("enter ") for enter, _ in pairs}
    assert executed == {"first", "second"}


def test_a_model_needing_more_than_available_fails_to_load_with_the_reason(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    write_repository(tmp_path)
    server = server_factory(
        model_repositories=(tmp_path,),
        rate_limit=parse_rate_limit("execution_count", ["R:1"]),
    )
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        index = {entry["name"]: entry for entry in client.get_model_repository_index()}
        assert not client.is_model_ready("greedy")
        assert client.is_model_ready("first") and client.is_model_ready("second")
    finally:
        client.close()
    assert index["greedy"]["state"] == "UNAVAILABLE"
    assert (
        'Resource count for "R" is limited to 1 which will prevent scheduling of one or more '
        "model instances, the minimum required count is 2"
    ) in index["greedy"]["reason"]


def test_with_the_rate_limiter_off_the_configs_are_accepted_and_ignored(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    write_repository(tmp_path)
    # The explicit count that makes "greedy" fail above is ignored too.
    server = server_factory(
        model_repositories=(tmp_path,), rate_limit=parse_rate_limit("off", ["R:1"])
    )
    for model in ("first", "second", "greedy"):
        np.testing.assert_array_equal(infer(server.http_url, model), np.arange(4, dtype=np.float32))
