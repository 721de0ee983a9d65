"""Triton's model loading API in python models (pb_utils.load_model, unload_model,
is_model_ready) on a real server, driven through tritonclient: from initialize() at start-up
(with one loader slot, which the loading model holds), from execute() and from finalize()."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import RunningServer
from tests.integration.test_model_control import IDENTITY_CONFIG
from tests.models import identity_model, write_model
from tests.python_models import MANAGER, manager_config, write_python_model
from tests.waiting import wait_for

Factory = Callable[..., RunningServer]

ONNX = {"platform": "onnxruntime_onnx", "max_batch_size": 4}
IO = {
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
}
DOUBLER = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * 2
            )])
            for r in requests
        ]
"""
NOT_EXPLICIT = "explicit model load / unload is not allowed if polling is enabled"


def run(client: httpclient.InferenceServerClient, function: str, *args: Any, **kwargs: Any) -> Any:
    """Call pb_utils.<function> inside the manager model; its value, or its error text."""
    op = httpclient.InferInput("OP", [1], "BYTES")
    op.set_data_from_numpy(np.array([json.dumps([function, args, kwargs]).encode()], np.object_))
    answer = client.infer("manager", [op]).as_numpy("RESULT")
    assert answer is not None
    result = json.loads(answer[0])
    return result.get("value", result.get("error"))


def identity_works(client: httpclient.InferenceServerClient, model: str) -> bool:
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    out = client.infer(model, [tensor]).as_numpy("OUTPUT0")
    return out is not None and out.tolist() == [[0, 1, 2, 3]]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "target", identity_model(), IDENTITY_CONFIG)
    write_python_model(
        tmp_path,
        "manager",
        MANAGER,
        manager_config(load_on_init="target", unload_on_finalize="target"),
    )
    return tmp_path


@pytest.fixture(params=["thread", "process"])
def client(
    repo: Path, server_factory: Factory, request: pytest.FixtureRequest
) -> Iterator[httpclient.InferenceServerClient]:
    """Explicit mode, only the manager asked for, one loader slot: the manager loads the
    target from its initialize() while it holds that slot. The manager runs in the server's
    process, then in a stub process."""
    server = server_factory(
        model_repositories=(repo,),
        model_control_mode="explicit",
        load_models=("manager",),
        model_load_thread_count=1,
        python_isolation=request.param,
    )
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


def test_initialize_loads_a_model_and_may_not_call_it_or_load_itself(
    client: httpclient.InferenceServerClient,
) -> None:
    notes = run(client, "notes")
    assert notes["ready_before"] == {"value": False}
    assert notes["load"] == {"value": None}
    assert notes["ready_after"] == {"value": True}
    # As Triton: models are called (BLS) during execute() only.
    assert notes["bls"] == {
        "error": "TritonModelException: BLS is only supported during the 'execute' function."
    }
    assert "cannot load or unload itself during initialize()" in notes["load_itself"]["error"]
    assert client.is_model_ready("target")
    assert identity_works(client, "target")


def test_execute_unloads_loads_and_checks_models(client: httpclient.InferenceServerClient) -> None:
    assert run(client, "unload_model", "target") is None
    assert not client.is_model_ready("target")
    assert run(client, "is_model_ready", "target") is False
    assert run(client, "load_model", model_name="target") is None
    assert run(client, "is_model_ready", "target", model_version="1") is True
    assert run(client, "is_model_ready", "target", "2") is False
    assert run(client, "is_model_ready", "no_such_model") is False
    assert identity_works(client, "target")


def test_execute_loads_a_model_from_config_and_files(
    client: httpclient.InferenceServerClient,
) -> None:
    config = json.dumps({"backend": "python", "max_batch_size": 0, **IO})
    assert run(client, "load_model", "target", json.dumps({**ONNX, **IO})) is None  # no pbtxt
    assert identity_works(client, "target")
    files = {"file:1/model.py": DOUBLER, "ignored": "a key without file: means nothing"}
    assert run(client, "load_model", "uploaded", config=config, files=files) is None
    tensor = httpclient.InferInput("INPUT0", [4], "FP32")
    tensor.set_data_from_numpy(np.ones(4, dtype=np.float32))
    assert client.infer("uploaded", [tensor]).as_numpy("OUTPUT0").tolist() == [2, 2, 2, 2]
    broken = run(client, "load_model", "broken", config=config, files={"file:1/model.py": "oops("})
    assert broken.startswith("TritonModelException: Failed to load model: ")
    assert "SyntaxError" in broken
    assert not client.is_model_ready("broken")


