"""Model lifecycle on real servers: warmup before READY, readiness while loading and reloading,
unloads that return at once while the requests they hold finish, no leaks over load/unload
cycles, and poll mode picking up changes."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inferd.server.app import StartupError
from tests.conftest import RunningServer
from tests.models import identity_model, reshape_model, write_model
from tests.python_models import GATE, write_python_model
from tests.waiting import wait_for

Factory = Callable[..., RunningServer]

IDENTITY_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
"""


GATE_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
"""


def warmup(name: str, batch_size: int, count: int, data: str, dims: str = "4") -> str:
    return f"""
    model_warmup [{{
      name: "{name}" batch_size: {batch_size} count: {count}
      inputs {{ key: "INPUT0" value {{ data_type: TYPE_FP32 dims: [ {dims} ] {data} }} }}
    }}]
    """


# About half a second of warmup (4 MiB copied per execution): long enough to watch a load.
SLOW_CONFIG = (
    'platform: "onnxruntime_onnx" max_batch_size: 1 '
    'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }] '
    'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]'
    + warmup("slow", 1, 1500, "zero_data: true", dims="1048576")
)


@pytest.fixture
def client_of() -> Iterator[Callable[[RunningServer], httpclient.InferenceServerClient]]:
    clients: list[httpclient.InferenceServerClient] = []

    def make(server: RunningServer) -> httpclient.InferenceServerClient:
        clients.append(httpclient.InferenceServerClient(server.http_url, concurrency=8))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def states(client: httpclient.InferenceServerClient) -> dict[str, tuple[str, str]]:
    """name -> (state, reason) of its highest version."""
    return {
        e["name"]: (e.get("state", ""), e.get("reason", ""))
        for e in client.get_model_repository_index()
    }


def infer(server: RunningServer, model: str, batch: int = 1) -> Any:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [batch, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((batch, 4), np.float32))
        return client.infer(model, [tensor]).as_numpy("OUTPUT0")
    finally:
        client.close()


def test_warmup_runs_on_every_instance_before_ready(
    tmp_path: Path, server_factory: Factory, client_of: Callable[..., Any]
) -> None:
    warm = write_model(
        tmp_path,
        "warm",
        identity_model(),
        IDENTITY_CONFIG
        + "instance_group [{ count: 2 kind: KIND_CPU }]"
        + warmup("random", 2, 3, "random_data: true")
        + warmup("zero", 1, 0, "zero_data: true")
        + warmup("file", 4, 1, 'input_data_file: "ones.bin"'),
    )
    (warm / "warmup").mkdir()
    (warm / "warmup" / "ones.bin").write_bytes(np.ones(4, np.float32).tobytes())
    write_model(  # the Reshape fails on 3 elements: the warmup crashes
        tmp_path,
        "crash",
        reshape_model(),
        "max_batch_size: 4" + warmup("boom", 1, 1, "zero_data: true", "3"),
    )
    write_model(
        tmp_path,
        "escape",
        identity_model(),
        IDENTITY_CONFIG + warmup("out", 1, 1, 'input_data_file: "../config.pbtxt"'),
    )
    write_model(tmp_path, "plain", identity_model(), IDENTITY_CONFIG)
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    client = client_of(server)

    stats = client.get_inference_statistics("warm")["model_stats"][0]
    # Per instance: 3 random + 1 zero + 1 file executions of 2, 1 and 4 items; two instances.
    assert stats["execution_count"] == 10
    assert stats["inference_count"] == 2 * (3 * 2 + 1 + 4)
    # As Triton 2.51 counts it: each item of a sample is a successful request of its own.
    assert stats["inference_stats"]["success"]["count"] == stats["inference_count"]
    assert stats["inference_stats"]["compute_infer"]["count"] == stats["inference_count"]
    assert stats["last_inference"] > 0
    assert {b["batch_size"] for b in stats["batch_stats"]} == {1, 2, 4}

    index = states(client)
    assert index["warm"] == ("READY", "")
    assert index["crash"][0] == "UNAVAILABLE" and "warmup 'boom' failed" in index["crash"][1]
    assert index["escape"][0] == "UNAVAILABLE" and "outside the warmup folder" in index["escape"][1]
    assert index["plain"] == ("READY", "")
    assert infer(server, "plain").shape == (1, 4)
    assert client.is_server_live()


def test_readiness_while_loading_reloading_and_serialised_calls(
    tmp_path: Path, server_factory: Factory, client_of: Callable[..., Any]
) -> None:
    write_model(tmp_path, "slow", identity_model(shape=("batch", "n")), SLOW_CONFIG)
    write_model(tmp_path, "fast", identity_model(), IDENTITY_CONFIG)
    server = server_factory(model_repositories=(tmp_path,), model_control_mode="explicit")
    client = client_of(server)
    assert client.is_server_ready()
    background = ThreadPoolExecutor(1)

    # A first load: the server is not ready until the model is, but stays live and responsive,
    # and another model loads meanwhile.
    loading = background.submit(client_of(server).load_model, "slow")
    wait_for(lambda: states(client)["slow"][0] == "LOADING")
    assert not client.is_server_ready() and not client.is_model_ready("slow")
    start = time.monotonic()
    assert client.is_server_live()
    assert time.monotonic() - start < 0.5  # the event loop is not busy loading
    client.load_model("fast")
    assert states(client)["slow"][0] == "LOADING"  # "fast" did not wait for "slow"
    loading.result(10)
    assert client.is_server_ready() and client.is_model_ready("slow")

    # A reload: the serving version keeps serving until the new one is ready.
    reloading = background.submit(client_of(server).load_model, "slow")
    seen: set[tuple[bool, bool]] = set()
    while not reloading.done():
        seen.add((client.is_server_ready(), client.is_model_ready("slow")))
        assert infer(server, "slow").shape == (1, 4)
    reloading.result()
    assert seen == {(True, True)}

    # Calls for one model run one at a time: the unload waits for the reload under way.
    reloading = background.submit(client_of(server).load_model, "slow")
    time.sleep(0.1)
    client.unload_model("slow")
    reloading.result(10)  # the reload succeeded before the unload ran
    wait_for(lambda: states(client)["slow"] == ("UNAVAILABLE", "unloaded"))
    background.shutdown()


def test_unload_lets_queued_requests_finish(
    tmp_path: Path, server_factory: Factory, client_of: Callable[..., Any]
) -> None:
    config = IDENTITY_CONFIG.replace("max_batch_size: 4", "max_batch_size: 8") + (
        "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 400000 }"
    )
    write_model(tmp_path, "queued", identity_model(), config)
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", load_models=("queued",)
    )
    client = client_of(server)
    with ThreadPoolExecutor(5) as pool:
        pending = [pool.submit(infer, server, "queued") for _ in range(5)]
        time.sleep(0.15)  # all five wait in the queue for the 400 ms delay
        client.unload_model("queued")
        assert [f.result(5).shape for f in pending] == [(1, 4)] * 5
    wait_for(lambda: states(client)["queued"] == ("UNAVAILABLE", "unloaded"))
    with pytest.raises(InferenceServerException, match="unloaded"):
        infer(server, "queued")


def test_an_unload_or_reload_returns_while_the_requests_it_holds_finish(
    tmp_path: Path, server_factory: Factory, client_of: Callable[..., Any]
) -> None:
    """As in Triton 2.51: the versions an unload or a reload retires take no new requests at
    once and the call returns; the requests they hold finish on them, and a load meanwhile
    serves new ones on fresh instances. A long (or stuck) request holds up neither."""
    marks = tmp_path / "marks"
    marks.mkdir()
    write_python_model(tmp_path / "repo", "gate", GATE.format(folder=str(marks)), GATE_CONFIG)
    server = server_factory(
        model_repositories=(tmp_path / "repo",),
        model_control_mode="explicit",
        load_models=("gate",),
    )
    client = client_of(server)
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(infer, server, "gate")
        wait_for((marks / "started").exists)
        client.unload_model("gate")
        assert not held.done()
        assert states(client)["gate"] == ("UNLOADING", "")
        with pytest.raises(InferenceServerException, match="no version at ready state: unloading"):
            infer(server, "gate")
        client.load_model("gate")  # fresh instances, beside the ones still finishing
        assert client.is_model_ready("gate") and not held.done()
        (marks / "started").unlink()
        reloaded_held = pool.submit(infer, server, "gate")
        wait_for((marks / "started").exists)
        config = tmp_path / "repo" / "gate" / "config.pbtxt"
        later = config.stat().st_mtime_ns + 1_000_000
        os.utime(config, ns=(later, later))
        client.load_model("gate")  # a reload (a file changed), while that request runs
        assert not held.done() and not reloaded_held.done()
        (marks / "release").touch()
        assert held.result(10).tolist() == reloaded_held.result(10).tolist() == [[1.0] * 4]
    assert infer(server, "gate").tolist() == [[1.0] * 4]


def test_stop_closes_both_front_doors_at_once_and_drains_what_they_accepted(
    tmp_path: Path, server_factory: Factory
) -> None:
    config = IDENTITY_CONFIG.replace("max_batch_size: 4", "max_batch_size: 8") + (
        "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 400000 }"
    )
    write_model(tmp_path, "queued", identity_model(), config)
    server = server_factory(model_repositories=(tmp_path,))
    http_port = server.app.http_port
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(client.infer, "queued", [tensor])
        time.sleep(0.15)  # the gRPC request waits in the queue for the 400 ms delay
        stopping = asyncio.run_coroutine_threadsafe(server.app.stop(), server.loop)
        time.sleep(0.1)
        # HTTP refuses new connections while gRPC still drains (Kubernetes sends SIGTERM
        # to a pod still in some endpoints: neither protocol should take more work).
        assert not stopping.done()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
        assert queued.result(5).as_numpy("OUTPUT0").shape == (1, 4)
    stopping.result(10)
    client.close()


def _open_sessions() -> int:
    gc.collect()
    with warnings.catch_warnings():  # some objects warn when asked their class (torch's)
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, ort.InferenceSession))


def _os_thread_names() -> list[str]:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:
            continue
    return sorted(names)


def _threads() -> tuple[int, int]:
    """(Python threads, OS threads) without the pools that grow on their own under load: the
    event loops' executor threads (when loader calls overlap), gRPC's event-engine threads
    (when a busy machine delays its work) and libuv's worker pool (uvloop's, started on demand,
    at most 4). OS threads include ONNX Runtime's."""
    pool = sum(1 for t in threading.enumerate() if t.name.startswith(("asyncio_", "uvloop_")))
    growing = 0
    for task in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{task}/comm").read_text().strip()
        except OSError:  # the thread ended while we looked
            continue
        growing += name.startswith(("event_engine", "grpc_", "libuv-worker"))
    return threading.active_count() - pool, len(os.listdir("/proc/self/task")) - pool - growing


