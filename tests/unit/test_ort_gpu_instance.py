"""The ONNX Runtime GPU instance as a whole, on a fake onnxruntime-gpu and the fake cupy: the
session it asks for, the check that the GPU provider really started, and batches through it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from inferd.backends.base import BackendSettings, Device, ModelInstance
from inferd.backends.gpu import GpuInfo
from inferd.backends.onnxruntime import OnnxRuntimeBackend
from inferd.backends.ort_gpu import OrtGpuInstance
from inferd.repository.config import ModelConfig, normalize, parse_config_text, to_model_config
from inferd.server.errors import InferdError
from tests import fake_cupy, fake_ort_gpu
from tests.models import identity_model, write_model

CONFIG = (
    'max_batch_size: 8 input [{name: "INPUT0" data_type: TYPE_FP32 dims: [4]}] '
    'output [{name: "OUTPUT0" data_type: TYPE_FP32 dims: [4]}] '
)
TENSORRT = (
    'optimization { execution_accelerators { gpu_execution_accelerator: [{name: "tensorrt"}]}} '
)


def model(tmp_path: Path, extra: str = "") -> tuple[ModelConfig, Path]:
    model_dir = write_model(tmp_path, "m", identity_model(), CONFIG + extra)
    proto = parse_config_text(CONFIG + extra, "test")
    model_file = model_dir / "1" / "model.onnx"
    OnnxRuntimeBackend.complete_config(proto, model_file, BackendSettings())
    normalize(proto, "m", 1)
    return to_model_config(proto, "onnxruntime"), model_file


def create(config: ModelConfig, model_file: Path, tmp_path: Path, gpu: int = 0) -> ModelInstance:
    settings = BackendSettings(cache_dir=tmp_path / "cache")
    return OnnxRuntimeBackend.create_instance(config, model_file, Device("gpu", gpu), settings)


def test_session_on_the_cuda_provider_with_the_instances_device_and_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cupy = fake_cupy.install(monkeypatch)
    ort_gpu = fake_ort_gpu.install(monkeypatch)
    config, model_file = model(tmp_path)
    instance = create(config, model_file, tmp_path, gpu=1)
    assert isinstance(instance, OrtGpuInstance)
    (session,) = ort_gpu.sessions
    (stream,) = cupy.streams
    assert stream.device == 1
    assert session.providers == [
        (
            "CUDAExecutionProvider",
            {
                "device_id": "1",
                "user_compute_stream": str(stream.ptr),
                "arena_extend_strategy": "kSameAsRequested",
            },
        ),
        ("CPUExecutionProvider", {}),
    ]
    assert session.options is not None and session.options.intra_op_num_threads == 1
    assert session.fallback_disabled
    assert instance.providers[0] == "CUDAExecutionProvider"

    devices: list[int] = []

    def worker() -> None:  # a fresh thread, as the instance's worker thread is
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        np.testing.assert_array_equal(instance.execute({"INPUT0": x})["OUTPUT0"], x)
        devices.append(cupy.device())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert devices == [1]  # execute made the instance's device current on its thread
    instance.close()


def test_a_cuda_provider_that_does_not_start_fails_the_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cupy.install(monkeypatch)
    fake_ort_gpu.install(monkeypatch, cuda_starts=False)
    config, model_file = model(tmp_path)
    with pytest.raises(InferdError, match="could not start CUDAExecutionProvider"):
        create(config, model_file, tmp_path)


def test_the_backend_probes_whether_cuda_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cupy.install(monkeypatch)
    gpus = GpuInfo(count=1, reason="")
    fake_ort_gpu.install(monkeypatch)
    assert OnnxRuntimeBackend.gpu_unavailable_reason(gpus) == ""
    fake_ort_gpu.install(monkeypatch, cuda_starts=False)
    reason = OnnxRuntimeBackend.gpu_unavailable_reason(gpus)
    assert reason.startswith("onnxruntime's CUDA execution provider does not start")


def test_tensorrt_provider_first_with_an_engine_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cupy.install(monkeypatch, compute_capability="90")
    ort_gpu = fake_ort_gpu.install(monkeypatch, tensorrt=True)
    config, model_file = model(tmp_path, TENSORRT)
    create(config, model_file, tmp_path)
    (session,) = ort_gpu.sessions
    names = [name for name, _ in session.providers]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cache = Path(session.providers[0][1]["trt_engine_cache_path"])
    assert cache.is_dir() and cache.parent == tmp_path / "cache" / "ort-tensorrt"
    assert cache.name.endswith("-sm90")


def test_tensorrt_asked_for_but_not_in_this_onnxruntime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cupy.install(monkeypatch)
    fake_ort_gpu.install(monkeypatch, tensorrt=False)
    config, model_file = model(tmp_path, TENSORRT)
    with pytest.raises(InferdError, match="has no TensorRT execution provider"):
        create(config, model_file, tmp_path)


def test_cuda_graphs_are_captured_when_the_instance_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cupy.install(monkeypatch)
    ort_gpu = fake_ort_gpu.install(monkeypatch)
    graphs = "dynamic_batching { preferred_batch_size: [4] } optimization { cuda { graphs: true } }"
    config, model_file = model(tmp_path, graphs)
    instance = create(config, model_file, tmp_path)
    (session,) = ort_gpu.sessions
    assert dict(session.providers[0][1])["enable_cuda_graph"] == "1"
    assert session.runs == 2 * 3  # sizes 1, 4 and 8, two runs each (allocate, capture)
    x = np.ones((5, 4), np.float32)
    np.testing.assert_array_equal(instance.execute({"INPUT0": x})["OUTPUT0"], x)
