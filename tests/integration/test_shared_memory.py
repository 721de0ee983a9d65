"""The shared-memory extensions, driven by tritonclient's own shared-memory utilities and by
perf_analyzer, over both protocols and both stacks of each (CUDA regions with a fake cupy)."""

from __future__ import annotations

import base64
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from inferd.server.cuda_shared_memory import CudaIpc
from inferd.server.shared_memory import SharedMemoryRegistry
from tests import fake_cupy
from tests.conftest import EXAMPLES, TEST_SETTINGS, RunningServer, start_server
from tests.perf_analyzer import needs_perf_analyzer, run_perf_analyzer


@pytest.fixture(scope="module", params=["inferd", "alt"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    settings = replace(TEST_SETTINGS, model_repositories=(EXAMPLES,), allow_client_shm=True)
    if request.param == "alt":
        settings = replace(settings, http_stack="uvicorn", grpc_stack="grpcio")
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, server: RunningServer) -> Iterator[Any]:
    if request.param == "http":
        yield httpclient.InferenceServerClient(server.http_url)
    else:
        triton = grpcclient.InferenceServerClient(server.grpc_url)
        yield triton
        triton.close()


class Regions:
    """POSIX shared-memory objects made with tritonclient, under keys unique to this test
    (tests run in parallel)."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.handles: dict[str, Any] = {}

    def key(self, name: str) -> str:
        return f"/inferd-test-{self.tag}-{name}"

    def create(self, name: str, byte_size: int) -> Any:
        self.handles[name] = shm.create_shared_memory_region(name, self.key(name), byte_size)
        return self.handles[name]


@pytest.fixture
def regions(client: Any) -> Iterator[Regions]:
    made = Regions()
    yield made
    client.unregister_system_shared_memory()
    for handle in made.handles.values():
        shm.destroy_shared_memory_region(handle)


def module_of(client: Any) -> Any:
    return httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient


def test_inputs_and_outputs_travel_through_shared_memory(client: Any, regions: Regions) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 5, dtype=np.int32)
    inputs = regions.create("in", 2 * a.nbytes)
    outputs = regions.create("out", 2 * a.nbytes + 64)
    shm.set_shared_memory_region(inputs, [a, b])
    client.register_system_shared_memory("in", regions.key("in"), 2 * a.nbytes)
    client.register_system_shared_memory("out", regions.key("out"), 2 * a.nbytes + 64)

    mod = module_of(client)
    in0, in1 = (
        mod.InferInput("INPUT0", [2, 16], "INT32"),
        mod.InferInput("INPUT1", [2, 16], "INT32"),
    )
    in0.set_shared_memory("in", a.nbytes)
    in1.set_shared_memory("in", b.nbytes, offset=a.nbytes)
    out0, out1 = mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")
    out0.set_shared_memory("out", a.nbytes, offset=64)  # an offset into the region
    out1.set_shared_memory("out", a.nbytes, offset=64 + a.nbytes)
    result = client.infer("simple", [in0, in1], outputs=[out0, out1])

    for name, expected, offset in (("OUTPUT0", a + b, 64), ("OUTPUT1", a - b, 64 + a.nbytes)):
        output = result.get_output(name)
        datatype = output["datatype"] if isinstance(output, dict) else output.datatype
        shape = output["shape"] if isinstance(output, dict) else list(output.shape)
        assert (datatype, shape) == ("INT32", [2, 16])
        got = shm.get_contents_as_numpy(outputs, np.int32, shape, offset=offset)
        np.testing.assert_array_equal(got, expected)
    # The answer itself carries no tensor data.
    if isinstance(client, httpclient.InferenceServerClient):
        assert all(
            "data" not in o and "parameters" not in o for o in result.get_response()["outputs"]
        )
    else:
        assert list(result.get_response().raw_output_contents) == [b"", b""]


def test_shared_and_sent_inputs_mix(client: Any, regions: Regions) -> None:
    """gRPC's raw_input_contents then holds only the inputs not in shared memory."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 2, dtype=np.int32)
    handle = regions.create("in", b.nbytes)
    shm.set_shared_memory_region(handle, [b])
    client.register_system_shared_memory("in", regions.key("in"), b.nbytes)
    mod = module_of(client)
    in0, in1 = (
        mod.InferInput("INPUT0", [1, 16], "INT32"),
        mod.InferInput("INPUT1", [1, 16], "INT32"),
    )
    in0.set_data_from_numpy(a)
    in1.set_shared_memory("in", b.nbytes)
    result = client.infer("simple", [in0, in1])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_bytes_tensors_in_shared_memory(client: Any, regions: Regions) -> None:
    words = np.array([[b"hello"], [b"shared memory"]], dtype=np.object_)
    serialized = serialize_byte_tensor(words)  # what tritonclient writes: one bytes item
    size = len(serialized.item())
    handle = regions.create("io", 2 * size)
    shm.set_shared_memory_region(handle, [serialized])
    client.register_system_shared_memory("io", regions.key("io"), 2 * size)
    mod = module_of(client)
    tensor = mod.InferInput("INPUT0", [2, 1], "BYTES")
    tensor.set_shared_memory("io", size)
    output = mod.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("io", size, offset=size)
    client.infer("bytes_identity", [tensor], outputs=[output])
    got = shm.get_contents_as_numpy(handle, np.object_, [2, 1], offset=size)
    assert got.tolist() == words.tolist()


def test_region_status_and_errors(client: Any, regions: Regions) -> None:
    regions.create("r", 64)
    key = regions.key("r")
    client.register_system_shared_memory("r", key, 32, offset=16)
    status = client.get_system_shared_memory_status()
    if isinstance(client, httpclient.InferenceServerClient):
        assert status == [{"name": "r", "key": key, "offset": 16, "byte_size": 32}]
    else:
        region = status.regions["r"]
        assert (region.name, region.key, region.offset, region.byte_size) == ("r", key, 16, 32)
    with pytest.raises(InferenceServerException, match="'r' already in manager"):
        client.register_system_shared_memory("r", key, 32)
    with pytest.raises(InferenceServerException, match="does not fit"):
        client.register_system_shared_memory("big", key, 4096)
    with pytest.raises(InferenceServerException, match="Unable to find system shared memory"):
        client.get_system_shared_memory_status("nope")

    mod = module_of(client)
    tensor = mod.InferInput("INPUT0", [1, 16], "INT32")
    tensor.set_shared_memory("r", 64)  # past the 32 registered bytes
    other = mod.InferInput("INPUT1", [1, 16], "INT32")
    other.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(InferenceServerException, match="Invalid offset \\+ byte size"):
        client.infer("simple", [tensor, other])
    out = mod.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("gone", 64)
    plain = mod.InferInput("INPUT0", [1, 16], "INT32")
    plain.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(
        InferenceServerException, match="Unable to find shared memory region: 'gone'"
    ):
        client.infer("simple", [plain, other], outputs=[out])
    client.unregister_system_shared_memory("r")
    status = client.get_system_shared_memory_status()
    assert not (status if isinstance(status, list) else status.regions)


def test_without_allow_client_shm_registration_is_refused(
    examples_server: RunningServer,
) -> None:
    http = httpclient.InferenceServerClient(examples_server.http_url)
    with pytest.raises(InferenceServerException, match="--allow-client-shm=true") as error:
        http.register_system_shared_memory("r", "/whatever", 8)
    assert error.value.status() == "501"
    assert http.get_system_shared_memory_status() == []
    grpc = grpcclient.InferenceServerClient(examples_server.grpc_url)
    with pytest.raises(InferenceServerException, match="--allow-client-shm=true") as error:
        grpc.register_system_shared_memory("r", "/whatever", 8)
    assert error.value.status() == "StatusCode.UNIMPLEMENTED"
    grpc.close()


@needs_perf_analyzer
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_with_system_shared_memory(server: RunningServer, protocol: str) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    flags = ["--shared-memory=system", "--output-shared-memory-size=256"]
    flags += ["--concurrency-range=2", "--measurement-interval=500", "-b", "2"]
    run_perf_analyzer("simple", url, protocol, *flags)


def test_cuda_regions_over_both_protocols(
    server_factory: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA register/status/unregister APIs and CUDA inputs and outputs on the wire, with
    a fake cupy standing in for the GPU this machine lacks."""
    record = fake_cupy.install(monkeypatch)
    server = server_factory(model_repositories=(EXAMPLES,), allow_client_shm=True)
    assert server.app.core is not None
    server.app.core.shared_memory = SharedMemoryRegistry(
        allow_client=True, cuda=lambda: CudaIpc(sys.modules["cupy"], record.address_range)
    )
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 4, dtype=np.int32)
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert "cuda_shared_memory" in http.get_server_metadata()["extensions"]
    for client, handle in ((http, bytes(range(64))), (grpc, bytes(range(1, 65)))):
        memory = record.export(handle, 0, 4 * a.nbytes)
        memory[: a.nbytes] = a.view(np.uint8).ravel()
        memory[a.nbytes : 2 * a.nbytes] = b.view(np.uint8).ravel()
        # tritonclient takes the handle base64-encoded (cudashm.get_raw_handle's form).
        client.register_cuda_shared_memory("g", base64.b64encode(handle), 0, 4 * a.nbytes)
        mod = module_of(client)
        in0 = mod.InferInput("INPUT0", [1, 16], "INT32")
        in1 = mod.InferInput("INPUT1", [1, 16], "INT32")
        in0.set_shared_memory("g", a.nbytes)
        in1.set_shared_memory("g", b.nbytes, offset=a.nbytes)
        out = mod.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("g", a.nbytes, offset=2 * a.nbytes)
        client.infer("simple", [in0, in1], outputs=[out])
        got = memory[2 * a.nbytes : 3 * a.nbytes].view(np.int32)
        np.testing.assert_array_equal(got, (a + b).ravel())

        status = client.get_cuda_shared_memory_status()
        if isinstance(status, list):
            assert status == [{"name": "g", "device_id": 0, "byte_size": 4 * a.nbytes}]
        else:
            assert status.regions["g"].byte_size == 4 * a.nbytes
        client.unregister_cuda_shared_memory()
        assert record.opened == {}
    grpc.close()
