"""Triton's trace extension: settings over both protocols with tritonclient's own calls, and
the trace files that traced requests leave (the JSON that Triton's trace tools read)."""

from __future__ import annotations

import json
import queue
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from inferd.server.trace_settings import TraceLevel, TraceSetting
from tests.conftest import EXAMPLES, RunningServer
from tests.python_models import BLS_TRACE, BLS_TRACE_CONFIG, write_python_model
from tests.wire import PROTOCOLS, client_for, fails, infer

Factory = Callable[..., RunningServer]
A = np.arange(16, dtype=np.int32).reshape(1, 16)
SIMPLE = {"INPUT0": A, "INPUT1": np.ones((1, 16), dtype=np.int32)}
OFF = {
    "trace_level": ["OFF"],
    "trace_rate": "1000",
    "trace_count": "-1",
    "log_frequency": "0",
    "trace_file": "",
    "trace_mode": "triton",
}
# Where a request's timestamps must come, in order, on each front door.
ORDER = (
    "{read}_START",
    "{read}_END",
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
    "{send}_SEND_START",
    "{send}_SEND_END",
)
READ = {"http": ("HTTP_RECV", "HTTP"), "grpc": ("GRPC_WAITREAD", "GRPC")}


def settings(server: RunningServer, protocol: str, model: str = "", **update: Any) -> Any:
    """The settings as the client returns them (HTTP: a dict; gRPC: as JSON, made a dict)."""
    client = client_for(server, protocol)
    kw: dict[str, Any] = {"model_name": model or None}
    if protocol == "grpc":
        kw["as_json"] = True
    if update:
        answer = client.update_trace_settings(settings=update, **kw)
    else:
        answer = client.get_trace_settings(**kw)
    if protocol == "http":
        return answer
    values = {k: v.get("value", []) for k, v in answer["settings"].items()}
    return {k: v if k == "trace_level" else v[0] for k, v in values.items()}


def traces(path: Path, count: int = 1) -> dict[int, dict[str, Any]]:
    """The traces in a trace file, by id: header fields, timestamps by name, tensors. Waits
    for `count` of them: a trace is written just after its answer is sent."""
    deadline = time.monotonic() + 10
    while True:
        try:
            found = _parse(path)
        except (OSError, ValueError):  # not there yet, or caught mid-write
            found = {}
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def _parse(path: Path) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for entry in json.loads(path.read_text()):
        trace = found.setdefault(entry["id"], {"timestamps": {}, "tensors": []})
        if "timestamps" in entry:
            for stamp in entry["timestamps"]:
                trace["timestamps"][stamp["name"]] = stamp["ns"]
        elif "tensor" in entry:
            trace["tensors"].append((entry["activity"], entry["tensor"]))
        else:
            trace.update(entry)
    return found


def traced_server(factory: Factory, tmp_path: Path, **trace: Any) -> RunningServer:
    setting = TraceSetting(file=str(tmp_path / "trace.json"), **trace)
    return factory(model_repositories=(EXAMPLES,), trace=setting)


def test_tracing_is_off_by_default(server_factory: Factory) -> None:
    server = server_factory(model_repositories=(EXAMPLES,))
    for protocol in PROTOCOLS:
        assert settings(server, protocol) == OFF
        assert settings(server, protocol, "simple") == OFF
    meta = client_for(server, "http").get_server_metadata()
    assert "trace" in meta["extensions"]
    # Turning tracing on needs a file, which only the command line can give.
    error = fails(lambda: settings(server, "http", trace_level=["TIMESTAMPS"]), "http", "invalid")
    assert error == "Attempting to set invalid trace setting :trace file name is not given"


