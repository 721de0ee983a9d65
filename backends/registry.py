"""Find backends by name or platform: built-ins plus the `inferd.backends` entry point group."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points

from inferd.backends.base import Backend
from inferd.server.errors import unsupported

ENTRY_POINT_GROUP = "inferd.backends"

# Built-ins resolve without package metadata (e.g. running from a source tree); imported lazily
# so that start-up only pays for the frameworks the repository uses.
BUILTIN_BACKENDS: Mapping[str, str] = {
    "onnxruntime": "inferd.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "inferd.backends.tensorrt:TensorRtBackend",
    "python": "inferd.backends.python:PythonBackend",
    "tensorflow": "inferd.backends.tensorflow:TensorFlowBackend",
    "pytorch": "inferd.backends.pytorch:PyTorchBackend",
    "openvino": "inferd.backends.openvino:OpenVinoBackend",
    "fil": "inferd.backends.fil:FilBackend",
    "mlserver": "inferd.backends.mlserver:MLServerBackend",
}

# What to install when a built-in backend's framework is missing.
INSTALL_HINTS: Mapping[str, str] = {
    "onnxruntime": "install the inferd[cpu] extra (onnxruntime) or inferd[gpu] (onnxruntime-gpu)",
    "tensorflow": "install the inferd[tensorflow] extra (tensorflow-cpu)",
    "pytorch": "install the inferd[pytorch] extra (torch)",
    "openvino": "install the inferd[openvino] extra (openvino)",
    "fil": "install the inferd[fil] extra (treelite)",
    "mlserver": "install the inferd[mlserver] extra (mlserver, and the runtimes the models use)",
}

# Triton's platform names for the backends (config `platform:`).
PLATFORMS: Mapping[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "pytorch_libtorch": "pytorch",
    "torch_aoti": "pytorch",
}


# Default model file name -> backend, to pick a backend for a model folder without a config.
DEFAULT_MODEL_FILES: Mapping[str, str] = {
    "model.onnx": "onnxruntime",
    "model.plan": "tensorrt",
    "model.savedmodel": "tensorflow",
    "model.graphdef": "tensorflow",
    "model.py": "python",
    "model.pt": "pytorch",
    "model.xml": "openvino",
}


class BackendRegistry:
    def __init__(self, extra: Mapping[str, type[Backend]] | None = None) -> None:
        self._targets: dict[str, str] = dict(BUILTIN_BACKENDS)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._targets[ep.name] = ep.value
        self._loaded: dict[str, type[Backend]] = dict(extra or {})

    @property
    def names(self) -> list[str]:
        return sorted({*self._targets, *self._loaded})

    def backend_for_platform(self, platform: str) -> str:
        try:
            return PLATFORMS[platform]
        except KeyError:
            raise unsupported(
                f"unknown platform '{platform}'; known platforms: {', '.join(sorted(PLATFORMS))}"
            ) from None

    def get(self, name: str) -> type[Backend]:
        if name in self._loaded:
            return self._loaded[name]
        target = self._targets.get(name)
        if target is None:
            raise unsupported(
                f"unknown backend '{name}'; available backends: {', '.join(self.names)}"
            )
        module_name, _, attr = target.partition(":")
        try:
            backend: type[Backend] = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            hint = f"; {INSTALL_HINTS[name]}" if name in INSTALL_HINTS else ""
            raise unsupported(f"backend '{name}' is not installed: {exc}{hint}") from None
        self._loaded[name] = backend
        return backend

    def guess_backend(self, files: set[str]) -> str | None:
        """The backend whose default model file is present (config with no backend/platform)."""
        for filename, name in DEFAULT_MODEL_FILES.items():
            if filename in files:
                return name
        return None