def test_bad_calls_raise_tritons_errors(client: httpclient.InferenceServerClient) -> None:
    missing = run(client, "load_model", "no_such_model")
    assert missing.startswith("TritonModelException: Failed to load model: ")
    assert "no_such_model" in missing
    version = run(client, "is_model_ready", "target", "x")
    assert version.startswith("TritonModelException: Failed to check model readiness: ")
    assert "version should be an integral value > 0" in version
    assert run(client, "is_model_ready", "target", 1) == (
        "TypeError: is_model_ready(): model_version must be a str, not int"
    )
    assert (
        run(client, "load_model", "x", config="{}", files={"file:1/model.py": 7})
        == "TypeError: Object of type 'int' is not an instance of 'bytes'"
    )
    assert run(client, "unload_model", "no_such_model") is None  # nothing to unload: as Triton
    assert client.is_model_ready("target")


def test_a_model_unloads_itself_after_execute_returns(
    client: httpclient.InferenceServerClient,
) -> None:
    assert run(client, "unload_model", "manager") is None  # no deadlock: it goes afterwards
    wait_for(lambda: not client.is_model_ready("manager"), 30)
    wait_for(lambda: not client.is_model_ready("target"), 30)  # by its finalize()


def test_finalize_unloads_a_model(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("target")
    client.unload_model("manager")  # returns before finalize() runs, as in Triton 2.51
    wait_for(lambda: not client.is_model_ready("target"), 30)


def test_other_modes_refuse_with_tritons_message(repo: Path, server_factory: Factory) -> None:
    (repo / "manager" / "config.pbtxt").write_text(manager_config())
    server = server_factory(model_repositories=(repo,), model_control_mode="none")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        refused = run(client, "unload_model", "target")
        assert refused.startswith("TritonModelException: Failed to unload model: ")
        assert NOT_EXPLICIT in refused
        assert NOT_EXPLICIT in run(client, "load_model", "target")
        assert client.is_model_ready("target")
    finally:
        client.close()


def test_an_ensemble_made_of_the_loading_model_follows_it_without_a_deadlock(
    tmp_path: Path, server_factory: Factory
) -> None:
    write_python_model(tmp_path, "manager", MANAGER, manager_config(load_on_init="ens"))
    (tmp_path / "ens" / "1").mkdir(parents=True)
    (tmp_path / "ens" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 0\n'
        'input [{ name: "OP" data_type: TYPE_STRING dims: [ 1 ] }]\n'
        'output [{ name: "RESULT" data_type: TYPE_STRING dims: [ 1 ] }]\n'
        'ensemble_scheduling { step [{ model_name: "manager" model_version: -1 '
        'input_map { key: "OP" value: "OP" } output_map { key: "RESULT" value: "RESULT" } }] }\n'
    )
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", load_models=("manager",)
    )
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        # From initialize() the manager is still loading: the ensemble cannot serve yet...
        assert "'manager': LOADING" in run(client, "notes")["load"]["error"]
        # ...and serves once it has loaded.
        wait_for(lambda: client.is_model_ready("ens"), 30)
    finally:
        client.close()


def test_models_that_load_each_other_from_initialize_are_refused_not_stuck(
    tmp_path: Path, server_factory: Factory
) -> None:
    write_python_model(tmp_path, "first", MANAGER, manager_config(load_on_init="second"))
    write_python_model(tmp_path, "second", MANAGER, manager_config(load_on_init="first"))
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", load_models=("first",)
    )
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        # first's initialize() loads second, whose initialize() asks for first: refused.
        assert client.is_model_ready("first") and client.is_model_ready("second")
        op = httpclient.InferInput("OP", [1], "BYTES")
        op.set_data_from_numpy(np.array([json.dumps(["notes", [], {}]).encode()], np.object_))
        answer = client.infer("second", [op]).as_numpy("RESULT")
        assert answer is not None
        refused = json.loads(answer[0])["value"]["load"]["error"]
        assert "model 'second' asked for it while 'first' waits for 'second'" in refused
    finally:
        client.close()
