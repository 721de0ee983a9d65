"""KServe's V1 protocol (`/v1/models`, `:predict`) on the bundled examples, over both HTTP
stacks, with a real HTTP client: rows in, predictions out, KServe's errors."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import EXAMPLES, RunningServer


def url(server: RunningServer, path: str) -> str:
    return f"http://{server.http_url}{path}"


def predict(server: RunningServer, model: str, body: Any) -> httpx.Response:
    return httpx.post(url(server, f"/v1/models/{model}:predict"), json=body, timeout=30)


def test_models_and_their_readiness(stacks_server: RunningServer) -> None:
    listed = httpx.get(url(stacks_server, "/v1/models")).json()
    assert listed == {"models": ["bytes_identity", "digits", "identity_fp32", "simple"]}
    ready = httpx.get(url(stacks_server, "/v1/models/simple"))
    assert (ready.status_code, ready.json()) == (200, {"name": "simple", "ready": True})
    missing = httpx.get(url(stacks_server, "/v1/models/nope"))
    assert missing.status_code == 404
    assert missing.json() == {"error": "Model with name nope does not exist."}


def test_rows_of_a_single_input_model_give_a_prediction_each(stacks_server: RunningServer) -> None:
    rows = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    answer = predict(stacks_server, "digits", {"instances": rows.tolist()})
    assert answer.status_code == 200
    predicted = np.array(answer.json()["predictions"], np.float32)
    # The same as the v2 protocol answers for the same tensor.
    client = httpclient.InferenceServerClient(stacks_server.http_url)
    tensor = httpclient.InferInput("input", [3, 64], "FP32")
    tensor.set_data_from_numpy(rows)
    expected = client.infer("digits", [tensor]).as_numpy("probabilities")
    client.close()
    np.testing.assert_allclose(predicted, expected, rtol=1e-6)
    # "inputs" is taken as the same rows, as KServe's runtimes take it.
    again = predict(stacks_server, "digits", {"inputs": rows.tolist()})
    assert again.json() == answer.json()


def test_rows_of_named_inputs_give_a_row_of_named_outputs(stacks_server: RunningServer) -> None:
    a, b = list(range(16)), [2] * 16
    answer = predict(stacks_server, "simple", {"instances": [{"INPUT0": a, "INPUT1": b}] * 2})
    row = {"OUTPUT0": [x + 2 for x in a], "OUTPUT1": [x - 2 for x in a]}
    assert answer.json() == {"predictions": [row, row]}


def test_bytes_rows_are_text_or_b64(stacks_server: RunningServer) -> None:
    encoded = base64.b64encode(b"raw").decode()
    answer = predict(stacks_server, "bytes_identity", {"instances": [["text"], [{"b64": encoded}]]})
    assert answer.json() == {"predictions": [["text"], ["raw"]]}


BAD: dict[str, tuple[Callable[[RunningServer], httpx.Response], int, str]] = {
    "no instances": (lambda s: predict(s, "digits", {}), 400, '"instances"'),
    "empty instances": (lambda s: predict(s, "digits", {"instances": []}), 400, "non-empty"),
    "not an object": (lambda s: predict(s, "digits", [1]), 400, "JSON object"),
    "wrong row size": (
        lambda s: predict(s, "digits", {"instances": [[1, 2]]}),
        400,
        "unexpected shape for input 'input'",
    ),
    "rows of a multi-input model": (
        lambda s: predict(s, "simple", {"instances": [[1]]}),
        400,
        "each instance must be an object",
    ),
    "rows naming other inputs": (
        lambda s: predict(
            s,
            "simple",
            {"instances": [{"INPUT0": [0] * 16, "INPUT1": [0] * 16}, {"INPUT0": [0] * 16}]},
        ),
        400,
        "instance 1 names other inputs than instance 0",
    ),
    "an unknown input": (
        lambda s: predict(s, "digits", {"instances": [{"pixels": [0] * 64}]}),
        400,
        "no input named 'pixels'",
    ),
    "a bad b64": (
        lambda s: predict(s, "bytes_identity", {"instances": [[{"b64": "%%%"}]]}),
        400,
        "not base64",
    ),
    "an unknown model": (
        lambda s: predict(s, "nope", {"instances": [[1]]}),
        404,
        "Model with name nope does not exist.",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_an_error_in_kserves_format(
    stacks_server: RunningServer, case: str
) -> None:
    call, status, message = BAD[case]
    answer = call(stacks_server)
    assert answer.status_code == status
    assert list(answer.json()) == ["error"] and message in answer.json()["error"]


def test_a_model_that_is_not_ready_is_503(server_factory: Callable[..., RunningServer]) -> None:
    # Explicit model control with nothing loaded: the models are known, none is ready.
    server = server_factory(model_repositories=(EXAMPLES,), model_control_mode="explicit")
    for answer in (
        httpx.get(url(server, "/v1/models/simple")),
        predict(server, "simple", {"instances": [{"INPUT0": [0] * 16, "INPUT1": [0] * 16}]}),
    ):
        assert answer.status_code == 503
        assert answer.json() == {"error": "Model with name simple is not ready."}
    assert httpx.get(url(server, "/v1/models")).json() == {"models": []}