def test_load_unload_cycles_leave_no_threads_or_sessions(
    tmp_path: Path, server_factory: Factory, client_of: Callable[..., Any]
) -> None:
    write_model(
        tmp_path,
        "cycle",
        identity_model(),
        IDENTITY_CONFIG + "instance_group [{ count: 2 kind: KIND_CPU }]",
    )
    server = server_factory(model_repositories=(tmp_path,), model_control_mode="explicit")
    client = client_of(server)
    client.load_model("cycle")  # a first cycle starts what is started once
    client.unload_model("cycle")
    threads, sessions = _threads(), _open_sessions()
    for _ in range(20):
        client.load_model("cycle")
        assert infer(server, "cycle").shape == (1, 4)
        client.unload_model("cycle")
    # An unload returns before its instances are freed, as in Triton 2.51, and a session's
    # native threads may still be ending after that: wait for the counts to settle.
    wait_for(lambda: not any(t.name.startswith("cycle:") for t in threading.enumerate()))
    deadline = time.monotonic() + 5
    after = _threads()
    while not (after[0] <= threads[0] and after[1] <= threads[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _threads()
    assert after[0] <= threads[0] and after[1] <= threads[1], (
        threads,
        after,
        " ".join(_os_thread_names()),
    )
    assert _open_sessions() <= sessions


def test_poll_mode_follows_the_repository(
    tmp_path: Path, server_factory: Factory, client_of: Callable[..., Any]
) -> None:
    model_dir = write_model(tmp_path, "m", identity_model(), IDENTITY_CONFIG)
    write_model(tmp_path, "gone", identity_model(), IDENTITY_CONFIG)
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="poll", repository_poll_secs=0.2
    )
    client = client_of(server)
    assert client.is_server_ready()

    write_model(tmp_path, "m", identity_model(), versions=(2,))  # a new version
    wait_for(lambda: client.get_model_metadata("m")["versions"] == ["2"])

    (model_dir / "config.pbtxt").write_text(IDENTITY_CONFIG.replace("size: 4", "size: 2"))
    wait_for(lambda: client.get_model_config("m")["max_batch_size"] == 2)

    shutil.rmtree(tmp_path / "gone")
    wait_for(lambda: "gone" not in states(client))
    assert not client.is_model_ready("gone")

    # A broken model added next to the others, and a broken edit of a served one.
    write_model(tmp_path, "broken", identity_model(), "bogus: 1")
    (model_dir / "config.pbtxt").write_text("bogus: 1")
    wait_for(lambda: states(client).get("broken", ("",))[0] == "UNAVAILABLE")
    time.sleep(0.5)  # a couple more polls
    assert states(client)["m"] == ("READY", "")  # the failed reload kept version 2 serving
    assert infer(server, "m").shape == (1, 4)
    assert not client.is_server_ready()  # strict: "broken" should load and did not
    shutil.rmtree(tmp_path / "broken")
    wait_for(client.is_server_ready)


def test_poll_mode_needs_a_positive_interval(server_factory: Factory) -> None:
    with pytest.raises(StartupError, match="repository-poll-secs"):
        server_factory(model_control_mode="poll", repository_poll_secs=0)