@pytest.mark.parametrize("stacks", ["inferd", "alt"])
def test_requests_leave_ordered_timestamps(
    server_factory: Factory, tmp_path: Path, stacks: str
) -> None:
    alt = {"http_stack": "uvicorn", "grpc_stack": "grpcio"} if stacks == "alt" else {}
    setting = TraceSetting(TraceLevel.TIMESTAMPS, rate=1, file=str(tmp_path / "trace.json"))
    server = server_factory(model_repositories=(EXAMPLES,), trace=setting, **alt)
    for protocol in PROTOCOLS:
        infer(server, protocol, "simple", SIMPLE, request_id=f"{protocol}-1")
    found = traces(tmp_path / "trace.json", 2)  # valid JSON while the server runs
    assert len(found) == 2
    by_request = {t["request_id"]: t for t in found.values()}
    for protocol in PROTOCOLS:
        trace = by_request[f"{protocol}-1"]
        assert (trace["model_name"], trace["model_version"]) == ("simple", 1)
        read, send = READ[protocol]
        names = [n.format(read=read, send=send) for n in ORDER]
        stamps = trace["timestamps"]
        assert set(names) <= set(stamps)
        times = [stamps[n] for n in names]
        assert times == sorted(times), dict(zip(names, times, strict=True))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_settings_layer_per_model_over_global(
    server_factory: Factory, tmp_path: Path, protocol: str
) -> None:
    server = traced_server(server_factory, tmp_path, level=TraceLevel.TIMESTAMPS, rate=10)
    file = str(tmp_path / "trace.json")
    start = {**OFF, "trace_level": ["TIMESTAMPS"], "trace_rate": "10", "trace_file": file}
    assert settings(server, protocol) == start
    model = settings(server, protocol, "simple", trace_rate="3", trace_level=["TENSORS"])
    assert model == {**start, "trace_rate": "3", "trace_level": ["TENSORS"]}
    # The model follows the global setting where it sets nothing of its own.
    changed = settings(server, protocol, log_frequency="5", trace_rate="7")
    assert changed == {**start, "log_frequency": "5", "trace_rate": "7"}
    assert settings(server, protocol, "simple") == {**model, "log_frequency": "5"}
    assert settings(server, protocol, "identity_fp32") == changed
    # Clearing a model's key falls back to the global value; clearing a global one to the
    # command line's.
    cleared = settings(server, protocol, "simple", trace_rate=None)
    assert cleared["trace_rate"] == "7"
    assert settings(server, protocol, trace_rate=None)["trace_rate"] == "10"
    assert settings(server, protocol, "simple")["trace_level"] == ["TENSORS"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("update", "code", "message"),
    [
        (
            {"trace_file": "elsewhere.json"},
            "unsupported",
            "trace file location can not be updated through network protocol",
        ),
        ({"trace_rate": "abc"}, "invalid", "Unable to parse 'trace_rate', got: abc"),
        (
            {"trace_rate": "99999999999"},
            "invalid",
            "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: "
            "99999999999",
        ),
        (
            {"trace_count": "-2"},
            "invalid",
            "Unable to parse 'trace_count'. Expecting value >= -1, got:-2",
        ),
        ({"log_frequency": "x"}, "invalid", "Unable to parse 'log_frequency', got: x"),
        (
            {"trace_level": ["OFF", "TIMESTAMPS"]},
            "invalid",
            "Expect only one trace level 'OFF' is specified",
        ),
        ({"trace_level": ["LOUD"]}, "invalid", "Unable to parse 'trace_level', got: LOUD"),
        (
            {"trace_rate": "0"},
            "invalid",
            "Attempting to set invalid trace setting :sample rate must be non-zero",
        ),
    ],
    ids=["file", "rate", "range", "count", "frequency", "off", "level", "zero"],
)
def test_bad_updates_are_refused(
    server_factory: Factory,
    tmp_path: Path,
    protocol: str,
    update: dict[str, Any],
    code: str,
    message: str,
) -> None:
    server = traced_server(server_factory, tmp_path, level=TraceLevel.TIMESTAMPS)
    before = settings(server, protocol)
    error = fails(lambda: settings(server, protocol, **update), protocol, code)
    assert error.startswith(message)
    assert settings(server, protocol) == before


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model_is_refused(server_factory: Factory, protocol: str) -> None:
    server = server_factory(model_repositories=(EXAMPLES,))
    error = fails(lambda: settings(server, protocol, "nope"), protocol, "invalid")
    assert error == "Request for unknown model : nope"


def test_grpc_takes_one_value_per_setting_but_the_level(server_factory: Factory) -> None:
    server = server_factory(model_repositories=(EXAMPLES,))
    error = fails(lambda: settings(server, "grpc", trace_rate=["5", "6"]), "grpc", "invalid")
    assert error == "expect only 1 value for 'trace_rate'"  # Triton 2.51's words


def test_http_answers_bad_bodies_and_paths(server_factory: Factory) -> None:
    server = server_factory(model_repositories=(EXAMPLES,))
    base = f"http://{server.http_url}"
    answer = httpx.post(f"{base}/v2/trace/setting", content=b"{not json")
    assert answer.status_code == 400 and "error" in answer.json()
    answer = httpx.post(f"{base}/v2/trace/setting", json={"trace_rate": 5})
    assert answer.status_code == 400
    assert answer.json() == {"error": "'trace_rate' must be a string, got 5"}
    assert httpx.get(f"{base}/v2/models/simple/versions/1/trace/setting").status_code == 404
    assert httpx.put(f"{base}/v2/trace/setting").status_code == 405
    # Keys that are not settings are ignored, as Triton does.
    assert httpx.post(f"{base}/v2/trace/setting", json={"bogus": "1"}).json() == OFF


