"""Cross-origin requests on the HTTP port (MLServer's cors_settings), over inferd's own HTTP/1.1
server and over uvicorn, against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from inferd.server.cors import CorsSettings
from tests.conftest import EXAMPLES, TEST_SETTINGS, RunningServer, start_server

ORIGIN = "https://app.example"
INFER = "/v2/models/simple/infer"
BODY = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
    ]
}


@pytest.fixture(scope="module", params=["inferd", "uvicorn"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    cors = CorsSettings(
        allow_origins=(ORIGIN,), allow_methods=("GET", "POST"), allow_headers=("content-type",)
    )
    running = start_server(
        replace(
            TEST_SETTINGS,
            model_repositories=(EXAMPLES,),
            http_stack=request.param,
            http_cors=cors,
        )
    )
    yield running
    running.stop()


def test_a_preflight_is_answered_with_what_may_cross(server: RunningServer) -> None:
    preflight = httpx.options(
        f"http://{server.http_url}{INFER}",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-max-age"] == "600"  # MLServer's default


def test_an_inference_from_an_allowed_origin_says_it_may_be_read(server: RunningServer) -> None:
    answer = httpx.post(
        f"http://{server.http_url}{INFER}", json=BODY, headers={"origin": ORIGIN}, timeout=10
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs["OUTPUT0"] == [i + 1 for i in range(16)]


def test_other_origins_get_no_cors_headers(server: RunningServer) -> None:
    url = f"http://{server.http_url}{INFER}"
    other = httpx.post(url, json=BODY, headers={"origin": "https://elsewhere.example"}, timeout=10)
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    refused = httpx.options(
        url,
        headers={"origin": "https://elsewhere.example", "access-control-request-method": "POST"},
        timeout=10,
    )
    assert refused.status_code == 400


def test_without_cors_settings_no_answer_has_cors_headers(examples_server: RunningServer) -> None:
    answer = httpx.post(
        f"http://{examples_server.http_url}{INFER}",
        json=BODY,
        headers={"origin": ORIGIN},
        timeout=10,
    )
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
