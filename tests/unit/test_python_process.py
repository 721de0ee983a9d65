"""Python model instances in stub processes (python_process.py, python_stub.py): real child
processes running real model.py files. What every python model does is also run in stub
processes by the integration suites that take an isolation parameter (test_python_backend,
test_decoupled, test_custom_metrics, test_python_model_control, the sequence, trace and
ensemble ones); here is what only processes do: crash, restart, start together, exit, carry
tensors and log records across, put an environment first."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import select
import socket
import struct
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import ml_dtypes
import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inferd.backends.base import BackendSettings, Device, InstanceRequest
from inferd.backends.python import PythonBackend, PythonInstance
from inferd.backends.python_process import ISOLATION_PARAMETER, STUB_MODULE, StubInstance
from inferd.backends.stub_channel import (
    Channel,
    FrameReader,
    UnreadableMessage,
    pack_tensors,
    unpack_tensors,
)
from inferd.server.errors import ErrorCode, InferdError
from tests.conftest import TEST_SETTINGS, start_server
from tests.integration.test_cli import spawn_inferd, wait_ready
from tests.python_models import AUTO, IDENTITY_CONFIG, write_python_model
from tests.unit.test_python_backend import load_config
from tests.waiting import wait_for

PROCESS = BackendSettings(python_isolation="process")

# Answers its process id and how many times initialize() ran in that process; a negative
# input ends the process in the middle of execute(), as a crashing extension would; 100 or
# more (or -100 or less, before it ends the process) takes that many ms.
PID = """
import os
import time
import types

import numpy as np
import triton_python_backend_utils as pb_utils

INITIALIZED = 0


