"""ONNX Runtime on a GPU: one session per instance on the CUDA (or TensorRT) execution provider,
with the instance's own CUDA stream, checked to really run there, driven through IO binding."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inferd.backends.base import BackendSettings, Device, ModelInstance
from inferd.backends.cuda import CudaRuntime
from inferd.backends.ort_binding import IoBindingRunner, graph_batch_sizes
from inferd.backends.ort_options import INTER_OP_THREADS, INTRA_OP_THREADS, apply_config, int_param
from inferd.backends.ort_providers import (
    TENSORRT_EP,
    Provider,
    check_active,
    cuda_unavailable_reason,
    gpu_providers,
    ort_cuda_version,
    preload_cuda_libraries,
    trt_cache_dir,
)
from inferd.backends.staging import IoStaging
from inferd.repository.config import ModelConfig
from inferd.server.errors import invalid, unavailable

log = logging.getLogger(__name__)


def _session_options(config: ModelConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors stay visible: they explain a provider that failed
    apply_config(options, config)
    # The GPU does the work: a CPU thread pool per session would only contend (ORT's advice).
    options.intra_op_num_threads = int_param(config.parameters, INTRA_OP_THREADS, 1)
    options.inter_op_num_threads = int_param(config.parameters, INTER_OP_THREADS, 1)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtGpuInstance(ModelInstance):
    def __init__(
        self, config: ModelConfig, model_file: Path, device: Device, settings: BackendSettings
    ) -> None:
        available = ort.get_available_providers()
        reason = cuda_unavailable_reason(available, ort_cuda_version(), None)
        if reason:
            raise unavailable(reason)
        preload_cuda_libraries()
        cuda = CudaRuntime.load()
        self._cuda, self._device = cuda, device.index
        cuda.use_device(device.index)
        stream = cuda.stream(device.index)
        graphs = graph_batch_sizes(config)
        providers = gpu_providers(
            config,
            device.index,
            stream.ptr,
            lambda: trt_cache_dir(
                settings.cache_dir, model_file, ort.__version__, cuda.device_tag(device.index)
            ),
            cuda_graphs=bool(graphs),
        )
        where = f"model '{config.name}' on {device}"
        session = _open_session(model_file, config, providers, available, where)
        self.providers: list[str] = session.get_providers()
        self._stream = stream  # owned here: the session runs on it until closed
        self._runner: IoBindingRunner | None = IoBindingRunner(
            session,
            IoStaging(cuda, device.index, stream, settings.pinned_memory),
            "cuda",
            device.index,
            config,
            graphs,
        )
        self._runner.capture_graphs()
        log.info(
            "%s: onnxruntime providers %s%s",
            where,
            ", ".join(self.providers),
            f", CUDA graphs for batch sizes {list(graphs)}" if graphs else "",
        )

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._runner is not None, "execute() after close()"
        self._cuda.use_device(self._device)  # the instance thread's current device
        return self._runner.run(inputs)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None


def _open_session(
    model_file: Path,
    config: ModelConfig,
    providers: list[Provider],
    available: list[str],
    where: str,
) -> ort.InferenceSession:
    if any(name == TENSORRT_EP for name, _ in providers) and TENSORRT_EP not in available:
        raise unavailable(
            f"{where}: the config asks for the tensorrt accelerator, but this onnxruntime "
            "has no TensorRT execution provider"
        )
    try:
        session = ort.InferenceSession(
            str(model_file), sess_options=_session_options(config), providers=providers
        )
    except Exception as exc:  # ORT raises its own exception types
        raise invalid(f"{where}: failed to load {model_file}: {exc}") from None
    check_active(session.get_providers(), providers, where)
    session.disable_fallback()  # else a failing run would retry on the CPU, silently
    return session
