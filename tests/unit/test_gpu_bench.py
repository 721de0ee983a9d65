"""The GPU benchmark's parts that run without a GPU: its model, and its refusal to run here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_bench.py"


def load_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_model_has_resnet50s_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrowed 16x so that it builds fast; the full width has ResNet-50's 25.5 M parameters."""
    model = onnx.load_from_string(load_script(monkeypatch).build_model(width_divisor=16))
    assert sum(1 for node in model.graph.node if node.op_type == "Conv") == 53
    assert sum(1 for node in model.graph.node if node.op_type == "Add") == 16
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    (y,) = session.run(None, {"input": x})
    assert y.shape == (2, 1000) and np.isfinite(y).all()


def test_without_cuda_it_fails_with_a_clear_message() -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return  # onnxruntime-gpu here: the message would depend on the hardware
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--duration", "0.1"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "gpu_bench needs a CUDA GPU: no CUDA" in done.stderr
