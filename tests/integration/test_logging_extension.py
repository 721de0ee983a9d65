"""Triton's logging extension over both protocols, with tritonclient's own calls."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import httpx
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import EXAMPLES, TEST_SETTINGS, RunningServer, start_server
from tests.wire import PROTOCOLS, client_for, fails

DEFAULTS = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}


def settings(client: Any, protocol: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings as plain values, whichever protocol answered."""
    if changes is None:
        answer = client.get_log_settings(**({"as_json": True} if protocol == "grpc" else {}))
    else:
        kw = {"as_json": True} if protocol == "grpc" else {}
        answer = client.update_log_settings(changes, **kw)
    if protocol == "http":
        return dict(answer)
    return {k: next(iter(v.values())) for k, v in answer["settings"].items()}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """A server of its own: the settings are the process's, and stopping it gives the
    process's logging back as it was."""
    running = start_server(replace(TEST_SETTINGS, model_repositories=(EXAMPLES,)))
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def defaults(server: RunningServer) -> Iterator[None]:
    yield
    httpx.post(f"http://{server.http_url}/v2/logging", json=DEFAULTS | {"log_file": None})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_settings_are_read_and_changed(server: RunningServer, protocol: str) -> None:
    with client_for(server, protocol) as client:
        assert settings(client, protocol) == DEFAULTS
        changed = settings(client, protocol, {"log_info": False, "log_verbose_level": 2})
        assert changed == DEFAULTS | {"log_info": False, "log_verbose_level": 2}
        assert settings(client, protocol) == changed
        changed = settings(client, protocol, {"log_format": "ISO8601"})
        assert changed["log_format"] == "ISO8601" and changed["log_info"] is False


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_settings_are_refused(server: RunningServer, protocol: str) -> None:
    with client_for(server, protocol) as client:
        message = fails(
            lambda: client.update_log_settings({"log_file": "/var/log/inferd"}),
            protocol,
            "unsupported",
        )
        assert "log file location can not be updated through network protocol" in message
        message = fails(
            lambda: client.update_log_settings({"log_format": "xml"}), protocol, "invalid"
        )
        assert message == "invalid argument for log_format, got: xml"  # Triton 2.51's words
        assert settings(client, protocol) == DEFAULTS


def test_a_grpc_setting_of_another_kind_is_refused_in_tritons_words(server: RunningServer) -> None:
    """tritonclient sends each setting as its kind; another client may not."""
    request = service_pb2.LogSettingsRequest()
    request.settings["log_info"].uint32_param = 1
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.LogSettings(request)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "expect boolean for 'log_info'"


def test_http_bodies_that_are_not_settings(server: RunningServer) -> None:
    url = f"http://{server.http_url}/v2/logging"
    for body, says in (
        (b"[1]", "needs a JSON object body"),
        (b"{bad", "failed to parse the request JSON"),
        (b'{"log_info": "yes"}', "'log_info' must be a boolean"),
        (b'{"verbose": 1}', "unknown logging setting 'verbose'"),
    ):
        answer = httpx.post(url, content=body)
        assert answer.status_code == 400
        assert says in answer.json()["error"]


def test_logging_is_listed_as_an_extension(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert "logging" in client.get_server_metadata()["extensions"]
    finally:
        client.close()