def test_rate_count_and_log_frequency(server_factory: Factory, tmp_path: Path) -> None:
    server = traced_server(
        server_factory, tmp_path, level=TraceLevel.TIMESTAMPS, rate=2, log_frequency=2
    )
    for i in range(8):
        infer(server, "http", "simple", SIMPLE, request_id=str(i))
    # Every 2nd request is traced, and every 2 traces make a numbered file.
    first, second = traces(tmp_path / "trace.json.0", 2), traces(tmp_path / "trace.json.1", 2)
    assert [t["request_id"] for t in (*first.values(), *second.values())] == ["1", "3", "5", "7"]
    assert not (tmp_path / "trace.json.2").exists()
    # A count limits the traces taken; the settings show how many are left.
    assert settings(server, "grpc", trace_rate="1", trace_count="1")["trace_count"] == "1"
    for i in range(3):
        infer(server, "grpc", "simple", SIMPLE, request_id=f"g{i}")
    assert settings(server, "grpc")["trace_count"] == "0"
    server.call(server.app.stop())  # the leftover trace goes to the next numbered file
    assert [t["request_id"] for t in traces(tmp_path / "trace.json.2").values()] == ["g0"]


def test_tensors_level_records_inputs_and_outputs(server_factory: Factory, tmp_path: Path) -> None:
    server = traced_server(server_factory, tmp_path, level=TraceLevel.TENSORS, rate=1)
    infer(server, "grpc", "simple", SIMPLE, outputs=["OUTPUT0"])
    (trace,) = traces(tmp_path / "trace.json").values()
    assert trace["timestamps"] == {}  # TENSORS alone: no timestamps
    tensors = {(activity, t["name"]): t for activity, t in trace["tensors"]}
    assert set(tensors) == {
        ("TENSOR_QUEUE_INPUT", "INPUT0"),
        ("TENSOR_QUEUE_INPUT", "INPUT1"),
        ("TENSOR_BACKEND_OUTPUT", "OUTPUT0"),
    }
    output = tensors[("TENSOR_BACKEND_OUTPUT", "OUTPUT0")]
    assert output == {
        "name": "OUTPUT0",
        "data": ",".join(str(v + 1) for v in range(16)),
        "shape": "1,16",
        "dtype": "INT32",
    }


def twice_repository(repo: Path) -> Path:
    """`simple`, and `twice`: an ensemble that runs it twice in a row (OUT = A + 2B)."""
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    tensor = "{{ name: {!r} data_type: TYPE_INT32 dims: [ 16 ] }}"
    (repo / "twice" / "1").mkdir(parents=True)
    (repo / "twice" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 8\n'
        f"input [ {tensor.format('A')}, {tensor.format('B')} ]\n"
        f"output [ {tensor.format('OUT')} ]\n"
        "ensemble_scheduling { step [\n"
        '  { model_name: "simple" model_version: -1 input_map { key: "INPUT0" value: "A" }\n'
        '    input_map { key: "INPUT1" value: "B" } output_map { key: "OUTPUT0" value: "s" } },\n'
        '  { model_name: "simple" model_version: -1 input_map { key: "INPUT0" value: "s" }\n'
        '    input_map { key: "INPUT1" value: "B" } output_map { key: "OUTPUT0" value: "OUT" } }\n'
        "] }\n".replace("'", '"')
    )
    return repo


def test_ensemble_steps_are_traced_with_their_parent(
    server_factory: Factory, tmp_path: Path
) -> None:
    repo = twice_repository(tmp_path / "repo")
    setting = TraceSetting(TraceLevel.TIMESTAMPS, rate=1, file=str(tmp_path / "trace.json"))
    server = server_factory(model_repositories=(repo,), trace=setting)
    out = infer(server, "http", "twice", {"A": A, "B": np.ones((1, 16), dtype=np.int32)})
    np.testing.assert_array_equal(out["OUT"], A + 2)
    found = traces(tmp_path / "trace.json", 3)
    (root,) = [t for t in found.values() if "parent_id" not in t]
    steps = [t for t in found.values() if "parent_id" in t]
    assert root["model_name"] == "twice"
    assert [(s["model_name"], s["parent_id"]) for s in steps] == [("simple", root["id"])] * 2
    first, second = sorted(steps, key=lambda s: s["timestamps"]["REQUEST_START"])
    assert first["timestamps"]["REQUEST_END"] <= second["timestamps"]["REQUEST_START"]
    assert root["timestamps"]["REQUEST_START"] <= first["timestamps"]["REQUEST_START"]
    assert second["timestamps"]["REQUEST_END"] <= root["timestamps"]["REQUEST_END"]


