"""The PyTorch backend's decisions that need no torch: where each config tensor goes, and the
config parameters it reads."""

from __future__ import annotations

import pytest

from inferd.backends.pytorch import TorchParameters, index_map, parse_parameters
from inferd.backends.registry import BackendRegistry
from inferd.server.errors import InferdError


def test_inputs_go_by_argument_name_then_by_index_then_in_order() -> None:
    arguments = ["x", "y"]
    assert index_map(["y", "x"], arguments) == {"y": 1, "x": 0}
    assert index_map(["B__1", "A__0"], arguments) == {"B__1": 1, "A__0": 0}
    # A mix (one argument name, one indexed name) falls back to config order, as in Triton.
    assert index_map(["x", "B__1"], arguments) == {"x": 0, "B__1": 1}
    assert index_map(["second", "first"], arguments) == {"second": 0, "first": 1}
    assert index_map(["OUT__3", "OUT__0"], ()) == {"OUT__3": 3, "OUT__0": 0}


def test_parameters_are_tritons_spellings() -> None:
    assert parse_parameters({}, "m") == TorchParameters()
    parsed = parse_parameters(
        {
            "INFERENCE_MODE": "true",
            "DISABLE_OPTIMIZED_EXECUTION": "TRUE",
            "ENABLE_CACHE_CLEANING": "false",
            "INTRA_OP_THREAD_COUNT": "4",
            "ENABLE_NVFUSER": "true",  # accepted: TorchScript's default executor runs
        },
        "m",
    )
    assert parsed == TorchParameters(
        inference_mode=True, optimized_execution=False, intra_op_threads=4
    )
    with pytest.raises(InferdError, match="INTER_OP_THREAD_COUNT must be a positive integer"):
        parse_parameters({"INTER_OP_THREAD_COUNT": "0"}, "m")
    with pytest.raises(InferdError, match="ENABLE_CACHE_CLEANING must be true or false"):
        parse_parameters({"ENABLE_CACHE_CLEANING": "1"}, "m")


def test_the_platform_and_the_model_file_name_the_backend() -> None:
    registry = BackendRegistry()
    assert registry.backend_for_platform("pytorch_libtorch") == "pytorch"
    assert registry.guess_backend({"model.pt"}) == "pytorch"
    assert "pytorch" in registry.names
