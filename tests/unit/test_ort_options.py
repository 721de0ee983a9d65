"""The ONNX Runtime options a model's config asks for, as Triton's onnxruntime backend reads
them, on the options the sessions are made with, and a model that uses them serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inferd.backends.base import BackendSettings, Device
from inferd.backends.onnxruntime import OnnxRuntimeBackend
from inferd.backends.ort_options import add_run_config, apply_config
from inferd.repository.config import ModelConfig, normalize, parse_config_text, to_model_config
from inferd.server.errors import InferdError
from tests.models import identity_model, write_model

BASE = (
    'max_batch_size: 4 input [{name: "INPUT0" data_type: TYPE_FP32 dims: [4]}] '
    'output [{name: "OUTPUT0" data_type: TYPE_FP32 dims: [4]}] '
)


def config(text: str) -> ModelConfig:
    proto = parse_config_text(BASE + text, "test")
    normalize(proto, "m", 1)
    return to_model_config(proto, "onnxruntime")


def param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }} '


def options_for(text: str) -> ort.SessionOptions:
    options = ort.SessionOptions()
    apply_config(options, config(text))
    return options


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (None, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        (0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        (-1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        (1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        (2, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    ],
)
def test_graph_levels_follow_triton(level: int | None, expected: object) -> None:
    text = "" if level is None else f"optimization {{ graph {{ level: {level} }} }}"
    assert options_for(text).graph_optimization_level == expected


def test_memory_and_execution_parameters_reach_the_session_options() -> None:
    options = options_for(
        param("execution_mode", "1")
        + param("enable_mem_arena", "0")
        + param("enable_mem_pattern", "false")
        + param("session.use_device_allocator_for_initializers", "1")
    )
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert options.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
    defaults = options_for("")
    assert defaults.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert defaults.enable_cpu_mem_arena and defaults.enable_mem_pattern


def test_arena_shrinkage_is_a_run_option() -> None:
    run = add_run_config(
        ort.RunOptions(), config(param("memory.enable_memory_arena_shrinkage", "cpu:0"))
    )
    assert run.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (param("execution_mode", "2"), "Expected values for execution_mode are 0 or 1 but got 2"),
        (param("enable_mem_arena", "maybe"), "'enable_mem_arena' must be a boolean"),
    ],
)
def test_values_triton_refuses_fail_the_load(text: str, message: str) -> None:
    with pytest.raises(InferdError, match=message):
        options_for(text)


def test_a_model_with_every_option_serves(tmp_path: Path) -> None:
    text = (
        BASE
        + "optimization { graph { level: 2 } } "
        + param("execution_mode", "1")
        + param("enable_mem_pattern", "0")
        + param("memory.enable_memory_arena_shrinkage", "cpu:0")  # needs the arena (default)
    )
    model_dir = write_model(tmp_path, "m", identity_model(), text)
    proto = parse_config_text(text, "test")
    model_file = model_dir / "1" / "model.onnx"
    OnnxRuntimeBackend.complete_config(proto, model_file, BackendSettings())
    normalize(proto, "m", 1)
    instance = OnnxRuntimeBackend.create_instance(
        to_model_config(proto, "onnxruntime"), model_file, Device("cpu"), BackendSettings()
    )
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(instance.execute({"INPUT0": x})["OUTPUT0"], x)
    instance.close()
