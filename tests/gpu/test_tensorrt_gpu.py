"""The TensorRT backend with real TensorRT: a plan built here from an ONNX model (needs the full
TensorRT with its builder, which pip rarely installs: skipped without it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from inferd.backends.base import BackendSettings, Device
from inferd.backends.tensorrt import TensorRtBackend
from inferd.repository.config import normalize, parse_config_text, to_model_config
from tests.models import conv_model, nonzero_model

pytestmark = pytest.mark.gpu


def build_plan(trt: Any, onnx_bytes: bytes, batching: bool = True) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise AssertionError(f"TensorRT cannot parse the model: {errors}")
    config = builder.create_builder_config()
    if batching:
        profile = builder.create_optimization_profile()
        profile.set_shape("input", (1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))
        config.add_optimization_profile(profile)
    return bytes(builder.build_serialized_network(network, config))


def tensorrt_with_builder() -> Any:
    trt = pytest.importorskip("tensorrt")
    if not hasattr(trt, "Builder"):
        pytest.skip("this TensorRT has no builder (lean runtime)")
    return trt


def test_plan_runs_and_agrees_with_onnxruntime(tmp_path: Path) -> None:
    trt = tensorrt_with_builder()
    plan_file = tmp_path / "model.plan"
    plan_file.write_bytes(build_plan(trt, conv_model().SerializeToString()))
    proto = parse_config_text("", "test")
    TensorRtBackend.complete_config(proto, plan_file, BackendSettings())
    assert proto.max_batch_size == 8
    normalize(proto, "conv", 1)
    config = to_model_config(proto, "tensorrt")
    instance = TensorRtBackend.create_instance(
        config, plan_file, Device("gpu", 0), BackendSettings()
    )
    cpu = ort.InferenceSession(conv_model().SerializeToString(), providers=["CPUExecutionProvider"])
    for size in (1, 5, 8):
        x = np.random.default_rng(size).standard_normal((size, 3, 16, 16)).astype(np.float32)
        got = instance.execute({"input": x})["output"]
        np.testing.assert_allclose(got, cpu.run(None, {"input": x})[0], rtol=1e-2, atol=1e-3)
    instance.close()


def test_an_output_whose_shape_the_data_decides(tmp_path: Path) -> None:
    """NonZero: TensorRT sizes "indices" only while it runs; the instance's output allocator
    gives it memory then, and the answer has the shape TensorRT reports."""
    trt = tensorrt_with_builder()
    plan_file = tmp_path / "model.plan"
    plan_file.write_bytes(build_plan(trt, nonzero_model().SerializeToString(), batching=False))
    proto = parse_config_text("", "test")
    TensorRtBackend.complete_config(proto, plan_file, BackendSettings())
    assert proto.max_batch_size == 0 and list(proto.output[0].dims) == [2, -1]
    normalize(proto, "nonzero", 1)
    instance = TensorRtBackend.create_instance(
        to_model_config(proto, "tensorrt"), plan_file, Device("gpu", 0), BackendSettings()
    )
    rng = np.random.default_rng(7)
    for kept in (0.0, 0.3, 1.0):  # none, some, all of the elements
        x = (rng.random((4, 4)) < kept).astype(np.float32) * rng.random((4, 4)).astype(np.float32)
        got = instance.execute({"x": x})["indices"]
        np.testing.assert_array_equal(got, np.array(np.nonzero(x), dtype=np.int64))
    instance.close()
