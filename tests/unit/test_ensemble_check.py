"""An ensemble against its composing models' configs: one broken thing per case, with
Triton's message for it."""

from __future__ import annotations

import pytest

from inferd.repository.config import ModelConfig, normalize, parse_config_text, to_model_config
from inferd.repository.config import validate as validate_config
from inferd.repository.ensemble_check import composing_error
from inferd.repository.ensemble_config import EnsembleStep


def typed(name: str, text: str, backend: str = "onnxruntime") -> ModelConfig:
    proto = parse_config_text(text, "config.pbtxt")
    normalize(proto, name, gpu_count=0)
    validate_config(proto, name, "config.pbtxt")
    return to_model_config(proto, backend)


def model(dtype: str = "TYPE_FP32", dims: str = "[ 4 ]", batch: int = 8, extra: str = "") -> str:
    return f"""
platform: "onnxruntime_onnx"
max_batch_size: {batch}
input [{{ name: "INPUT0" data_type: {dtype} dims: {dims} }}{extra}]
output [{{ name: "OUTPUT0" data_type: {dtype} dims: {dims} }}]
"""


ENSEMBLE = """
platform: "ensemble"
max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }]
ensemble_scheduling { step [
  { model_name: "pre" model_version: -1
    input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "mid" } },
  { model_name: "post" model_version: -1
    input_map { key: "INPUT0" value: "mid" } output_map { key: "OUTPUT0" value: "Y" } }
] }
"""


def check(models: dict[str, str | ModelConfig], ensemble: str = ENSEMBLE) -> str:
    config = typed("ens", ensemble, backend="")
    assert config.ensemble is not None

    def lookup(step: EnsembleStep) -> ModelConfig | str:
        return models[step.model_name]

    return composing_error(config, config.ensemble, lookup)


def test_fitting_models_pass() -> None:
    assert check({"pre": typed("pre", model()), "post": typed("post", model())}) == ""


def test_a_model_that_is_not_ready_is_named_with_why() -> None:
    reason = check({"pre": typed("pre", model()), "post": "failed to load: bad weights"})
    assert reason == (
        "ensemble ens contains models that are not available: post "
        "('post': failed to load: bad weights)"
    )


CASES = [
    pytest.param(
        {"post": model(batch=4)},
        "ensemble ens allows maximum batch size 8, but it contains model post which only "
        "allows maximum batch size to be 4",
        id="max-batch-size",
    ),
    pytest.param(
        {"post": model().replace('name: "INPUT0"', 'name: "IN"')},
        "in ensemble ens, ensemble tensor mid is mapping to non-existing input INPUT0 in model "
        "post",
        id="no-such-input",
    ),
    pytest.param(
        {"post": model(extra=', { name: "EXTRA" data_type: TYPE_FP32 dims: [ 4 ] }')},
        "in ensemble ens, input EXTRA in model post is not mapped to any ensemble tensors",
        id="required-input-not-mapped",
    ),
    pytest.param(
        {"post": model().replace('name: "OUTPUT0"', 'name: "OUT"')},
        "in ensemble ens, ensemble tensor Y is mapped from non-existing output OUTPUT0 in "
        "model post",
        id="no-such-output",
    ),
    pytest.param(
        {"post": model(dtype="TYPE_INT32")},
        "in ensemble ens, ensemble tensor mid: inconsistent data type: TYPE_FP32 is inferred "
        "from model pre while TYPE_INT32 is inferred from model post",
        id="data-type",
    ),
    pytest.param(
        {"post": model(dims="[ 3 ]")},
        "in ensemble ens, ensemble tensor mid: inconsistent shape: [-1, 4] is inferred from "
        "model pre while [-1, 3] is inferred from model post",
        id="shape",
    ),
]


@pytest.mark.parametrize(("post", "needle"), CASES)
def test_composing_models_that_do_not_fit(post: dict[str, str], needle: str) -> None:
    models: dict[str, str | ModelConfig] = {
        "pre": typed("pre", model()),
        "post": typed("post", post["post"]),
    }
    assert check(models) == needle


def test_what_fits_loosely_passes() -> None:
    # -1 matches any size; an optional input may stay unmapped; a non-batching model may take
    # the batched shape [-1, 4] of a tensor that batching models pass as [4].
    post = """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] },
  { name: "EXTRA" data_type: TYPE_FP32 dims: [ 4 ] optional: true }
]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] }]
"""
    models: dict[str, str | ModelConfig] = {
        "pre": typed("pre", model(dims="[ -1 ]")),
        "post": typed("post", post),
    }
    assert check(models) == ""
    models = {"pre": typed("pre", model()), "post": typed("post", post.replace("-1, 4", "-1, 5"))}
    assert check(models) == (
        "in ensemble ens, ensemble tensor mid: inconsistent shape: [-1, 4] is inferred from "
        "model pre while [-1, 5] is inferred from model post"
    )
