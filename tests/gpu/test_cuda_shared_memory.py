"""CUDA shared memory on a real GPU: a client process exports device memory by IPC handle
(a handle cannot be opened in the process that made it), the server maps it, reads the inputs
from it and writes the outputs into it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.conftest import EXAMPLES, RunningServer

pytestmark = pytest.mark.gpu

CLIENT = r"""
import base64, sys
import numpy as np
import cupy
import tritonclient.http as httpclient

url = sys.argv[1]
runtime = cupy.cuda.runtime
a = np.arange(32, dtype=np.int32).reshape(2, 16)
b = np.full((2, 16), 7, dtype=np.int32)
size = 4 * a.nbytes
pointer = runtime.malloc(size)
host = np.concatenate([a.ravel(), b.ravel(), np.zeros(64, np.int32)])
runtime.memcpy(pointer, host.ctypes.data, size, runtime.memcpyHostToDevice)
handle = runtime.ipcGetMemHandle(pointer)

client = httpclient.InferenceServerClient(url)
assert "cuda_shared_memory" in client.get_server_metadata()["extensions"]
client.register_cuda_shared_memory("g", base64.b64encode(bytes(handle)), 0, size)
in0 = httpclient.InferInput("INPUT0", [2, 16], "INT32")
in1 = httpclient.InferInput("INPUT1", [2, 16], "INT32")
in0.set_shared_memory("g", a.nbytes)
in1.set_shared_memory("g", b.nbytes, offset=a.nbytes)
out0 = httpclient.InferRequestedOutput("OUTPUT0")
out0.set_shared_memory("g", a.nbytes, offset=2 * a.nbytes)
client.infer("simple", [in0, in1], outputs=[out0])
result = np.empty(2 * 16, np.int32)
runtime.memcpy(result.ctypes.data, pointer + 2 * a.nbytes, a.nbytes, runtime.memcpyDeviceToHost)
np.testing.assert_array_equal(result.reshape(2, 16), a + b)
assert client.get_cuda_shared_memory_status() == [{"name": "g", "device_id": 0, "byte_size": size}]
client.unregister_cuda_shared_memory("g")
runtime.free(pointer)
print("ok")
"""


def test_a_client_process_passes_tensors_in_device_memory(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(model_repositories=(EXAMPLES,), allow_client_shm=True)
    run = subprocess.run(
        [sys.executable, "-c", CLIENT, server.http_url], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().endswith("ok")
