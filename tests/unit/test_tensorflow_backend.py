"""The TensorFlow backend's parts: parameters, signature choice, GPU placement (never a silent
CPU) and the process-wide thread pools. The parts that need TensorFlow skip without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferd.backends.base import BackendSettings, Device
from inferd.backends.gpu import GpuInfo
from inferd.backends.tensorflow_autocomplete import (
    SERVE_TAG,
    TfParameters,
    parse_parameters,
    pick_signature,
)
from inferd.repository.config import parse_config_text, to_model_config
from inferd.server.errors import ErrorCode, InferdError
from tests.conftest import REPO_ROOT


def test_parameters_use_tritons_names() -> None:
    assert parse_parameters({}) == TfParameters(graph_tag=SERVE_TAG)
    parsed = parse_parameters(
        {
            "TF_SIGNATURE_DEF": "predict",
            "TF_GRAPH_TAG": "gpu",
            "TF_NUM_INTRA_THREADS": "3",
            "TF_NUM_INTER_THREADS": "0",  # 0: TensorFlow's own choice, as in Triton
            "TF_INIT_OPS_FILE": "init.json",
        }
    )
    assert parsed == TfParameters("predict", "gpu", 3, 0, "init.json")
    for bad in ("-1", "two"):
        with pytest.raises(InferdError, match="TF_NUM_INTRA_THREADS"):
            parse_parameters({"TF_NUM_INTRA_THREADS": bad})


def test_signature_choice_follows_triton() -> None:
    internal = "__saved_model_init_op"
    assert pick_signature(["serving_default", "other", internal], "") == "serving_default"
    assert pick_signature(["serving_default", "other"], "other") == "other"
    # No serving_default: the first other serving signature (Triton takes any one).
    assert pick_signature([internal, "b", "a"], "") == "a"
    with pytest.raises(InferdError, match=r"no signature 'x'.*a, serving_default"):
        pick_signature(["serving_default", "a", internal], "x")
    with pytest.raises(InferdError, match="no serving signature"):
        pick_signature([internal], "")


# The rest needs TensorFlow itself.


def _add_model(tmp_path: Path) -> Path:
    pytest.importorskip("tensorflow")
    from tests.tf_models import add_matmul_model

    model_dir = tmp_path / "add"
    add_matmul_model(model_dir / "1" / "model.savedmodel")
    (model_dir / "config.pbtxt").write_text(
        'name: "add"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 4\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] },'
        ' { name: "INPUT1" data_type: TYPE_FP32 dims: [4] }]\n'
        'output [{ name: "SUM" data_type: TYPE_FP32 dims: [4] }]\n'
        'parameters { key: "TF_NUM_INTRA_THREADS" value { string_value: "1" } }\n'
        'parameters { key: "TF_NUM_INTER_THREADS" value { string_value: "3" } }\n'
    )
    return model_dir


def test_a_cpu_only_tensorflow_never_runs_a_gpu_instance(tmp_path: Path) -> None:
    """tensorflow-cpu on a machine with GPUs: the backend says why it cannot run KIND_GPU
    (the loader then falls back or fails, as --gpu-fallback says), and an instance placed on
    a GPU anyway is an error, not a silent CPU run."""
    tf = pytest.importorskip("tensorflow")
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees a GPU here")
    from inferd.backends.tensorflow import TensorFlowBackend

    reason = TensorFlowBackend.gpu_unavailable_reason(GpuInfo(count=1, reason=""))
    assert "CUDA" in reason or "no usable GPU" in reason
    model_dir = _add_model(tmp_path)
    config_text = (model_dir / "config.pbtxt").read_text()
    config = to_model_config(parse_config_text(config_text, "test"), "tensorflow")
    path = model_dir / "1" / "model.savedmodel"
    with pytest.raises(InferdError) as caught:
        TensorFlowBackend.create_instance(config, path, Device("gpu", 0), BackendSettings())
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert "GPU 0" in caught.value.message and "TensorFlow sees 0 GPU(s)" in caught.value.message


def test_the_first_model_sets_tensorflows_thread_pools(tmp_path: Path) -> None:
    """TensorFlow's pools are process-wide: a fresh process (as a server is) takes the first
    model's TF_NUM_INTRA_THREADS / TF_NUM_INTER_THREADS."""
    model_dir = _add_model(tmp_path)
    script = f"""
import json
from pathlib import Path
import numpy as np
import tensorflow as tf
from inferd.backends.base import BackendSettings, Device
from inferd.backends.tensorflow import TensorFlowBackend
from inferd.repository.config import normalize, parse_config_text, to_model_config
text = Path({str(model_dir / "config.pbtxt")!r}).read_text()
proto = parse_config_text(text, "test")
normalize(proto, "add", 0)
config = to_model_config(proto, "tensorflow")
path = Path({str(model_dir / "1" / "model.savedmodel")!r})
instance = TensorFlowBackend.create_instance(config, path, Device("cpu"), BackendSettings())
ones = np.ones((2, 4), np.float32)
out = instance.execute({{"INPUT0": ones, "INPUT1": ones}})
print(json.dumps([
    tf.config.threading.get_intra_op_parallelism_threads(),
    tf.config.threading.get_inter_op_parallelism_threads(),
    out["SUM"].tolist(),
]))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=90
    )
    assert done.returncode == 0, done.stderr[-2000:]
    intra, inter, out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (intra, inter) == (1, 3)
    assert out == [[2.0] * 4] * 2
