"""The TensorRT backend against a fake `tensorrt` module and the fake cupy: engine loading,
config completion from the engine, profile selection, binding by name, device placement."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.backends.base import BackendSettings, Device
from inferd.backends.gpu import GpuInfo
from inferd.backends.pinned_memory import PinnedMemoryPool
from inferd.backends.tensorrt import TensorRtBackend, TensorRtInstance
from inferd.backends.trt_engine import EngineIo, describe, load_engine, load_tensorrt
from inferd.repository.config import (
    ModelConfig,
    OutputOrder,
    normalize,
    parse_config_text,
    to_model_config,
)
from inferd.server.errors import InferdError
from tests import fake_cupy, fake_tensorrt
from tests.fake_tensorrt import make_plan

# A batching engine: two profiles (batch 1..4 and 5..16), an output computed from the input
# (2x) and one that the config may leave out (3x).
BATCHING = make_plan(
    [
        {"name": "x", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 4]},
        {"name": "y", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 4], "of": "x", "scale": 2},
        {"name": "z", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 4], "of": "x", "scale": 3},
    ],
    profiles=[{"x": [[1, 4], [2, 4], [4, 4]]}, {"x": [[5, 4], [8, 4], [16, 4]]}],
)
# A fixed-shape engine: it does not batch.
FIXED = make_plan(
    [
        {"name": "a", "mode": "INPUT", "dtype": "INT32", "shape": [2, 3]},
        {"name": "b", "mode": "OUTPUT", "dtype": "INT32", "shape": [2, 3], "of": "a", "scale": 1},
    ]
)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> tuple[fake_tensorrt.Calls, fake_cupy.Record]:
    return fake_tensorrt.install(monkeypatch), fake_cupy.install(monkeypatch)


def write_plan(tmp_path: Path, plan: bytes) -> Path:
    path = tmp_path / "model.plan"
    path.write_bytes(plan)
    return path


def completed(plan_file: Path, text: str = "", gpus: int = 1) -> ModelConfig:
    proto = parse_config_text(text, "test")
    TensorRtBackend.complete_config(proto, plan_file, BackendSettings())
    normalize(proto, "m", gpus)
    return to_model_config(proto, "tensorrt")


def engine_io(plan_file: Path) -> EngineIo:
    trt = load_tensorrt()
    return describe(trt, load_engine(trt, plan_file).engine, plan_file)


def test_engine_description(fakes: Any, tmp_path: Path) -> None:
    io = engine_io(write_plan(tmp_path, BATCHING))
    assert [(s.name, s.datatype, s.shape) for s in io.inputs] == [("x", "FP32", (-1, 4))]
    assert [s.name for s in io.outputs] == ["y", "z"]
    assert [(p.min["x"], p.max["x"]) for p in io.profiles] == [((1, 4), (4, 4)), ((5, 4), (16, 4))]
    assert io.max_batch_size == 16
    assert engine_io(write_plan(tmp_path, FIXED)).max_batch_size == 0


def test_profile_selection_keeps_the_current_profile_when_it_fits(
    fakes: Any, tmp_path: Path
) -> None:
    io = engine_io(write_plan(tmp_path, BATCHING))
    assert io.select_profile({"x": (3, 4)}, current=0) == 0
    assert io.select_profile({"x": (8, 4)}, current=0) == 1
    assert io.select_profile({"x": (16, 4)}, current=1) == 1
    with pytest.raises(InferdError, match=r"no optimization profile .* x \[17, 4\]") as caught:
        io.select_profile({"x": (17, 4)}, current=0)
    assert "profile 1: x [5, 4]..[16, 4]" in caught.value.message


def test_a_bad_plan_fails_with_tensorrts_own_reason(fakes: Any, tmp_path: Path) -> None:
    with pytest.raises(InferdError, match=r"cannot deserialize .*magic tag mismatch"):
        engine_io(write_plan(tmp_path, b"not a plan"))


def test_shape_tensors_are_refused(fakes: Any, tmp_path: Path) -> None:
    plan = make_plan(
        [{"name": "s", "mode": "INPUT", "dtype": "INT32", "shape": [2]}], shape_tensors=["s"]
    )
    with pytest.raises(InferdError, match="shape tensor 's' is not supported"):
        engine_io(write_plan(tmp_path, plan))


def test_config_is_completed_from_the_engine(fakes: Any, tmp_path: Path) -> None:
    config = completed(write_plan(tmp_path, BATCHING))
    assert config.platform == "tensorrt_plan"
    assert config.max_batch_size == 16 and config.dynamic_batching is not None
    assert [(t.name, t.datatype, t.dims) for t in (*config.inputs, *config.outputs)] == [
        ("x", "FP32", (4,)),
        ("y", "FP32", (4,)),
        ("z", "FP32", (4,)),
    ]
    fixed = completed(write_plan(tmp_path, FIXED))
    assert fixed.max_batch_size == 0 and fixed.inputs[0].dims == (2, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: 32", "max_batch_size 32 is more than the engine"),
        (
            'max_batch_size: 4 input [{name: "x" data_type: TYPE_FP16 dims: [4]}]',
            "config data_type TYPE_FP16 does not match the model's TYPE_FP32",
        ),
        (
            'max_batch_size: 4 output [{name: "w" data_type: TYPE_FP32 dims: [4]}]',
            "output 'w' in the config is not in the model",
        ),
    ],
)
def test_config_must_agree_with_the_engine(
    fakes: Any, tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(InferdError, match=message):
        completed(write_plan(tmp_path, BATCHING), text)


def test_instance_runs_batches_on_its_device_and_stream(fakes: Any, tmp_path: Path) -> None:
    calls, record = fakes
    plan_file = write_plan(tmp_path, BATCHING)
    config = completed(plan_file, 'max_batch_size: 16 output [{name: "y"}]')
    instance = TensorRtBackend.create_instance(
        config, plan_file, Device("gpu", 1), BackendSettings()
    )
    context = calls.contexts[-1]
    assert [s.device for s in record.streams] == [1]
    for batch in (3, 8, 2):
        x = np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)
        outputs = instance.execute({"x": x})
        assert list(outputs) == ["y"]  # z is bound (TensorRT needs it) but not returned
        np.testing.assert_array_equal(outputs["y"], 2 * x)
    assert context.profile_switches == [1, 0]  # 8 needs profile 1, 2 fits profile 0 again
    assert {device for device, _ in record.device_allocations} == {1}
    assert record.streams[0].synchronized == 3
    instance.close()


def test_outputs_come_in_the_engines_order_whatever_the_configs(fakes: Any, tmp_path: Path) -> None:
    """Triton's TensorRT backend adds outputs to the answer by binding index, and answers
    list them so (OutputOrder.RETURNED)."""
    plan_file = write_plan(tmp_path, BATCHING)
    config = completed(plan_file, 'max_batch_size: 16 output [{name: "z"}, {name: "y"}]')
    assert TensorRtBackend.output_order is OutputOrder.RETURNED
    instance = TensorRtBackend.create_instance(
        config, plan_file, Device("gpu", 0), BackendSettings()
    )
    assert list(instance.execute({"x": np.ones((2, 4), np.float32)})) == ["y", "z"]
    instance.close()


def test_fixed_engine_runs_without_a_batch_dim(fakes: Any, tmp_path: Path) -> None:
    plan_file = write_plan(tmp_path, FIXED)
    instance = TensorRtInstance(
        completed(plan_file),
        plan_file,
        Device("gpu", 0),
        load_tensorrt(),
        _cuda(),
        PinnedMemoryPool(),
    )
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    np.testing.assert_array_equal(instance.execute({"a": a})["b"], a)


def test_shapes_outside_every_profile_fail_the_batch_only(fakes: Any, tmp_path: Path) -> None:
    plan_file = write_plan(tmp_path, BATCHING)
    instance = TensorRtBackend.create_instance(
        completed(plan_file), plan_file, Device("gpu", 0), BackendSettings()
    )
    with pytest.raises(InferdError, match="no optimization profile"):
        instance.execute({"x": np.ones((3, 5), np.float32)})
    ok = instance.execute({"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(ok["z"], np.full((1, 4), 3.0))


def test_data_dependent_output_shapes_get_memory_when_tensorrt_knows_their_size(
    fakes: Any, tmp_path: Path
) -> None:
    """An output whose shape the data decides (NonZero, NMS): TensorRT asks the instance's
    output allocator for memory once it knows the size and tells it the shape; the output
    comes back in that shape, batch after batch, beside an ordinary one."""
    plan = make_plan(
        [
            {"name": "x", "mode": "INPUT", "dtype": "FLOAT", "shape": [4]},
            {"name": "kept", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1], "of": "x",
             "scale": 10, "data_dependent": True},
            {"name": "same", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [4], "of": "x"},
        ]
    )  # fmt: skip
    plan_file = write_plan(tmp_path, plan)
    config = completed(plan_file)
    assert [list(t.dims) for t in config.outputs] == [[-1], [4]]
    instance = TensorRtBackend.create_instance(
        config, plan_file, Device("gpu", 0), BackendSettings()
    )
    for x, kept in (
        ([1, -2, 3, 0], [10, 30]),
        ([-1, -1, -1, -1], []),
        ([5, 6, 7, 8], [50, 60, 70, 80]),
    ):
        outputs = instance.execute({"x": np.array(x, np.float32)})
        np.testing.assert_array_equal(outputs["kept"], np.array(kept, np.float32))
        np.testing.assert_array_equal(outputs["same"], np.array(x, np.float32))
    instance.close()


def test_plans_run_only_on_gpus(fakes: Any, tmp_path: Path) -> None:
    plan_file = write_plan(tmp_path, BATCHING)
    with pytest.raises(InferdError, match="TensorRT plans run only on GPUs, not on cpu"):
        TensorRtBackend.create_instance(
            completed(plan_file), plan_file, Device("cpu"), BackendSettings()
        )


def test_gpu_use_needs_tensorrt_and_cupy(fakes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert TensorRtBackend.gpu_unavailable_reason(GpuInfo(count=1, reason="")) == ""
    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.setattr("sys.path", [])  # the real package, if any, is out of reach too
    reason = TensorRtBackend.gpu_unavailable_reason(GpuInfo(count=1, reason=""))
    assert reason.startswith("tensorrt not installed")


def test_missing_tensorrt_is_a_clear_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(InferdError, match=r"needs TensorRT's Python package .*inferd\[tensorrt\]"):
        load_tensorrt()


def _cuda() -> Any:
    from inferd.backends.cuda import CudaRuntime

    return CudaRuntime.load()
