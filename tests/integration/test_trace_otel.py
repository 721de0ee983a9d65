"""Triton's OpenTelemetry trace mode: spans as Triton makes them (InferRequest -> model ->
compute, an ensemble's steps under it), exported over OTLP/HTTP to a collector stand-in, with
the client's W3C trace context continued; requests with one are traced whatever the rate."""

from __future__ import annotations

import json
import queue
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from inferd.server.otel_trace import OtelSettings
from inferd.server.trace_settings import TraceLevel, TraceSetting
from tests.conftest import EXAMPLES, TEST_SETTINGS, RunningServer, start_server
from tests.integration.test_trace import twice_repository
from tests.otel_collector import Collector
from tests.python_models import BLS_TRACE, BLS_TRACE_CONFIG, write_python_model
from tests.wire import client_for, infer

Factory = Callable[..., RunningServer]
A = np.arange(16, dtype=np.int32).reshape(1, 16)
SIMPLE = {"INPUT0": A, "INPUT1": np.ones((1, 16), dtype=np.int32)}
TRACE_ID = "0af7651916cd43dd8448eb211c12666c"
PARENT_SPAN = "b7ad6b7169242424"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
ROOT_EVENTS = {
    "http": ["HTTP_RECV_START", "HTTP_RECV_END", "INFER_RESPONSE_COMPLETE", "HTTP_SEND_START",
             "HTTP_SEND_END"],
    "grpc": ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "INFER_RESPONSE_COMPLETE",
             "GRPC_SEND_START", "GRPC_SEND_END"],
}  # fmt: skip
MODEL_EVENTS = ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
COMPUTE_EVENTS = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def otel_server(
    factory: Factory, collector: Collector, repo: Path = EXAMPLES, rate: int = 1, **more: Any
) -> RunningServer:
    return factory(
        **more,
        model_repositories=(repo,),
        trace=TraceSetting(TraceLevel.TIMESTAMPS, rate=rate, mode="opentelemetry"),
        trace_otel=OtelSettings(
            url=collector.url,
            resource=(("service.name", "test_inferd"), ("test.key", "test.value")),
            bsp=(("bsp_schedule_delay", 20),),
        ),
    )


def tree(spans: list[Any]) -> dict[str, list[str]]:
    """Parent span name -> its children's names, sorted."""
    names = {s.span_id: s.name for s in spans}
    children: dict[str, list[str]] = {}
    for span in spans:
        if span.parent_span_id in names:
            children.setdefault(names[span.parent_span_id], []).append(span.name)
    return {parent: sorted(kids) for parent, kids in children.items()}


def events(span: Any) -> list[str]:
    return [e.name for e in span.events]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_request_makes_tritons_three_spans(
    server_factory: Factory, collector: Collector, protocol: str
) -> None:
    server = otel_server(server_factory, collector)
    infer(server, protocol, "simple", SIMPLE, request_id="r1")
    found = collector.wait_for(3)
    assert len(found) == 3
    resource = found[0][0]
    assert (resource["service.name"], resource["test.key"]) == ("test_inferd", "test.value")
    spans = {s.name: s for _, s in found}
    assert tree(list(spans.values())) == {"InferRequest": ["simple"], "simple": ["compute"]}
    assert spans["InferRequest"].parent_span_id == b""  # no context came with the request
    assert events(spans["InferRequest"]) == ROOT_EVENTS[protocol]
    assert events(spans["simple"]) == MODEL_EVENTS
    assert events(spans["compute"]) == COMPUTE_EVENTS
    attributes = {a.key: a.value for a in spans["simple"].attributes}
    assert attributes["triton.model_name"].string_value == "simple"
    assert attributes["triton.model_version"].int_value == 1
    assert attributes["triton.request_id"].string_value == "r1"
    assert attributes["triton.trace_parent_id"].int_value == 0
    # Nested in time too, on the wall clock.
    root, model, compute = spans["InferRequest"], spans["simple"], spans["compute"]
    assert root.start_time_unix_nano <= model.start_time_unix_nano
    assert model.start_time_unix_nano <= compute.start_time_unix_nano
    assert compute.end_time_unix_nano <= model.end_time_unix_nano <= root.end_time_unix_nano
    assert abs(root.start_time_unix_nano / 1e9 - time.time()) < 60


