"""ONNX Runtime execution providers for GPU instances: whether CUDA can be used at all, the
provider list a config asks for (CUDA, or TensorRT over CUDA), and the check that the session
really runs on them (ORT falls back to the CPU silently when a GPU provider fails to start)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnxruntime.capi import build_and_package_info

from inferd.repository.config import ModelConfig
from inferd.server.errors import invalid, unavailable

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"

Provider = tuple[str, dict[str, str]]

# Triton's onnxruntime backend names for TensorRT settings -> TensorRT EP option names;
# options already spelt trt_* pass through unchanged.
_TRT_PARAMETERS = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "max_partition_iterations": "trt_max_partition_iterations",
    "min_subgraph_size": "trt_min_subgraph_size",
}
_PRECISION_MODES = {"FP32": {}, "FP16": {"trt_fp16_enable": "1"}, "INT8": {"trt_int8_enable": "1"}}

# The smallest ONNX model, to see whether the CUDA provider starts: FP32 [1] x -> Identity -> y
# (onnx.helper, opset 13, IR version 8, serialized).
_PROBE_MODEL = (
    b'\x08\x08\x12\x00:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n'
    b"\n\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02"
    b"\x08\x01B\x04\n\x00\x10\r"
)


def ort_cuda_version() -> tuple[int, int] | None:
    """The CUDA version the installed onnxruntime was built for (onnxruntime-gpu only)."""
    raw = getattr(build_and_package_info, "cuda_version", "")
    major, _, minor = str(raw).partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() else None


def cuda_unavailable_reason(
    available: Sequence[str],
    ort_cuda: tuple[int, int] | None,
    driver_cuda: tuple[int, int] | None,
    cupy_installed: bool | None = None,
) -> str:
    """Why GPU sessions cannot start ('' = they can), from facts cheap to read."""
    if CUDA_EP not in available:
        return (
            "onnxruntime has no CUDA execution provider: install onnxruntime-gpu "
            "(the inferd[gpu] extra) instead of onnxruntime"
        )
    # CUDA minor versions are compatible with each other; a major version needs its driver.
    if ort_cuda is not None and driver_cuda is not None and driver_cuda[0] < ort_cuda[0]:
        return (
            f"the NVIDIA driver is too old: it supports CUDA {driver_cuda[0]}.{driver_cuda[1]}, "
            f"but onnxruntime-gpu is built for CUDA {ort_cuda[0]}.{ort_cuda[1]} (upgrade the "
            "driver, or install an onnxruntime-gpu built for the driver's CUDA)"
        )
    if cupy_installed is None:
        cupy_installed = importlib.util.find_spec("cupy") is not None
    if not cupy_installed:
        return (
            "cupy is not installed (GPU instances use it for streams and pinned buffers): "
            "install the inferd[gpu] extra"
        )
    return ""


def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels (onnxruntime-gpu's cuda and
    cudnn extras, or PyTorch's) before a CUDA session starts: they are not on the loader's path,
    and without them the CUDA provider does not start. Libraries already loaded cost nothing.
    onnxruntime prints what it could not load; that goes to the log instead of stdout."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None or CUDA_EP not in ort.get_available_providers():
        return
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        preload()
    if printed.getvalue().strip():
        log.warning("onnxruntime's CUDA library preload: %s", " ".join(printed.getvalue().split()))


def cuda_start_problem() -> str:
    """Why onnxruntime's CUDA provider does not start here ('' = it does), found by starting
    it on a tiny model: when its CUDA or cuDNN libraries cannot load, ORT falls back to the CPU
    with only an ERROR log line, so asking is the only way to know."""
    preload_cuda_libraries()
    session = ort.InferenceSession(_PROBE_MODEL, providers=[CUDA_EP, "CPUExecutionProvider"])
    if session.get_providers()[0] == CUDA_EP:
        return ""
    cuda = ort_cuda_version()
    built_for = f" (built for CUDA {cuda[0]}.{cuda[1]})" if cuda else ""
    return (
        f"onnxruntime's CUDA execution provider does not start{built_for}: its CUDA or cuDNN "
        "libraries are missing or unusable (onnxruntime's error is in the log)"
    )


def gpu_providers(
    config: ModelConfig,
    device_id: int,
    stream_ptr: int,
    trt_cache_dir: Callable[[], Path],
    cuda_graphs: bool,
) -> list[Provider]:
    """TensorRT (when asked for) over CUDA, both on `device_id` and the instance's stream.
    CPU comes last only for the nodes the GPU providers cannot run."""
    common = {"device_id": str(device_id), "user_compute_stream": str(stream_ptr)}
    # kSameAsRequested: several instances share a GPU, so do not over-reserve arena memory.
    cuda = {**common, "arena_extend_strategy": "kSameAsRequested"}
    trt: dict[str, str] | None = None
    for name, parameters in _gpu_accelerators(config):
        if name == "cuda":
            cuda.update(parameters)  # forwarded verbatim, as Triton does
        else:
            trt = {**common, "trt_engine_cache_enable": "1", **_trt_options(parameters)}
            if "trt_engine_cache_path" not in trt:  # hashing the model costs: only if needed
                trt["trt_engine_cache_path"] = str(trt_cache_dir())
    if cuda_graphs:
        cuda["enable_cuda_graph"] = "1"
    providers: list[Provider] = [(CUDA_EP, cuda), ("CPUExecutionProvider", {})]
    return providers if trt is None else [(TENSORRT_EP, trt), *providers]


def check_active(active: Sequence[str], providers: Sequence[Provider], where: str) -> None:
    """Fail unless every GPU provider asked for is active: ORT drops a provider that cannot
    start (missing CUDA/cuDNN/TensorRT libraries) with only an ERROR log line."""
    missing = [n for n, _ in providers if n != "CPUExecutionProvider" and n not in active]
    if missing:
        raise unavailable(
            f"{where}: onnxruntime could not start {', '.join(missing)} (active providers: "
            f"{', '.join(active) or 'none'}); the server log has onnxruntime's reason, e.g. "
            "missing CUDA or cuDNN libraries"
        )


def trt_cache_dir(cache_root: Path, model_file: Path, ort_version: str, device_tag: str) -> Path:
    """A cache folder per model content, onnxruntime version and GPU model, since TensorRT
    engines are valid for none other; created here (the provider makes only the last level)."""
    with model_file.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    folder = cache_root / "ort-tensorrt" / f"{digest}-ort{ort_version}-{device_tag}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _gpu_accelerators(config: ModelConfig) -> list[tuple[str, dict[str, str]]]:
    accelerators: Any = config.proto.optimization.execution_accelerators
    found = []
    for accelerator in accelerators.gpu_execution_accelerator:
        if accelerator.name not in ("tensorrt", "cuda"):
            raise invalid(
                f"model '{config.name}': unknown gpu_execution_accelerator "
                f"'{accelerator.name}' (onnxruntime knows 'tensorrt' and 'cuda')"
            )
        found.append((accelerator.name, dict(accelerator.parameters)))
    return found


def _trt_options(parameters: Mapping[str, str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in parameters.items():
        if key == "precision_mode":
            if value not in _PRECISION_MODES:
                raise invalid(
                    f"tensorrt accelerator: precision_mode '{value}' is not one of "
                    f"{', '.join(_PRECISION_MODES)}"
                )
            options.update(_PRECISION_MODES[value])
        elif key in _TRT_PARAMETERS:
            options[_TRT_PARAMETERS[key]] = value
        elif key.startswith("trt_"):
            options[key] = value
        else:
            raise invalid(
                f"tensorrt accelerator: unknown parameter '{key}' (known: precision_mode, "
                f"{', '.join(_TRT_PARAMETERS)}, and TensorRT execution provider options trt_*)"
            )
    return options
