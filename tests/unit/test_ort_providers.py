"""ONNX Runtime GPU providers: when CUDA can be used, what a config asks for, and the check
that a session really runs on the GPU providers asked for."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from inferd.backends.base import default_cache_dir
from inferd.backends.gpu import GpuInfo
from inferd.backends.onnxruntime import OnnxRuntimeBackend
from inferd.backends.ort_providers import (
    CUDA_EP,
    TENSORRT_EP,
    check_active,
    cuda_unavailable_reason,
    gpu_providers,
    preload_cuda_libraries,
    trt_cache_dir,
)
from inferd.repository.config import ModelConfig, normalize, parse_config_text, to_model_config
from inferd.server.errors import InferdError
from tests.models import identity_model

GPU_BUILD = [TENSORRT_EP, CUDA_EP, "CPUExecutionProvider"]


def config(extra: str = "") -> ModelConfig:
    text = (
        'name: "m" max_batch_size: 8 input [{name: "x" data_type: TYPE_FP32 dims: [4]}] '
        'output [{name: "y" data_type: TYPE_FP32 dims: [4]}] ' + extra
    )
    proto = parse_config_text(text, "test")
    normalize(proto, "m", 1)
    return to_model_config(proto, "onnxruntime")


def test_the_reason_names_what_the_installed_onnxruntime_lacks() -> None:
    reason = OnnxRuntimeBackend.gpu_unavailable_reason(GpuInfo(count=1, reason=""))
    if CUDA_EP not in ort.get_available_providers():  # the CPU wheel (CI)
        assert reason == (
            "onnxruntime has no CUDA execution provider: install onnxruntime-gpu "
            "(the inferd[gpu] extra) instead of onnxruntime"
        )
        return
    # onnxruntime-gpu lists its CUDA provider everywhere; what counts is whether it starts.
    model = identity_model().SerializeToString()
    session = ort.InferenceSession(model, providers=[CUDA_EP, "CPUExecutionProvider"])
    if session.get_providers()[0] == CUDA_EP:
        assert reason == ""
    else:
        assert reason.startswith("onnxruntime's CUDA execution provider does not start")
        assert "CUDA or cuDNN libraries are missing" in reason


def test_preloading_the_cuda_libraries_writes_nothing_to_stdout(
    capfd: pytest.CaptureFixture[str],
) -> None:
    preload_cuda_libraries()  # onnxruntime-gpu prints what it cannot load; the log gets it
    assert capfd.readouterr().out == ""


def test_a_driver_older_than_onnxruntimes_cuda_is_named() -> None:
    reason = cuda_unavailable_reason(GPU_BUILD, (13, 0), (12, 4), cupy_installed=True)
    assert "driver is too old" in reason and "CUDA 12.4" in reason and "CUDA 13.0" in reason
    # Minor versions are compatible, and an unknown version is no reason to refuse.
    assert cuda_unavailable_reason(GPU_BUILD, (13, 1), (13, 0), cupy_installed=True) == ""
    assert cuda_unavailable_reason(GPU_BUILD, None, (12, 0), cupy_installed=True) == ""


def test_missing_cupy_is_named() -> None:
    reason = cuda_unavailable_reason(GPU_BUILD, (13, 0), (13, 0), cupy_installed=False)
    assert "cupy is not installed" in reason and "inferd[gpu]" in reason


def test_cuda_provider_runs_on_the_instance_device_and_stream() -> None:
    providers = gpu_providers(config(), 1, 0xABC, _no_cache, cuda_graphs=False)
    assert providers == [
        (
            CUDA_EP,
            {
                "device_id": "1",
                "user_compute_stream": str(0xABC),
                "arena_extend_strategy": "kSameAsRequested",
            },
        ),
        ("CPUExecutionProvider", {}),
    ]


def test_cuda_accelerator_parameters_pass_through_and_graphs_switch_on() -> None:
    cuda = (
        'optimization { execution_accelerators { gpu_execution_accelerator: [{name: "cuda" '
        'parameters {key: "cudnn_conv_algo_search" value: "HEURISTIC"}}]}}'
    )
    (name, options), _ = gpu_providers(config(cuda), 0, 7, _no_cache, cuda_graphs=True)
    assert name == CUDA_EP
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["enable_cuda_graph"] == "1"


def test_tensorrt_accelerator_comes_first_with_an_engine_cache(tmp_path: Path) -> None:
    trt = (
        'optimization { execution_accelerators { gpu_execution_accelerator: [{name: "tensorrt" '
        'parameters {key: "precision_mode" value: "FP16"} '
        'parameters {key: "max_workspace_size_bytes" value: "1073741824"} '
        'parameters {key: "trt_builder_optimization_level" value: "5"}}]}}'
    )
    providers = gpu_providers(config(trt), 0, 7, lambda: tmp_path, cuda_graphs=False)
    assert [name for name, _ in providers] == [TENSORRT_EP, CUDA_EP, "CPUExecutionProvider"]
    options = providers[0][1]
    assert options == {
        "device_id": "0",
        "user_compute_stream": "7",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path),
        "trt_fp16_enable": "1",
        "trt_max_workspace_size": "1073741824",
        "trt_builder_optimization_level": "5",
    }


@pytest.mark.parametrize(
    ("accelerator", "message"),
    [
        ('{name: "openvino"}', "unknown gpu_execution_accelerator 'openvino'"),
        (
            '{name: "tensorrt" parameters {key: "precision_mode" value: "FP64"}}',
            "precision_mode 'FP64'",
        ),
        ('{name: "tensorrt" parameters {key: "speed" value: "max"}}', "unknown parameter 'speed'"),
    ],
)
def test_bad_accelerators_fail_the_load(accelerator: str, message: str) -> None:
    text = (
        f"optimization {{ execution_accelerators {{ gpu_execution_accelerator: [{accelerator}]}}}}"
    )
    with pytest.raises(InferdError, match=message):
        gpu_providers(config(text), 0, 7, _no_cache, cuda_graphs=False)


def test_a_session_that_fell_back_to_cpu_is_refused() -> None:
    """onnxruntime-gpu on a machine whose CUDA libraries fail to load answers get_providers()
    with only the CPU provider, and no exception: that must fail the load."""
    providers = gpu_providers(config(), 0, 7, _no_cache, cuda_graphs=False)
    with pytest.raises(InferdError, match="could not start CUDAExecutionProvider") as caught:
        check_active(["CPUExecutionProvider"], providers, "model 'm' on gpu:0")
    assert "model 'm' on gpu:0" in caught.value.message
    check_active([CUDA_EP, "CPUExecutionProvider"], providers, "model 'm' on gpu:0")


def test_a_session_without_its_tensorrt_provider_is_refused(tmp_path: Path) -> None:
    trt = (
        'optimization { execution_accelerators { gpu_execution_accelerator: [{name: "tensorrt"}]}}'
    )
    providers = gpu_providers(config(trt), 0, 7, lambda: tmp_path, cuda_graphs=False)
    with pytest.raises(InferdError, match="TensorrtExecutionProvider"):
        check_active([CUDA_EP, "CPUExecutionProvider"], providers, "m")


def test_engine_cache_folder_follows_model_content_ort_version_and_gpu(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"one")
    first = trt_cache_dir(tmp_path / "cache", model, "1.31.1", "sm90")
    assert first.parent == tmp_path / "cache" / "ort-tensorrt" and first.is_dir()
    assert trt_cache_dir(tmp_path / "cache", model, "1.31.1", "sm90") == first
    assert trt_cache_dir(tmp_path / "cache", model, "1.32.0", "sm90") != first
    assert trt_cache_dir(tmp_path / "cache", model, "1.31.1", "sm100") != first
    model.write_bytes(b"two")
    assert trt_cache_dir(tmp_path / "cache", model, "1.31.1", "sm90") != first


def _no_cache() -> Path:
    raise AssertionError("the engine cache folder is only computed for TensorRT")


def test_cache_folder_defaults_follow_xdg_then_home_then_tmp() -> None:
    assert default_cache_dir({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == Path("/c/inferd")
    assert default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/inferd")
    assert default_cache_dir({}).name == "inferd-cache"
