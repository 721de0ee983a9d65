"""Instance placement from instance groups and the GPU fallback decision, through the real
repository manager and backends. GPUs are "present" by GpuInfo (what detection would find);
TensorRT and cupy are the fakes, since this machine has neither."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inferd.backends.gpu import GpuInfo
from inferd.backends.ort_providers import CUDA_EP
from inferd.backends.registry import BackendRegistry
from inferd.repository.manager import ModelRepository, ModelVersion, RepositorySettings
from tests import fake_cupy, fake_ort_gpu, fake_tensorrt
from tests.fake_tensorrt import make_plan
from tests.models import identity_model, write_model

TWO_GPUS = GpuInfo(count=2, reason="", driver_cuda=(13, 0))
IDENTITY = (
    'max_batch_size: 8 input [{name: "INPUT0" data_type: TYPE_FP32 dims: [4]}] '
    'output [{name: "OUTPUT0" data_type: TYPE_FP32 dims: [4]}] '
)
PLAN = make_plan(
    [
        {"name": "x", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 4]},
        {"name": "y", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 4], "of": "x", "scale": 2},
    ],
    profiles=[{"x": [[1, 4], [4, 4], [8, 4]]}],
)

Loader = Callable[..., Awaitable[ModelRepository]]


@pytest.fixture
async def load(tmp_path: Path) -> AsyncIterator[Loader]:
    repositories: list[ModelRepository] = []

    async def make(gpus: GpuInfo = TWO_GPUS, fallback: bool = False) -> ModelRepository:
        settings = RepositorySettings(roots=(tmp_path,), gpus=gpus, gpu_fallback_to_cpu=fallback)
        repository = ModelRepository(settings, BackendRegistry(), asyncio.get_running_loop())
        repositories.append(repository)
        await repository.load_all()
        return repository

    yield make
    for repository in repositories:
        await repository.close()


def version(repository: ModelRepository, name: str) -> ModelVersion:
    (found,) = repository.model_versions(name)
    return found


def write_plan_model(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.plan").write_bytes(PLAN)
    (repo / name / "config.pbtxt").write_text(config)


@pytest.mark.skipif(
    CUDA_EP in ort.get_available_providers(), reason="about the CPU onnxruntime wheel"
)
async def test_onnxruntime_without_its_cuda_provider_fails_or_falls_back(
    tmp_path: Path, load: Loader
) -> None:
    write_model(tmp_path, "m", identity_model(), IDENTITY + "instance_group [{kind: KIND_GPU}]")
    refused = version(await load(), "m")
    assert refused.state == "UNAVAILABLE"
    assert refused.reason == (
        "instance group 'm_0' asks for KIND_GPU, but onnxruntime has no CUDA execution "
        "provider: install onnxruntime-gpu (the inferd[gpu] extra) instead of onnxruntime "
        "(start with --gpu-fallback=cpu to run it on the CPU)"
    )
    fallback = version(await load(fallback=True), "m")
    assert fallback.state == "READY" and fallback.devices == "1 x cpu" and fallback.gpu_fallback
    assert "run on the CPU (onnxruntime has no CUDA execution provider" in fallback.reason


async def test_kind_auto_stays_on_the_cpu_when_the_backend_cannot_use_the_gpus(
    tmp_path: Path, load: Loader
) -> None:
    write_model(tmp_path, "m", identity_model(), IDENTITY)
    loaded = version(await load(), "m")
    assert loaded.state == "READY" and loaded.devices == "1 x cpu" and loaded.reason == ""
    assert loaded.config is not None
    assert loaded.config.instance_groups[0].kind == "KIND_CPU"


async def test_count_instances_on_each_listed_gpu_each_with_its_stream(
    tmp_path: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tensorrt.install(monkeypatch)
    record = fake_cupy.install(monkeypatch)
    write_plan_model(
        tmp_path,
        "plan",
        'platform: "tensorrt_plan" instance_group [{kind: KIND_GPU count: 2 gpus: [1]}]',
    )
    loaded = version(await load(), "plan")
    assert loaded.state == "READY", loaded.reason
    assert loaded.devices == "2 x gpu:1" and not loaded.gpu_fallback
    assert [s.device for s in record.streams] == [1, 1]
    assert loaded.scheduler is not None
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    outputs = await loaded.scheduler.submit({"x": x}, 2, None, time.monotonic_ns())
    np.testing.assert_array_equal(outputs["y"], 2 * x)


async def test_a_gpu_instance_loads_the_file_its_compute_capability_names(
    tmp_path: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cc_model_filenames, as Triton's backends read it: GPU 1 (9.0) loads the plan built for
    it, GPU 0 (8.0), which the map does not name, the default file."""
    fake_tensorrt.install(monkeypatch)
    fake_cupy.install(monkeypatch)
    sm90 = PLAN.replace(b'"scale": 2', b'"scale": 3')
    for gpu in (0, 1):
        name = f"on{gpu}"
        write_plan_model(
            tmp_path,
            name,
            f'platform: "tensorrt_plan" instance_group [{{kind: KIND_GPU gpus: [{gpu}]}}] '
            'cc_model_filenames { key: "9.0" value: "model_sm90.plan" }',
        )
        (tmp_path / name / "1" / "model_sm90.plan").write_bytes(sm90)
    gpus = GpuInfo(count=2, reason="", driver_cuda=(13, 0), capabilities=("8.0", "9.0"))
    repository = await load(gpus)
    x = np.ones((1, 4), dtype=np.float32)
    for name, scale in (("on0", 2), ("on1", 3)):
        loaded = version(repository, name)
        assert loaded.state == "READY", loaded.reason
        assert loaded.scheduler is not None
        outputs = await loaded.scheduler.submit({"x": x}, 1, None, time.monotonic_ns())
        np.testing.assert_array_equal(outputs["y"], scale * x)