class TritonPythonModel:
    def initialize(self, args):
        global INITIALIZED
        INITIALIZED += 1
        if os.environ.get("PID_MODEL_CRASH_ON_INIT"):
            os._exit(4)

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if abs(value[0]) >= 100:
                time.sleep(abs(value[0]) / 1000)
            if value[0] < 0:
                os._exit(3)
            pb_utils.Logger.log_warn(f"pid model: {value[0]}")
            answer = np.array([os.getpid(), INITIALIZED], np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", answer)]))
        return responses

    def finalize(self):
        if os.environ.get("PID_MODEL_FINALIZE_FAILS"):
            raise RuntimeError("finalize failed on purpose")
"""

PID_CONFIG = """
name: "pid"
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 2 ] }]
"""


def create(repo: Path, settings: BackendSettings = PROCESS, config: str = PID_CONFIG) -> object:
    write_python_model(repo, "pid", PID, config)
    model_file = repo / "pid" / "1" / "model.py"
    return PythonBackend.create_instance(
        load_config(repo, "pid", settings), model_file, Device("cpu", name="pid_0_0"), settings
    )


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubInstance]:
    instance = create(tmp_path)
    assert isinstance(instance, StubInstance)
    yield instance
    instance.close()


def ask(instance: object, value: int) -> tuple[int, int]:
    assert isinstance(instance, StubInstance | PythonInstance)
    pid, initialized = instance.execute({"INPUT0": np.array([value], np.int32)})["OUTPUT0"]
    return int(pid), int(initialized)


def gone(pid: int) -> bool:
    """The process ended (and was reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_model_runs_in_a_process_of_its_own(stub: StubInstance) -> None:
    pid, initialized = ask(stub, 1)
    assert pid == stub.pid != os.getpid()
    assert initialized == 1


# Answers which of the server's own modules its stub process has loaded.
SERVER_MODULES = """
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

SERVER_ONLY = ("inferd.server.settings", "inferd.server.http1", "prometheus_client")


class TritonPythonModel:
    def execute(self, requests):
        loaded = [int(name in sys.modules) for name in SERVER_ONLY]
        answer = np.array(loaded, np.int64)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", answer)]) for _ in requests]
"""


def test_a_stub_starts_without_the_servers_front_doors_and_metrics_exporter(
    tmp_path: Path,
) -> None:
    """They cost a stub about 0.1 s of its start (each model instance starts one)."""
    write_python_model(tmp_path, "pid", SERVER_MODULES, PID_CONFIG.replace("[ 2 ]", "[ 3 ]"))
    instance = PythonBackend.create_instance(
        load_config(tmp_path, "pid", PROCESS),
        tmp_path / "pid" / "1" / "model.py",
        Device("cpu", name="pid_0_0"),
        PROCESS,
    )
    try:
        loaded = instance.execute({"INPUT0": np.array([1], np.int32)})["OUTPUT0"]
    finally:
        instance.close()
    assert loaded.tolist() == [0, 0, 0]


def test_a_crash_fails_the_batch_in_tritons_words_and_the_next_batch_restarts_the_stub(
    stub: StubInstance, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = ask(stub, 1)
    requests = [InstanceRequest({"INPUT0": np.array([v], np.int32)}) for v in (2, -1)]
    with pytest.raises(InferdError) as failed:
        stub.execute_requests(requests)
    assert failed.value.code is ErrorCode.INTERNAL
    assert failed.value.message == "Stub process 'pid_0_0' is not healthy."
    assert any("exited with code 3" in r.getMessage() for r in caplog.records)
    assert gone(first)
    second, initialized = ask(stub, 1)  # a new process, initialized again
    assert second != first and initialized == 1


# Echoes its input; a first value of 100 or more (or -100 or less) waits for the file
# $ECHO_GATE first, and a negative one then ends the process.
GATED_ECHO = """
import os
import time
import types

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            while abs(int(value[0])) >= 100 and not os.path.exists(os.environ["ECHO_GATE"]):
                time.sleep(0.01)
            if value[0] < 0:
                os._exit(3)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", value)]))
        return responses
"""

GATED_ECHO_CONFIG = """
name: "echo"
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] }]
"""


@pytest.fixture
def gated_echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubInstance]:
    monkeypatch.setenv("ECHO_GATE", str(tmp_path / "open"))
    write_python_model(tmp_path, "echo", GATED_ECHO, GATED_ECHO_CONFIG)
    instance = PythonBackend.create_instance(
        load_config(tmp_path, "echo", PROCESS),
        tmp_path / "echo" / "1" / "model.py",
        Device("cpu", name="echo_0_0"),
        PROCESS,
    )
    assert isinstance(instance, StubInstance)
    yield instance
    instance.close()


def echo_requests(*values: int, size: int = 1) -> list[InstanceRequest]:
    return [InstanceRequest({"INPUT0": np.full(size, v, np.int32)}) for v in values]


def echoed(outcomes: list[Any]) -> list[int]:
    return [int(outcome["OUTPUT0"][0]) for outcome in outcomes]


class Answers:
    """An attached instance's deliver(): each batch's outcome, by the job it was sent with,
    as the loop gets it."""

    def __init__(self, instance: StubInstance) -> None:
        self.loop = asyncio.get_running_loop()
        self._outcomes: dict[Any, asyncio.Future[Any]] = {}
        self.order: list[Any] = []
        instance.attach(self.loop, self.deliver)

    def deliver(self, job: Any, outcome: Any) -> None:
        self.order.append(job)
        self._future(job).set_result(outcome)

    def _future(self, job: Any) -> asyncio.Future[Any]:
        return self._outcomes.setdefault(job, self.loop.create_future())

    async def of(self, job: Any) -> Any:
        return await asyncio.wait_for(self._future(job), 30)


async def test_batches_go_to_the_stub_from_the_loop_and_their_answers_come_back_there(
    gated_echo: StubInstance, tmp_path: Path
) -> None:
    answers = Answers(gated_echo)
    assert gated_echo.begin_requests(echo_requests(100, 1), "running", early=True)
    # Sent while the stub waits inside the first batch: it waits in the stub behind it.
    assert gated_echo.begin_requests(echo_requests(2, 3), "early", early=True)
    # From the instance's thread (a batch too big for the loop) they queue the same way.
    await asyncio.to_thread(gated_echo.begin_requests, echo_requests(4), "thread")
    (tmp_path / "open").touch()
    assert echoed(await answers.of("running")) == [100, 1]
    assert echoed(await answers.of("early")) == [2, 3]
    assert echoed(await answers.of("thread")) == [4]
    assert answers.order == ["running", "early", "thread"]
    await asyncio.to_thread(gated_echo.close)


async def test_a_crash_fails_every_batch_the_stub_was_sent_and_the_thread_starts_another(
    gated_echo: StubInstance, tmp_path: Path
) -> None:
    answers = Answers(gated_echo)
    first = gated_echo.pid
    assert gated_echo.begin_requests(echo_requests(1), "answered", early=True)
    assert gated_echo.begin_requests(echo_requests(-100), "crashes", early=True)
    assert gated_echo.begin_requests(echo_requests(2), "behind", early=True)
    assert echoed(await answers.of("answered")) == [1]
    (tmp_path / "open").touch()
    for job in ("crashes", "behind"):
        error = await answers.of(job)
        assert isinstance(error, InferdError)
        assert error.message == "Stub process 'echo_0_0' is not healthy."
    # A dead stub takes nothing from the loop; the instance's thread starts a new one.
    assert not gated_echo.begin_requests(echo_requests(4), "declined", early=True)
    await asyncio.to_thread(gated_echo.begin_requests, echo_requests(4), "restarted")
    assert echoed(await answers.of("restarted")) == [4]
    assert gated_echo.pid != first and gone(first)
    await asyncio.to_thread(gated_echo.close)


async def test_a_batch_too_big_to_wait_in_the_socket_is_not_sent_from_the_loop(
    gated_echo: StubInstance,
) -> None:
    answers = Answers(gated_echo)
    big = echo_requests(5, size=100_000)  # 400 kB: it would fill the socket's buffer
    assert not gated_echo.begin_requests(big, "declined", early=True)
    await asyncio.to_thread(gated_echo.begin_requests, big, "big")
    (outcome,) = await answers.of("big")  # nothing of it was sent before: it runs once
    assert isinstance(outcome, dict) and outcome["OUTPUT0"].shape == (100_000,)
    assert (outcome["OUTPUT0"] == 5).all()
    assert gated_echo.begin_requests(echo_requests(6), "small", early=True)
    assert echoed(await answers.of("small")) == [6]
    assert answers.order == ["big", "small"]
    await asyncio.to_thread(gated_echo.close)


def test_a_stub_that_dies_while_starting_fails_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PID_MODEL_CRASH_ON_INIT", "1")
    with pytest.raises(InferdError, match=r"Stub process 'pid_0_0' exited with code 4"):
        create(tmp_path)


def test_initialize_errors_read_as_in_the_servers_process(tmp_path: Path) -> None:
    source = (
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise FileNotFoundError('weights.bin')\n"
        "    def execute(self, requests):\n"
        "        return []\n"
    )
    messages = []
    for isolation in ("thread", "process"):
        settings = BackendSettings(python_isolation=isolation)
        write_python_model(tmp_path, "pid", source, PID_CONFIG)
        with pytest.raises(InferdError) as failed:
            PythonBackend.create_instance(
                load_config(tmp_path, "pid", settings),
                tmp_path / "pid" / "1" / "model.py",
                Device("cpu"),
                settings,
            )
        messages.append(failed.value.message)
    assert messages[0] == messages[1]
    assert "initialize() failed: FileNotFoundError: weights.bin" in messages[0]


def test_log_records_reach_the_servers_log(
    stub: StubInstance, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        ask(stub, 7)
        deadline = time.monotonic() + 10
        while not any("pid model: 7" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the model's log record never came"
            time.sleep(0.01)
    record = next(r for r in caplog.records if "pid model: 7" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert record.name == "inferd.backends.python_api"


def test_close_runs_finalize_and_ends_the_process(tmp_path: Path) -> None:
    instance = create(tmp_path)
    assert isinstance(instance, StubInstance)
    pid = instance.pid
    instance.close()
    assert gone(pid)


def test_a_finalize_failure_is_raised_and_the_process_still_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PID_MODEL_FINALIZE_FAILS", "1")
    instance = create(tmp_path)
    assert isinstance(instance, StubInstance)
    pid = instance.pid
    with pytest.raises(InferdError, match="finalize failed on purpose"):
        instance.close()
    assert gone(pid)


def test_the_models_parameter_overrides_the_servers_setting(tmp_path: Path) -> None:
    in_process = PID_CONFIG + (
        f'parameters {{ key: "{ISOLATION_PARAMETER}" value {{ string_value: "thread" }} }}'
    )
    instance = create(tmp_path, PROCESS, in_process)
    assert isinstance(instance, PythonInstance)
    assert ask(instance, 1)[0] == os.getpid()
    instance.close()
    isolated = in_process.replace('"thread"', '"process"')
    instance = create(tmp_path, replace(PROCESS, python_isolation="thread"), isolated)
    assert isinstance(instance, StubInstance)
    instance.close()


def test_an_unknown_isolation_fails_the_load_naming_the_choices(tmp_path: Path) -> None:
    config = PID_CONFIG + (
        f'parameters {{ key: "{ISOLATION_PARAMETER}" value {{ string_value: "fork" }} }}'
    )
    with pytest.raises(InferdError, match=r"must be one of thread, process, got 'fork'"):
        create(tmp_path, PROCESS, config)


# Notes the process that imports it, then completes its config as AUTO does.
IMPORTED_BY = """
import os

with open(os.environ["IMPORTED_BY_FILE"], "a") as notes:
    notes.write(f"{os.getpid()}\\n")
""" + AUTO.replace("import triton_python_backend_utils", "\nimport triton_python_backend_utils")


def test_auto_complete_runs_model_py_in_a_stub_not_in_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = tmp_path / "imported_by"
    monkeypatch.setenv("IMPORTED_BY_FILE", str(notes))
    write_python_model(tmp_path, "auto", IMPORTED_BY)
    config = load_config(tmp_path, "auto", PROCESS)
    assert [t.name for t in config.inputs] == ["INPUT0"]
    assert config.max_batch_size == 4
    importers = notes.read_text().split()
    assert importers and str(os.getpid()) not in importers


def test_auto_complete_errors_read_as_in_the_servers_process(tmp_path: Path) -> None:
    source = AUTO.replace("set_max_batch_size(4)", "set_max_batch_size('four')")
    write_python_model(tmp_path, "auto", source)
    messages = []
    for settings in (BackendSettings(), PROCESS):
        with pytest.raises(InferdError) as failed:
            load_config(tmp_path, "auto", settings)
        messages.append(failed.value.message)
    assert messages[0] == messages[1]
    assert "auto_complete_config() failed: TypeError" in messages[0]


def both_instances_pids(address: str) -> set[int]:
    """The process ids that the pid model's two instances answer, asked two slow requests at
    once (so both instances work)."""
    client = httpclient.InferenceServerClient(address, concurrency=2)
    tensor = httpclient.InferInput("INPUT0", [1], "INT32")
    tensor.set_data_from_numpy(np.array([200], np.int32))
    answers = [client.async_infer("pid", [tensor]) for _ in range(2)]
    pids = {int(a.get_result().as_numpy("OUTPUT0")[0]) for a in answers}
    client.close()
    return pids


def test_stopping_the_server_ends_every_stub(tmp_path: Path) -> None:
    write_python_model(tmp_path, "pid", PID, PID_CONFIG + "instance_group [{ count: 2 }]")
    server = start_server(
        replace(TEST_SETTINGS, model_repositories=(tmp_path,), python_isolation="process")
    )
    try:
        pids = both_instances_pids(server.http_url)
    finally:
        server.stop()
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(gone(pid) for pid in pids)


def test_through_the_server_a_crash_fails_what_the_stub_held_and_the_next_request_restarts_it(
    tmp_path: Path,
) -> None:
    """Requests queued behind a running one reach the stub before it crashes: they fail with
    it, every request gets its answer, and the next one runs in a new stub."""
    write_python_model(tmp_path, "pid", PID, PID_CONFIG)
    server = start_server(
        replace(TEST_SETTINGS, model_repositories=(tmp_path,), python_isolation="process")
    )
    try:
        client = httpclient.InferenceServerClient(server.http_url, concurrency=4)

        def infer(value: int) -> Any:
            tensor = httpclient.InferInput("INPUT0", [1], "INT32")
            tensor.set_data_from_numpy(np.array([value], np.int32))
            return client.async_infer("pid", [tensor])

        first = infer(1).get_result().as_numpy("OUTPUT0")[0]
        running = infer(300)  # the stub sleeps 300 ms: the next two queue behind it
        time.sleep(0.05)
        # The crash comes 300 ms into its run: `behind` reaches the stub before it.
        crashing, behind = infer(-300), infer(2)
        assert running.get_result().as_numpy("OUTPUT0")[0] == first
        for failed in (crashing, behind):
            with pytest.raises(InferenceServerException, match="Stub process 'pid_0' is not"):
                failed.get_result()
        again = infer(3).get_result().as_numpy("OUTPUT0")
        assert again[0] != first and again[1] == 1  # a new stub, initialized once
        client.close()
    finally:
        server.stop()


# Doubles its input in place (a model owns its input tensors, as in Triton) and answers it,
# whatever its type and size.
IN_PLACE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            x *= 2
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return responses
"""


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("TYPE_FP32", "float32"), ("TYPE_BF16", "bfloat16"), ("TYPE_INT8", "int8")],
)
@pytest.mark.parametrize("count", [16, 1 << 20])  # in the message; beside it (out of band)
def test_tensors_of_any_size_and_type_cross_both_ways(
    tmp_path: Path, datatype: str, dtype: str, count: int
) -> None:
    config = f"""
name: "in_place"
backend: "python"
input [{{ name: "INPUT0" data_type: {datatype} dims: [ -1 ] }}]
output [{{ name: "OUTPUT0" data_type: {datatype} dims: [ -1 ] }}]
"""
    write_python_model(tmp_path, "in_place", IN_PLACE, config)
    instance = PythonBackend.create_instance(
        load_config(tmp_path, "in_place", PROCESS),
        tmp_path / "in_place" / "1" / "model.py",
        Device("cpu"),
        PROCESS,
    )
    try:
        sent = (np.arange(count) % 50).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        sent.flags.writeable = False  # as the server's views of request bytes are
        answer = instance.execute({"INPUT0": sent})["OUTPUT0"]
    finally:
        instance.close()
    assert answer.dtype == sent.dtype and answer.shape == sent.shape
    assert np.array_equal(answer.astype(np.float32), sent.astype(np.float32) * 2)
    assert sent[1] == 1  # the caller's array is untouched


# Each instance's initialize() notes its pid, then waits until all three have started: only
# instances started at once get past it. With BARRIER_FAIL, instance 1 fails instead.
BARRIER = """
import os
import pathlib
import time
import types


class TritonPythonModel:
    def initialize(self, args):
        folder = pathlib.Path(os.environ["BARRIER_DIR"])
        name = args["model_instance_name"]
        (folder / name).write_text(str(os.getpid()))
        if name.endswith("_1") and os.environ.get("BARRIER_FAIL"):
            raise RuntimeError("instance 1 fails on purpose")
        deadline = time.monotonic() + 30
        while len(list(folder.iterdir())) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("the instances were started one by one")
            time.sleep(0.01)

    def execute(self, requests):
        return []
"""


@pytest.mark.parametrize("fails", [False, True])
def test_stubs_start_at_once_and_a_failure_ends_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("BARRIER_DIR", str(barrier))
    if fails:
        monkeypatch.setenv("BARRIER_FAIL", "1")
    repo = tmp_path / "repo"
    config = PID_CONFIG.replace('"pid"', '"barrier"') + "instance_group [{ count: 3 }]"
    write_python_model(repo, "barrier", BARRIER, config)
    server = start_server(
        replace(TEST_SETTINGS, model_repositories=(repo,), python_isolation="process")
    )
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        ready = client.is_model_ready("barrier")
        (entry,) = client.get_model_repository_index()
        client.close()
    finally:
        server.stop()
    pids = [int(marker.read_text()) for marker in barrier.iterdir()]
    assert len(pids) == 3 and all(gone(pid) for pid in pids)
    if fails:
        assert not ready
        assert "instance 1 fails on purpose" in entry["reason"]
    else:
        assert ready


VERBOSE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            pb_utils.Logger.log_verbose(f"verbose model: {value[0]}")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", value)]))
        return responses
"""

VERBOSE_CONFIG = """
name: "verbose"
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]
"""


def test_log_settings_changed_at_run_time_reach_the_stubs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_python_model(tmp_path, "verbose", VERBOSE, VERBOSE_CONFIG)
    server = start_server(
        replace(TEST_SETTINGS, model_repositories=(tmp_path,), python_isolation="process")
    )
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("INPUT0", [1], "INT32")
    try:
        for value, verbose in ((1, 0), (2, 1)):
            client.update_log_settings({"log_verbose_level": verbose})
            tensor.set_data_from_numpy(np.array([value], np.int32))
            client.infer("verbose", [tensor])
        client.update_log_settings({"log_verbose_level": 0})
    finally:
        client.close()
        server.stop()
    lines = [r.getMessage() for r in caplog.records if "verbose model" in r.getMessage()]
    assert lines == ["verbose model: 2"]  # sent once verbose logging was on, not before


def test_load_unload_cycles_leave_no_process_or_descriptor_behind(tmp_path: Path) -> None:
    write_python_model(tmp_path, "pid", PID, PID_CONFIG + "instance_group [{ count: 2 }]")
    server = start_server(
        replace(
            TEST_SETTINGS,
            model_repositories=(tmp_path,),
            model_control_mode="explicit",
            python_isolation="process",
        )
    )
    me = psutil.Process()

    def stubs() -> list[int]:  # other children (multiprocessing's tracker) aside
        found = []
        for child in me.children():
            try:
                if STUB_MODULE in " ".join(child.cmdline()):
                    found.append(child.pid)
            except psutil.Error:  # it ended meanwhile
                continue
        return found

    client = httpclient.InferenceServerClient(server.http_url)

    def freed() -> bool:  # the index says so once the instances are closed
        index = client.get_model_repository_index()
        return [m.get("state") for m in index if m["name"] == "pid"] == ["UNAVAILABLE"]

    tensor = httpclient.InferInput("INPUT0", [1], "INT32")
    tensor.set_data_from_numpy(np.array([1], np.int32))
    try:
        counts = []
        for _ in range(3):
            client.load_model("pid")
            assert len(stubs()) == 2  # a stub per instance
            client.infer("pid", [tensor])
            client.unload_model("pid")  # returns before the stubs are stopped
            wait_for(lambda: not stubs() and freed(), 30)
            counts.append(me.num_fds())
    finally:
        client.close()
        server.stop()
    assert counts[2] <= counts[0], counts  # the first cycle opened what later ones reuse


# Scales its input by `yaml.MARK` where the yaml it imports has one (the environment's does;
# the server's, PyYAML, does not).
SHADOWED = """
import numpy as np
import yaml

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        factor = getattr(yaml, "MARK", 1)
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", factor * pb_utils.get_input_tensor_by_name(
                    request, "INPUT0").as_numpy())]
            )
            for request in requests
        ]
"""


@pytest.mark.parametrize(("isolation", "factor"), [("thread", 1), ("process", 3)])
def test_a_stubs_environment_comes_before_the_servers_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolation: str, factor: int
) -> None:
    """In a stub, as in Triton, the environment's packages win, except the few the stub runs
    on itself (numpy): a broken numpy in the environment is never imported."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # thread isolation adds to it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    packages = tmp_path / "repo" / "shadowed" / "env" / "lib" / version / "site-packages"
    for name, source in (("yaml", "MARK = 3\n"), ("numpy", "raise ImportError('env numpy')\n")):
        (packages / name).mkdir(parents=True)
        (packages / name / "__init__.py").write_text(source)
    config = IDENTITY_CONFIG + (
        'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: '
        '"$$TRITON_MODEL_DIRECTORY/env" } }'
    )
    write_python_model(tmp_path / "repo", "shadowed", SHADOWED, config)
    settings = BackendSettings(python_isolation=isolation, cache_dir=tmp_path / "cache")
    instance = PythonBackend.create_instance(
        load_config(tmp_path / "repo", "shadowed", settings),
        tmp_path / "repo" / "shadowed" / "1" / "model.py",
        Device("cpu"),
        settings,
    )
    try:
        answer = instance.execute({"INPUT0": np.ones(4, np.float32)})["OUTPUT0"]
    finally:
        instance.close()
    assert answer.tolist() == [factor] * 4


def ended(pid: int) -> bool:
    """The process exited (reaped, or a zombie that no parent reaps: its parent was killed)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_stubs_end_when_the_server_is_killed(tmp_path: Path) -> None:
    """No orphans: a server killed outright (SIGKILL, an OOM kill) takes its stubs with it."""
    write_python_model(tmp_path, "pid", PID, PID_CONFIG + "instance_group [{ count: 2 }]")
    process, url = spawn_inferd(
        f"--model-repository={tmp_path}", "--backend-config=python,isolation=process"
    )
    try:
        wait_ready(url, process)
        pids = both_instances_pids(url.removeprefix("http://"))
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while not all(ended(pid) for pid in pids):
        assert time.monotonic() < deadline, "stubs outlived their server"
        time.sleep(0.05)


def test_frames_read_in_any_pieces_give_the_messages_sent() -> None:
    """The loop's reader of stub answers: frames split anywhere (a socket read returns what
    has arrived), big tensors out of band, several frames in one read."""
    ours, theirs = socket.socketpair()
    big = np.arange(100_000, dtype=np.float32)  # 400 kB: sent as a buffer of its own

    def send() -> None:
        with theirs:
            sender = Channel(theirs)
            sender.send(True, {"OUTPUT0": big}, 3)
            sender.send(False, InferdError(ErrorCode.INTERNAL, "failed"), 4)

    sending = threading.Thread(target=send)
    sending.start()
    data = b""
    with ours:
        while chunk := ours.recv(1 << 20):
            data += chunk
    sending.join()
    reader, got = FrameReader(), []
    for start in range(0, len(data), 7919):  # uneven pieces, cutting heads and buffers
        got += reader.feed(data[start : start + 7919])
    assert not any(isinstance(message, Exception) for message in got)
    (ok, outputs, sent), (failed, error, later) = cast(list[tuple[Any, ...]], got)
    assert ok and sent == 3 and (outputs["OUTPUT0"] == big).all()
    assert outputs["OUTPUT0"].flags.writeable
    assert not failed and isinstance(error, InferdError) and error.message == "failed"
    assert later == 4
    assert len(FrameReader().feed(data)) == 2  # all at once


def test_frames_read_from_a_socket_as_it_becomes_readable_fill_big_buffers_in_place() -> None:
    """FrameReader.read(), as the loop calls it: a read per readable socket, several frames
    of megabytes (bigger than the socket's buffer), then the end."""
    ours, theirs = socket.socketpair()
    arrays = [np.full(1 << 20, i, np.float32) for i in range(3)]  # 4 MB each

    def send() -> None:
        with theirs:
            for i, array in enumerate(arrays):
                Channel(theirs).send(True, [{"OUTPUT0": array}], i)

    sending = threading.Thread(target=send)
    sending.start()
    reader, got, ended = FrameReader(), [], False
    with ours:
        channel = Channel(ours)
        while not ended:
            select.select([ours], [], [], 10)
            read = reader.read(channel)
            if read is not None:
                messages, ended = read
                got += messages
    sending.join()
    assert [message[2] for message in cast(list[tuple[Any, ...]], got)] == [0, 1, 2]
    for (_, outcomes, _), array in zip(cast(list[tuple[Any, ...]], got), arrays, strict=True):
        assert np.array_equal(outcomes[0]["OUTPUT0"], array)


def test_tensors_cross_packed_as_their_bytes_and_come_back_equal_and_writable() -> None:
    """pack_tensors(): plain arrays travel as their bytes (no numpy pickling in the frame),
    every other array as itself; each comes back equal, of its type and writable."""
    plain = {
        "fp32": np.arange(16, dtype=np.float32),
        "big_endian": np.arange(6, dtype=">i8").reshape(2, 3),
        "bool": np.array([True, False]),
        "complex": np.array([1 + 2j], np.complex64),
        "scalar": np.array(7, np.int16),
        "empty": np.zeros((0, 4), np.uint8),
        "big": np.arange(100_000, dtype=np.float64),  # out of band
    }
    for array in plain.values():
        array.flags.writeable = False  # as the server's views of request bytes are
    other = {
        "bytes": np.array([b"a", b"bc"], dtype=np.object_),
        "strided": np.arange(10, dtype=np.int32)[::2],
        "bf16": np.ones(3, ml_dtypes.bfloat16),
    }
    assert b"numpy" not in pickle.dumps(pack_tensors(plain), protocol=5)
    ours, theirs = socket.socketpair()
    sender, receiver = Channel(theirs), Channel(ours)
    sending = threading.Thread(target=sender.send, args=(pack_tensors({**plain, **other}),))
    sending.start()
    try:
        (packed,) = receiver.receive()
    finally:
        sending.join()
        sender.close()
        receiver.close()
    got = unpack_tensors(packed)
    assert got.keys() == {**plain, **other}.keys()
    for name, array in {**plain, **other}.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name
        assert got[name].flags.writeable, name


def test_a_message_that_does_not_unpickle_here_is_skipped_and_the_channel_reads_on() -> None:
    """The blocking reader (the server's reader thread of a stub's channel, the stub's own):
    it used to end on such a message, and then nobody read that channel any more."""
    ours, theirs = socket.socketpair()
    unreadable = b"cno_such_module\nThing\n."
    readable = pickle.dumps(("log", "x", 20, "after"), protocol=5)
    theirs.sendall(b"".join(struct.pack("<QI", len(p), 0) + p for p in (unreadable, readable)))
    channel = Channel(ours)
    try:
        with pytest.raises(UnreadableMessage, match="ModuleNotFoundError"):
            channel.receive()
        assert channel.receive() == ("log", "x", 20, "after")
    finally:
        channel.close()
        theirs.close()


def test_a_frame_that_does_not_unpickle_here_gives_why_in_its_place() -> None:
    """A class only the stub can import: the loop's reader names the error in that answer's
    place (its batch fails) and reads on."""
    unreadable = b"cno_such_module\nThing\n."  # a pickle of a class this side lacks
    readable = pickle.dumps((True, [], 0), protocol=5)
    data = b"".join(struct.pack("<QI", len(p), 0) + p for p in (unreadable, readable))
    first, second = FrameReader().feed(data)
    assert isinstance(first, UnreadableMessage)
    assert "no_such_module.Thing" in str(first) and "ModuleNotFoundError" in str(first)
    assert second == (True, [], 0)


class _OnlyThere:
    """A class of a module only the other end has (see _pickled_there)."""

    def __init__(self) -> None:
        self.state = [1, 2]


def _pickled_there(message: tuple[object, ...], monkeypatch: pytest.MonkeyPatch) -> bytes:
    """`message` pickled where _OnlyThere's module imports; it does not here."""
    there = types.ModuleType("only_there")
    monkeypatch.setattr(_OnlyThere, "__module__", "only_there")
    monkeypatch.setattr(there, "_OnlyThere", _OnlyThere, raising=False)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "only_there", there)
        return pickle.dumps(message, protocol=5)


def test_a_call_that_does_not_unpickle_here_still_names_its_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whoever reads it can answer the call, saying why (its caller waited forever before)."""
    data = _pickled_there(("call", 7, "infer", ({"x": _OnlyThere()},)), monkeypatch)
    ours, theirs = socket.socketpair()
    theirs.sendall(struct.pack("<QI", len(data), 0) + data)
    channel = Channel(ours)
    try:
        with pytest.raises(UnreadableMessage, match=r"only_there\._OnlyThere") as error:
            channel.receive()
    finally:
        channel.close()
        theirs.close()
    assert error.value.head == ("call", 7)
    [unreadable] = FrameReader().feed(struct.pack("<QI", len(data), 0) + data)
    assert isinstance(unreadable, UnreadableMessage) and unreadable.head == ("call", 7)