@pytest.mark.parametrize("stacks", ["inferd", "alt"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_client_trace_context_is_continued_whatever_the_rate(
    server_factory: Factory, collector: Collector, protocol: str, stacks: str
) -> None:
    alt: dict[str, Any] = (
        {"http_stack": "uvicorn", "grpc_stack": "grpcio"} if stacks == "alt" else {}
    )
    server = otel_server(server_factory, collector, rate=0, **alt)  # only propagated contexts
    infer(server, protocol, "simple", SIMPLE)  # not traced
    # A fresh dict: tritonclient's HTTP client adds its own headers to the one it is given.
    infer(server, protocol, "simple", SIMPLE, headers={"traceparent": TRACEPARENT})
    found = [s for _, s in collector.wait_for(3)]
    assert len(found) == 3
    assert {s.trace_id.hex() for s in found} == {TRACE_ID}
    (root,) = [s for s in found if s.name == "InferRequest"]
    assert root.parent_span_id.hex() == PARENT_SPAN
    settings = client_for(server, "http").get_trace_settings()
    assert settings["trace_mode"] == "opentelemetry"


def test_an_ensembles_steps_nest_under_it(
    server_factory: Factory, collector: Collector, tmp_path: Path
) -> None:
    repo = twice_repository(tmp_path / "repo")
    server = otel_server(server_factory, collector, repo)
    infer(server, "http", "twice", {"A": A, "B": np.ones((1, 16), dtype=np.int32)})
    found = [s for _, s in collector.wait_for(6)]
    assert len(found) == 6  # root, ensemble, two steps with a compute span each
    assert tree(found) == {
        "InferRequest": ["twice"],
        "twice": ["simple", "simple"],
        "simple": ["compute", "compute"],
    }


def test_a_streamed_request_continues_the_streams_context(
    server_factory: Factory, collector: Collector
) -> None:
    server = otel_server(server_factory, collector, rate=0)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(
        lambda result, error: answers.put(error or result), headers={"traceparent": TRACEPARENT}
    )
    tensors = []
    for name, array in SIMPLE.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    client.async_stream_infer("simple", tensors)
    assert answers.get(timeout=20).as_numpy("OUTPUT0") is not None
    client.stop_stream()
    client.close()
    found = [s for _, s in collector.wait_for(3)]
    assert {s.trace_id.hex() for s in found} == {TRACE_ID}
    (root,) = [s for s in found if s.name == "InferRequest"]
    assert events(root)[:2] == ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END"]


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_bls_calls_nest_under_the_calling_model_which_sees_its_context(
    server_factory: Factory, collector: Collector, tmp_path: Path, isolation: str
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    write_python_model(repo, "bls_trace", BLS_TRACE, BLS_TRACE_CONFIG)
    server = otel_server(server_factory, collector, repo, python_isolation=isolation)
    out = infer(server, "http", "bls_trace", SIMPLE, headers={"traceparent": TRACEPARENT})
    found = [s for _, s in collector.wait_for(5)]
    assert len(found) == 5  # root, the BLS model and its compute, simple and its compute
    assert tree(found) == {
        "InferRequest": ["bls_trace"],
        "bls_trace": ["compute", "simple"],
        "simple": ["compute"],
    }
    (model_span,) = [s for s in found if s.name == "bls_trace"]
    context = json.loads(out["CONTEXT"][0])
    assert context == {"traceparent": f"00-{TRACE_ID}-{model_span.span_id.hex()}-01"}


def test_a_stalled_collector_does_not_hold_the_servers_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The collector takes the connection and never answers: the last spans are dropped,
    with a warning, once the exporter's close budget is spent."""
    stalled = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{stalled.getsockname()[1]}/v1/traces"
    server = start_server(
        replace(
            TEST_SETTINGS,
            model_repositories=(EXAMPLES,),
            trace=TraceSetting(TraceLevel.TIMESTAMPS, rate=1, mode="opentelemetry"),
            trace_otel=OtelSettings(url=url, bsp=(("bsp_schedule_delay", 20),)),
        )
    )
    try:
        infer(server, "http", "simple", SIMPLE)
    finally:
        server.stop()
        stalled.close()
    assert any(
        "did not take the last spans" in r.getMessage() and url in r.getMessage()
        for r in caplog.records
    )