async def test_kind_auto_means_every_gpu_when_the_backend_can_use_them(
    tmp_path: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tensorrt.install(monkeypatch)
    fake_cupy.install(monkeypatch)
    write_plan_model(tmp_path, "plan", "")
    loaded = version(await load(), "plan")
    assert loaded.state == "READY", loaded.reason
    assert loaded.devices == "1 x gpu:0, 1 x gpu:1"
    assert loaded.config is not None and loaded.config.max_batch_size == 8


async def test_a_gpu_id_past_the_visible_gpus_fails_the_load(
    tmp_path: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tensorrt.install(monkeypatch)
    fake_cupy.install(monkeypatch)
    write_plan_model(tmp_path, "plan", "instance_group [{kind: KIND_GPU gpus: [3]}]")
    loaded = version(await load(fallback=True), "plan")
    assert loaded.state == "UNAVAILABLE"
    assert "names GPU 3, but this process sees 2 GPU(s)" in loaded.reason


async def test_without_gpus_the_detection_reason_is_the_load_failure(
    tmp_path: Path, load: Loader
) -> None:
    write_model(tmp_path, "m", identity_model(), IDENTITY + "instance_group [{kind: KIND_GPU}]")
    none = GpuInfo(reason="no GPU is available: the NVIDIA driver (libcuda.so.1) is not found")
    refused = version(await load(gpus=none), "m")
    assert refused.state == "UNAVAILABLE"
    assert "but no GPU is available: the NVIDIA driver (libcuda.so.1) is not found" in (
        refused.reason
    )


async def test_onnxruntime_gpu_instances_on_every_gpu_serve_requests(
    tmp_path: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = fake_cupy.install(monkeypatch)
    sessions = fake_ort_gpu.install(monkeypatch)
    write_model(
        tmp_path, "m", identity_model(), IDENTITY + "instance_group [{kind: KIND_GPU count: 2}]"
    )
    loaded = version(await load(), "m")
    assert loaded.state == "READY", loaded.reason
    assert loaded.devices == "2 x gpu:0, 2 x gpu:1" and loaded.reason == ""
    assert sorted(s.device for s in record.streams) == [0, 0, 1, 1]
    assert len(sessions.sessions) == 4 + 1  # one per instance, and the backend's probe
    assert loaded.scheduler is not None
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    outputs = await loaded.scheduler.submit({"INPUT0": x}, 3, None, time.monotonic_ns())
    np.testing.assert_array_equal(outputs["OUTPUT0"], x)


async def test_a_cuda_provider_that_does_not_start_follows_the_fallback_setting(
    tmp_path: Path, load: Loader, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_cupy.install(monkeypatch)
    fake_ort_gpu.install(monkeypatch, cuda_starts=False)
    write_model(tmp_path, "gpu", identity_model(), IDENTITY + "instance_group [{kind: KIND_GPU}]")
    write_model(tmp_path, "auto", identity_model(), IDENTITY)
    refused = await load()
    assert version(refused, "gpu").state == "UNAVAILABLE"
    assert "onnxruntime's CUDA execution provider does not start" in version(refused, "gpu").reason
    auto = version(refused, "auto")
    assert auto.state == "READY" and auto.devices == "1 x cpu"
    assert "model 'auto': KIND_AUTO instances run on the CPU" in caplog.text
    fallback = version(await load(fallback=True), "gpu")
    assert fallback.state == "READY" and fallback.devices == "1 x cpu" and fallback.gpu_fallback
