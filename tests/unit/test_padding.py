"""Shape buckets: padding a batch, cutting outputs back, and building the spec from a config."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.batching.padding import (
    CutOutput,
    PaddedInput,
    PaddingSpec,
    bucket,
    pad_batch,
    padding_spec,
    unpad,
)
from inferd.repository.config import ModelConfig, normalize, parse_config_text, to_model_config
from inferd.repository.config import validate as validate_config
from inferd.server.errors import ErrorCode, InferdError

TOKENS = PaddingSpec(
    (PaddedInput("ids", (1,), np.int64(0)),),
    (CutOutput("logits", (1,), "ids", (1,)),),
)


def ids(*values: int) -> np.ndarray:
    return np.array([values], np.int64)


def test_pads_to_the_longest_request_and_keeps_other_inputs_as_they_are() -> None:
    requests: list[dict[str, np.ndarray]] = [
        {"ids": ids(1, 2), "fixed": np.ones((1, 4), np.float32)},
        {"ids": ids(3, 4, 5, 6), "fixed": np.zeros((1, 4), np.float32)},
        {"ids": np.array([[7], [8]], np.int64), "fixed": np.ones((2, 4), np.float32)},
    ]
    merged = pad_batch(TOKENS, requests)
    np.testing.assert_array_equal(
        merged["ids"], [[1, 2, 0, 0], [3, 4, 5, 6], [7, 0, 0, 0], [8, 0, 0, 0]]
    )
    assert merged["ids"].dtype == np.int64
    np.testing.assert_array_equal(merged["fixed"], np.concatenate([r["fixed"] for r in requests]))


def test_one_request_without_buckets_is_not_copied() -> None:
    request = {"ids": ids(1, 2, 3)}
    merged = pad_batch(TOKENS, [request])
    assert merged["ids"] is request["ids"]


def test_equal_shapes_are_concatenated_without_padding() -> None:
    merged = pad_batch(TOKENS, [{"ids": ids(1, 2)}, {"ids": ids(3, 4)}])
    np.testing.assert_array_equal(merged["ids"], [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("size", "expected"), [(1, 16), (16, 16), (17, 32), (64, 64), (65, 65), (200, 200)]
)
def test_bucket_rounds_up_and_falls_back_to_the_size(size: int, expected: int) -> None:
    assert bucket(size, (16, 32, 64)) == expected


def test_buckets_pad_even_a_single_request_but_never_copy_one_that_fits() -> None:
    spec = PaddingSpec(TOKENS.inputs, TOKENS.outputs, buckets=(2, 4))
    assert pad_batch(spec, [{"ids": ids(1, 2, 3)}])["ids"].tolist() == [[1, 2, 3, 0]]
    fits = ids(1, 2, 3, 4)
    assert pad_batch(spec, [{"ids": fits}])["ids"] is fits
    beyond = pad_batch(spec, [{"ids": ids(1)}, {"ids": ids(*range(1, 7))}])["ids"]
    assert beyond.shape == (2, 6)  # past the last bucket: the batch's largest size


def test_pad_value_and_several_variable_dims() -> None:
    spec = PaddingSpec((PaddedInput("grid", (1, 3), np.float32(-1)),))
    small = np.zeros((1, 1, 3, 2), np.float32)
    large = np.ones((1, 2, 3, 1), np.float32)
    merged = pad_batch(spec, [{"grid": small}, {"grid": large}])["grid"]
    assert merged.shape == (2, 2, 3, 2)
    np.testing.assert_array_equal(merged[0, 0], np.zeros((3, 2)))
    np.testing.assert_array_equal(merged[0, 1], np.full((3, 2), -1))
    np.testing.assert_array_equal(merged[1, :, :, 0], np.ones((2, 3)))
    np.testing.assert_array_equal(merged[1, :, :, 1], np.full((2, 3), -1))


def test_bytes_inputs_pad_with_empty_bytes() -> None:
    spec = PaddingSpec((PaddedInput("text", (1,), b""),))
    a = np.array([[b"a"]], dtype=np.object_)
    b = np.array([[b"b", b"c"]], dtype=np.object_)
    merged = pad_batch(spec, [{"text": a}, {"text": b}])["text"]
    assert merged.dtype == np.object_
    assert merged.tolist() == [[b"a", b""], [b"b", b"c"]]


def test_unpad_cuts_listed_outputs_back_to_the_request_with_views() -> None:
    logits = np.arange(12, dtype=np.float32).reshape(1, 4, 3)  # padded to length 4
    pooled = np.ones((1, 3), np.float32)
    out = unpad(TOKENS, {"logits": logits, "pooled": pooled}, {"ids": ids(1, 2)})
    assert out["logits"].shape == (1, 2, 3)
    assert np.shares_memory(out["logits"], logits)
    np.testing.assert_array_equal(out["logits"], logits[:, :2])
    assert out["pooled"] is pooled  # not listed: returned as the model produced it


def test_unpad_maps_the_ith_variable_dim_of_the_output_to_the_input() -> None:
    spec = PaddingSpec(
        (PaddedInput("grid", (1, 3), np.float32(0)),),
        (CutOutput("map", (2, 3), "grid", (1, 3)),),
    )
    out = unpad(spec, {"map": np.zeros((1, 5, 4, 6))}, {"grid": np.zeros((1, 2, 3, 1))})
    assert out["map"].shape == (1, 5, 2, 1)


def test_a_padded_batch_round_trips_per_request() -> None:
    requests = [{"ids": ids(1)}, {"ids": ids(2, 3, 4)}, {"ids": ids(5, 6)}]
    merged = pad_batch(TOKENS, requests)
    logits = merged["ids"] * 10  # a model whose output follows the input's length
    for row, request in enumerate(requests):
        out = unpad(TOKENS, {"logits": logits[row : row + 1]}, request)
        np.testing.assert_array_equal(out["logits"], request["ids"] * 10)


# ---- the spec from config parameters ---------------------------------------------------------

CONFIG = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{ name: "IDS" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "MASK" data_type: TYPE_UINT8 dims: [ -1 ] }},
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "GRID" data_type: TYPE_FP32 dims: [ -1, 3, -1 ] }},
  {{ name: "FIXED" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "EXTRA" data_type: TYPE_FP32 dims: [ -1 ] optional: true }}
]
output [
  {{ name: "LOGITS" data_type: TYPE_FP32 dims: [ -1, 10 ] }},
  {{ name: "POOLED" data_type: TYPE_FP32 dims: [ 10 ] }},
  {{ name: "MAP" data_type: TYPE_FP32 dims: [ -1, -1 ] }}
]
"""


