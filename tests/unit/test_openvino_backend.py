"""The OpenVINO backend's parameters (Triton's keys, values in any case) and what a model is
compiled with."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("openvino")

from inferd.backends.openvino import parse_parameters, serving_properties
from inferd.server.errors import InferdError


def test_tritons_parameters_become_openvino_properties() -> None:
    parameters = parse_parameters(
        {
            "NUM_STREAMS": "Auto",
            "PERFORMANCE_HINT": "throughput",
            "INFERENCE_NUM_THREADS": "3",
            "HINT_BF16": "YES",
            "RESHAPE_IO_LAYERS": "yes",
            "SKIP_OV_DYNAMIC_BATCHSIZE": "yes",  # read by Triton, no effect there on CPU
            "SOMETHING_ELSE": "ignored",
        }
    )
    assert parameters.properties == {
        "NUM_STREAMS": "AUTO",
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_NUM_THREADS": "3",
        "INFERENCE_PRECISION_HINT": "bf16",
    }
    assert parameters.reshape_io_layers
    assert parameters.device == "CPU"
    assert serving_properties(parameters, 2) == parameters.properties  # all given


def test_defaults_leave_cores_to_the_front_doors() -> None:
    # One compiled model for the model's instances: a stream each, half the cores in all.
    threads = str(max(2, (os.cpu_count() or 1) // 2))
    assert serving_properties(parse_parameters({}), 2) == {
        "NUM_STREAMS": "2",
        "INFERENCE_NUM_THREADS": threads,
    }
    hinted = serving_properties(parse_parameters({"PERFORMANCE_HINT": "latency"}), 2)
    assert "NUM_STREAMS" not in hinted  # the hint picks the streams
    other = parse_parameters({"TARGET_DEVICE": "auto"})
    assert other.device == "AUTO"
    assert serving_properties(other, 1) == {}  # CPU defaults are for the CPU


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("NUM_STREAMS", "-1", "to be either AUTO/NUMA/<int_value>, got -1"),
        ("PERFORMANCE_HINT", "fast", "LATENCY/THROUGHPUT/CUMULATIVE_THROUGHPUT, got fast"),
        ("INFERENCE_NUM_THREADS", "many", "to be a non-negative number, got many"),
        ("HINT_BF16", "no", "to be YES, got no"),
    ],
)
def test_bad_values_fail_the_load_in_tritons_words(key: str, value: str, message: str) -> None:
    with pytest.raises(InferdError, match=message):
        parse_parameters({key: value})