def test_failed_requests_are_traced(server_factory: Factory, tmp_path: Path) -> None:
    setting = TraceSetting(TraceLevel.TIMESTAMPS, rate=1, file=str(tmp_path / "trace.json"))
    server = server_factory(model_repositories=(EXAMPLES,), trace=setting)
    for protocol in PROTOCOLS:
        call = partial(infer, server, protocol, "simple", {"INPUT0": A}, request_id=protocol)
        fails(call, protocol, "invalid")
    found = {t["request_id"]: t for t in traces(tmp_path / "trace.json", 2).values()}
    assert set(found) == {"http", "grpc"}
    for protocol, trace in found.items():
        send = READ[protocol][1]
        stamps = trace["timestamps"]
        assert stamps["REQUEST_START"] <= stamps["REQUEST_END"] <= stamps[f"{send}_SEND_END"]


@pytest.mark.parametrize("stacks", ["inferd", "alt"])
def test_stream_requests_are_traced(server_factory: Factory, tmp_path: Path, stacks: str) -> None:
    alt = {"grpc_stack": "grpcio"} if stacks == "alt" else {}
    setting = TraceSetting(TraceLevel.TIMESTAMPS, rate=1, file=str(tmp_path / "trace.json"))
    server = server_factory(model_repositories=(EXAMPLES,), trace=setting, **alt)
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(lambda result, error: answers.put(error or result))
        inputs = []
        for name, array in SIMPLE.items():
            inputs.append(grpcclient.InferInput(name, list(array.shape), "INT32"))
            inputs[-1].set_data_from_numpy(array)
        for rid in ("s-1", "s-2"):
            client.async_stream_infer("simple", inputs, request_id=rid)
            answers.get(timeout=20)
        client.stop_stream()
    found = {t["request_id"]: t for t in traces(tmp_path / "trace.json", 2).values()}
    assert set(found) == {"s-1", "s-2"}
    names = [n.format(read="GRPC_WAITREAD", send="GRPC") for n in ORDER]
    for trace in found.values():
        times = [trace["timestamps"][name] for name in names]
        assert times == sorted(times), dict(zip(names, times, strict=True))


@pytest.mark.parametrize("stacks", ["inferd", "alt"])
def test_generate_requests_are_traced(server_factory: Factory, tmp_path: Path, stacks: str) -> None:
    """As Triton 2.51 traces them: /generate and /generate_stream as /infer; a refused one with
    reading and sending only."""
    alt = {"http_stack": "uvicorn"} if stacks == "alt" else {}
    setting = TraceSetting(TraceLevel.TIMESTAMPS, rate=1, file=str(tmp_path / "trace.json"))
    server = server_factory(model_repositories=(EXAMPLES,), trace=setting, **alt)
    body = {"INPUT0": list(range(16)), "INPUT1": [1] * 16}
    with httpx.Client(base_url=f"http://{server.http_url}/v2/models/simple") as http:
        assert http.post("/generate", json=body).json()["OUTPUT0"] == list(range(1, 17))
        assert http.post("/generate_stream", json=body).text.startswith("data: {")
        assert http.post("/generate", json={"INPUT0": [[1]]}).status_code == 400
    found = [trace for _, trace in sorted(traces(tmp_path / "trace.json", 3).items())]
    assert len(found) == 3
    names = [n.format(read="HTTP_RECV", send="HTTP") for n in ORDER]
    for trace in found[:2]:
        assert (trace["model_name"], trace["model_version"]) == ("simple", 1)
        times = [trace["timestamps"][name] for name in names]
        assert times == sorted(times), dict(zip(names, times, strict=True))
    refused = found[2]["timestamps"]
    assert set(refused) == {"HTTP_RECV_START", "HTTP_RECV_END", "HTTP_SEND_START", "HTTP_SEND_END"}


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_bls_calls_are_traced_as_children_of_their_caller(
    server_factory: Factory, tmp_path: Path, isolation: str
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    write_python_model(repo, "bls_trace", BLS_TRACE, BLS_TRACE_CONFIG)
    setting = TraceSetting(TraceLevel.TIMESTAMPS, rate=1, file=str(tmp_path / "trace.json"))
    server = server_factory(model_repositories=(repo,), trace=setting, python_isolation=isolation)
    out = infer(server, "http", "bls_trace", SIMPLE)
    assert out["CONTEXT"][0] == b"None"  # no OpenTelemetry context in Triton's file mode
    found = traces(tmp_path / "trace.json", 2)
    (caller,) = [t for t in found.values() if "parent_id" not in t]
    (child,) = [t for t in found.values() if "parent_id" in t]
    assert (caller["model_name"], child["model_name"]) == ("bls_trace", "simple")
    assert child["parent_id"] == caller["id"]
    stamps = child["timestamps"]
    assert caller["timestamps"]["COMPUTE_START"] <= stamps["REQUEST_START"]
    assert stamps["REQUEST_END"] <= caller["timestamps"]["COMPUTE_END"]
