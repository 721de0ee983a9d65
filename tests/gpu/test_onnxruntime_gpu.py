"""ONNX Runtime on a real GPU: sessions on the CUDA provider, IO binding and CUDA graphs,
concurrent instances behind a real server, results equal to the CPU's."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from inferd.backends.base import BackendSettings, Device, ModelInstance
from inferd.backends.onnxruntime import OnnxRuntimeBackend
from inferd.backends.ort_gpu import OrtGpuInstance
from inferd.repository.config import ModelConfig, normalize, parse_config_text, to_model_config
from tests.conftest import RunningServer
from tests.models import conv_model, write_model

pytestmark = pytest.mark.gpu

CONFIG = (
    'max_batch_size: 8 input [{name: "input" data_type: TYPE_FP32 dims: [3, 16, 16]}] '
    'output [{name: "output" data_type: TYPE_FP32 dims: [10]}] '
)
GRAPHS = "dynamic_batching { preferred_batch_size: [4] } optimization { cuda { graphs: true } } "
# ORT's CUDA provider may use TF32 for FP32 convolutions: close to the CPU, not equal.
RTOL, ATOL = 1e-2, 1e-3


def model(tmp_path: Path, extra: str = "") -> tuple[ModelConfig, Path]:
    model_dir = write_model(tmp_path, "conv", conv_model(), CONFIG + extra)
    proto = parse_config_text(CONFIG + extra, "test")
    model_file = model_dir / "1" / "model.onnx"
    OnnxRuntimeBackend.complete_config(proto, model_file, BackendSettings())
    normalize(proto, "conv", 1)
    return to_model_config(proto, "onnxruntime"), model_file


def instance(config: ModelConfig, model_file: Path, device: Device) -> ModelInstance:
    return OnnxRuntimeBackend.create_instance(config, model_file, device, BackendSettings())


def batch(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((size, 3, 16, 16)).astype(np.float32)


def test_sessions_run_on_the_cuda_provider_and_agree_with_the_cpu(tmp_path: Path) -> None:
    config, model_file = model(tmp_path)
    gpu = instance(config, model_file, Device("gpu", 0))
    cpu = instance(config, model_file, Device("cpu"))
    assert isinstance(gpu, OrtGpuInstance)
    assert gpu.providers[0] == "CUDAExecutionProvider"
    for size in (1, 3, 8, 2):  # buffers grow, then are reused
        x = batch(size, seed=size)
        got = gpu.execute({"input": x})["output"]
        np.testing.assert_allclose(got, cpu.execute({"input": x})["output"], rtol=RTOL, atol=ATOL)
    gpu.close()
    cpu.close()


def test_cuda_graphs_pad_batches_and_agree_with_the_cpu(tmp_path: Path) -> None:
    config, model_file = model(tmp_path, GRAPHS)
    gpu = instance(config, model_file, Device("gpu", 0))
    cpu = instance(config, model_file, Device("cpu"))
    for size in (1, 2, 4, 7, 8, 3):  # graphs for 1, 4 and 8: 2, 7 and 3 run padded
        x = batch(size, seed=size)
        got = gpu.execute({"input": x})["output"]
        assert got.shape == (size, 10)
        np.testing.assert_allclose(got, cpu.execute({"input": x})["output"], rtol=RTOL, atol=ATOL)
    gpu.close()


def test_instances_on_every_gpu(tmp_path: Path) -> None:
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if count < 2:
        pytest.skip("needs two GPUs")
    config, model_file = model(tmp_path)
    reference = instance(config, model_file, Device("cpu")).execute({"input": batch(4)})
    for index in range(count):
        gpu = instance(config, model_file, Device("gpu", index))
        got = gpu.execute({"input": batch(4)})["output"]
        np.testing.assert_allclose(got, reference["output"], rtol=RTOL, atol=ATOL)
        gpu.close()


def test_concurrent_instances_behind_the_server(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    extra = "dynamic_batching {} instance_group [{kind: KIND_GPU count: 2}]"
    write_model(tmp_path, "conv", conv_model(), CONFIG + extra)
    server = server_factory(model_repositories=(tmp_path,))  # no fallback: READY = on GPU
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        (entry,) = client.get_model_repository_index()
    finally:
        client.close()
    assert entry["state"] == "READY" and not entry.get("reason")
    cpu = ort.InferenceSession(conv_model().SerializeToString(), providers=["CPUExecutionProvider"])

    def request(seed: int) -> None:
        x = batch(1 + seed % 4, seed)
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            got = client.infer("conv", [tensor]).as_numpy("output")
        finally:
            client.close()
        np.testing.assert_allclose(got, cpu.run(None, {"input": x})[0], rtol=RTOL, atol=ATOL)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(request, range(64)))
