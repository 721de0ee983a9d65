"""The ONNX Runtime options Triton's onnxruntime backend reads from a model's config, for CPU
and GPU sessions alike: `optimization { graph { level } }` and the `parameters`
intra_op_thread_count, inter_op_thread_count, execution_mode, enable_mem_arena,
enable_mem_pattern, session.use_device_allocator_for_initializers and (per run)
memory.enable_memory_arena_shrinkage."""

from __future__ import annotations

from collections.abc import Mapping

import onnxruntime as ort

from inferd.repository.config import ModelConfig, ModelConfigProto
from inferd.server.errors import invalid

INTRA_OP_THREADS = "intra_op_thread_count"
INTER_OP_THREADS = "inter_op_thread_count"
_EXECUTION_MODE = "execution_mode"
_DEVICE_ALLOCATOR = "session.use_device_allocator_for_initializers"
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"

# Triton's graph levels; any other value (0, the default) enables every optimization.
_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
_TRUE, _FALSE = ("true", "1", "on", "yes"), ("false", "0", "off", "no")


def int_param(parameters: Mapping[str, str], key: str, default: int) -> int:
    """An integer parameter; absent, empty or not above 0: `default`."""
    raw = parameters.get(key, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"parameter '{key}' must be an integer, got '{raw}'") from None
    return value if value > 0 else default


def apply_config(options: ort.SessionOptions, config: ModelConfig) -> None:
    """Set what the model's config asks of its sessions (threads aside: each caller has its
    own defaults for those)."""
    options.graph_optimization_level = _LEVELS.get(
        config.proto.optimization.graph.level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    parameters = config.parameters
    mode = parameters.get(_EXECUTION_MODE, "0") or "0"
    if mode not in ("0", "1"):
        raise invalid(
            "Invalid configuration value provided. Expected values for execution_mode are 0 "
            f"or 1 but got {mode} ."
        )
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if mode == "1" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if "enable_mem_arena" in parameters:
        options.enable_cpu_mem_arena = _bool(parameters, "enable_mem_arena")
    if "enable_mem_pattern" in parameters:
        options.enable_mem_pattern = _bool(parameters, "enable_mem_pattern")
    if _DEVICE_ALLOCATOR in parameters:
        options.add_session_config_entry(_DEVICE_ALLOCATOR, parameters[_DEVICE_ALLOCATOR])
    register_op_libraries(options, config.proto, config.name)


def register_op_libraries(
    options: ort.SessionOptions, config: ModelConfigProto, model: str
) -> None:
    """Register the custom-operator libraries `model_operations { op_library_filename }` names,
    as Triton's onnxruntime backend does for each session: a path as given (absolute, or what
    the dynamic loader finds)."""
    for library in config.model_operations.op_library_filename:
        try:
            options.register_custom_ops_library(library)
        except Exception as exc:  # onnxruntime's own words say what went wrong
            raise invalid(
                f"model '{model}': failed to register the custom operations library "
                f"'{library}': {exc}"
            ) from None


def add_run_config(options: ort.RunOptions, config: ModelConfig) -> ort.RunOptions:
    """The per-run entries the config asks for (arena shrinkage, e.g. "cpu:0;gpu:0")."""
    shrinkage = config.parameters.get(ARENA_SHRINKAGE, "")
    if shrinkage:
        options.add_run_config_entry(ARENA_SHRINKAGE, shrinkage)
    return options


def _bool(parameters: Mapping[str, str], key: str) -> bool:
    value = parameters[key].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise invalid(f"parameter '{key}' must be a boolean (true/false, 1/0), got '{parameters[key]}'")