def model_config(max_batch_size: int = 8, /, **params: str) -> ModelConfig:
    text = CONFIG.format(max_batch_size=max_batch_size) + "".join(
        f'parameters {{ key: "inferd.{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in params.items()
    )
    proto = parse_config_text(text, "test")
    normalize(proto, "m", 0)
    validate_config(proto, "m", "test")
    return to_model_config(proto, "onnxruntime")


def test_no_parameters_no_spec() -> None:
    assert padding_spec(model_config()) is None


def test_spec_from_parameters() -> None:
    spec = padding_spec(
        model_config(
            pad_inputs="IDS, MASK,TEXT, GRID",
            pad_value="1",
            pad_outputs="LOGITS:IDS, MAP:GRID",
            pad_buckets="16,32,64",
        )
    )
    assert spec is not None
    assert [(p.name, p.axes) for p in spec.inputs] == [
        ("IDS", (1,)),
        ("MASK", (1,)),
        ("TEXT", (1,)),
        ("GRID", (1, 3)),
    ]
    fills = spec.by_name
    assert fills["IDS"].value == 1 and fills["IDS"].value.dtype == np.int64
    assert fills["MASK"].value.dtype == np.uint8
    assert fills["TEXT"].value == b""
    assert spec.outputs == (
        CutOutput("LOGITS", (1,), "IDS", (1,)),
        CutOutput("MAP", (1, 2), "GRID", (1, 3)),
    )
    assert spec.buckets == (16, 32, 64)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"pad_inputs": "NOPE"}, "pad_inputs: the model has no input 'NOPE'"),
        ({"pad_inputs": "FIXED"}, "input 'FIXED' has no variable (-1) dims"),
        ({"pad_inputs": "EXTRA"}, "input 'EXTRA' is optional"),
        ({"pad_outputs": "LOGITS:IDS"}, "pad_outputs: needs inferd.pad_inputs"),
        ({"pad_inputs": "IDS", "pad_value": "zero"}, "pad_value: 'zero' is not a number"),
        ({"pad_inputs": "MASK", "pad_value": "-1"}, "-1 does not fit input 'MASK'"),
        ({"pad_inputs": "IDS", "pad_value": "0.5"}, "0.5 does not fit input 'IDS'"),
        ({"pad_inputs": "IDS", "pad_outputs": "LOGITS"}, "'LOGITS' is not of the form"),
        ({"pad_inputs": "IDS", "pad_outputs": "NOPE:IDS"}, "the model has no output 'NOPE'"),
        ({"pad_inputs": "IDS", "pad_outputs": "POOLED:IDS"}, "output 'POOLED' has no variable"),
        ({"pad_inputs": "IDS", "pad_outputs": "LOGITS:MASK"}, "'MASK' is not in inferd.pad_"),
        (
            {"pad_inputs": "IDS", "pad_outputs": "LOGITS:IDS,LOGITS:IDS"},
            "output 'LOGITS' is listed twice",
        ),
        (
            {"pad_inputs": "IDS", "pad_outputs": "MAP:IDS"},
            "output 'MAP' has 2 variable dims but input 'IDS' has 1",
        ),
        ({"pad_inputs": "IDS", "pad_buckets": "32,16"}, "must be positive ascending integers"),
        ({"pad_inputs": "IDS", "pad_buckets": "0,16"}, "must be positive ascending integers"),
        ({"pad_inputs": "IDS", "pad_buckets": "16,x"}, "must be positive ascending integers"),
    ],
)
def test_invalid_settings_fail_the_load_naming_the_parameter(
    params: dict[str, str], problem: str
) -> None:
    with pytest.raises(InferdError) as caught:
        padding_spec(model_config(**params))
    assert caught.value.code is ErrorCode.INVALID_ARG
    assert caught.value.message.startswith("model 'm': parameter inferd.")
    assert problem in caught.value.message


def test_a_model_that_does_not_batch_cannot_pad() -> None:
    with pytest.raises(InferdError, match="does not batch"):
        padding_spec(model_config(0, pad_inputs="IDS"))
