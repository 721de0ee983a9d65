"""GPU tests run only where onnxruntime really creates a CUDA session: onnxruntime-gpu reports
its CUDA provider even without a GPU, and then falls back to the CPU silently."""

from __future__ import annotations

import functools
import importlib.util

import pytest

from inferd.backends.ort_providers import preload_cuda_libraries
from tests.models import identity_model


@functools.cache
def cuda_unavailable() -> str:
    """Why this machine cannot run the GPU tests ('' = it can)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDA execution provider (onnxruntime-gpu is not installed)"
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed"
    preload_cuda_libraries()  # as the server does before its first CUDA session
    session = ort.InferenceSession(
        identity_model().SerializeToString(),
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return "the CUDA execution provider does not start here (no GPU, or CUDA libraries)"
    return ""


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    reason = cuda_unavailable()
    if reason:
        pytest.skip(f"GPU test: {reason}")
