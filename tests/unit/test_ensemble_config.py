"""Ensemble configs on their own: parsing `ensemble_scheduling` into typed steps, the
normalised config Triton prints, and every static check with its reason (one broken thing per
case, Triton's messages where Triton has one)."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from inferd.repository.config import config_to_json, normalize, parse_config_text, to_model_config
from inferd.repository.config import validate as validate_config
from inferd.repository.dependencies import closure, ensemble_steps, load_waves
from inferd.repository.ensemble_runtime import StepLimiter
from inferd.server.errors import ErrorCode, InferdError

IO = """
platform: "ensemble"
max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }]
"""


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], extra: str = "") -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1{maps} {extra}}}'


def scheduling(*steps: str) -> str:
    return "ensemble_scheduling { step [ " + ", ".join(steps) + " ] }"


CHAIN = IO + scheduling(
    step("pre", {"INPUT0": "X"}, {"OUTPUT0": "mid"}),
    step("post", {"INPUT0": "mid"}, {"OUTPUT0": "Y"}),
)


def load(text: str, name: str = "ens") -> Any:
    proto = parse_config_text(text, "config.pbtxt")
    normalize(proto, name, gpu_count=1)
    validate_config(proto, name, "config.pbtxt")
    return proto


def reason(text: str) -> str:
    with pytest.raises(InferdError) as info:
        load(text)
    assert info.value.code is ErrorCode.INVALID_ARG
    return info.value.message


def test_steps_parse_into_typed_config() -> None:
    config = to_model_config(load(CHAIN), "")
    assert config.ensemble is not None
    first, second = config.ensemble.steps
    assert (first.model_name, first.model_version, first.version) == ("pre", -1, "")
    assert dict(first.input_map) == {"INPUT0": "X"}
    assert dict(second.output_map) == {"OUTPUT0": "Y"}
    assert config.ensemble.model_names == ("pre", "post")
    assert config.platform == "ensemble" and config.backend == ""
    pinned = CHAIN.replace("model_version: -1", "model_version: 3", 1)
    assert to_model_config(load(pinned), "").ensemble.steps[0].version == "3"  # type: ignore[union-attr]


def test_max_inflight_requests_limits_each_step_across_requests() -> None:
    limited = to_model_config(load(CHAIN.replace("step [", "max_inflight_requests: 2 step [")), "")
    assert limited.ensemble is not None and limited.ensemble.max_inflight == 2
    limiter = StepLimiter(2)
    launched: list[str] = []
    assert limiter.acquire(lambda: launched.append("a"))
    assert limiter.acquire(lambda: launched.append("b"))
    for name in ("c", "d", "e"):
        assert not limiter.acquire(partial(launched.append, name))  # full: they wait, in order
    withdrawn = limiter._waiting[1]
    limiter.withdraw(withdrawn)  # d's request ended while it waited
    limiter.release()
    assert launched == ["c"] and limiter.inflight == 2
    limiter.release()
    assert launched == ["c", "e"]
    limiter.release()
    limiter.release()
    assert limiter.inflight == 0
    assert limiter.acquire(lambda: None)  # free again: no wait


def test_other_models_have_no_steps() -> None:
    text = IO.replace('platform: "ensemble"', 'platform: "onnxruntime_onnx"')
    assert to_model_config(load(text), "onnxruntime").ensemble is None


def test_ensemble_config_is_printed_as_triton_prints_it() -> None:
    printed = config_to_json(load(CHAIN))
    assert printed["platform"] == "ensemble"
    assert printed["instance_group"] == []  # no instances of its own: none filled in
    assert printed["version_policy"] == {"latest": {"num_versions": 1}}
    assert printed["ensemble_scheduling"]["step"][0] == {
        "model_name": "pre",
        "model_version": -1,  # an int64, printed as a number
        "input_map": {"INPUT0": "X"},
        "output_map": {"OUTPUT0": "mid"},
        "model_namespace": "",
    }


BROKEN = [
    pytest.param(
        IO.replace('platform: "ensemble"', 'platform: "onnxruntime_onnx"')
        + scheduling(step("pre", {"INPUT0": "X"}, {"OUTPUT0": "Y"})),
        "ensemble scheduling cannot be set for model 'ens' whose platform is not ensemble",
        id="scheduling-without-ensemble-platform",
    ),
    pytest.param(
        IO,
        "ensemble scheduling must be set for ensemble ens whose platform is ensemble",
        id="no-scheduling",
    ),
    pytest.param(
        CHAIN + 'backend: "python"',
        "Ensemble model 'ens' must have platform type 'ensemble' and empty backend type",
        id="backend",
    ),
    pytest.param(
        CHAIN + "instance_group [{ kind: KIND_CPU }]",
        "instance group should not be specified for ensemble 'ens'",
        id="instance-group",
    ),
    pytest.param(
        CHAIN + "optimization { priority: PRIORITY_MAX }",
        "optimization should not be specified for ensemble 'ens'",
        id="optimization",
    ),
    pytest.param(
        CHAIN + 'model_warmup [{ name: "w" batch_size: 1 }]',
        "model_warmup can not be specified for ensemble 'ens'",
        id="warmup",
    ),
    pytest.param(
        IO + "ensemble_scheduling { }", "must specify 'step' for ensemble 'ens'", id="no-steps"
    ),
    pytest.param(
        IO + scheduling(step("", {"INPUT0": "X"}, {"OUTPUT0": "Y"})),
        "must specify 'model_name' in step 0 of ensemble 'ens'",
        id="no-model-name",
    ),
    pytest.param(
        IO + scheduling(step("pre", {}, {"OUTPUT0": "Y"})),
        "must specify 'input_map' in step 0 of ensemble 'ens'",
        id="no-input-map",
    ),
    pytest.param(
        IO + scheduling(step("pre", {"INPUT0": "X"}, {})),
        "must specify 'output_map' in step 0 of ensemble 'ens'",
        id="no-output-map",
    ),
    pytest.param(
        IO
        + scheduling(
            step("pre", {"INPUT0": "X"}, {"OUTPUT0": "Y"}),
            step("post", {"INPUT0": "X"}, {"OUTPUT0": "Y"}),
        ),
        "ensemble tensor 'Y' can appear in an output map only once for ensemble 'ens' step 1",
        id="output-written-twice",
    ),
    pytest.param(
        IO + scheduling(step("pre", {"INPUT0": "X"}, {"OUTPUT0": "Y", "OUTPUT1": "X"})),
        "ensemble tensor 'X' is an ensemble input and cannot appear in an output map",
        id="step-writes-an-ensemble-input",
    ),
    pytest.param(
        IO.replace('name: "Y"', 'name: "X"') + scheduling(step("pre", {"INPUT0": "X"}, {"O": "t"})),
        "ensemble tensor 'X' is both an input and an output of ensemble 'ens'",
        id="input-is-output",
    ),
    pytest.param(
        IO.replace(
            "dims: [ 4 ] }]\noutput",
            'dims: [ 4 ] }, { name: "Z" data_type: TYPE_FP32 dims: [ 4 ] }]\noutput',
        )
        + scheduling(step("pre", {"INPUT0": "X"}, {"OUTPUT0": "Y"})),
        "ensemble input 'Z' for ensemble 'ens' is not used",
        id="unused-input",
    ),
    pytest.param(
        IO + scheduling(step("pre", {"INPUT0": "X"}, {"OUTPUT0": "other"})),
        "output 'Y' for ensemble 'ens' is not written",
        id="output-not-written",
    ),
    pytest.param(
        IO
        + scheduling(
            step("pre", {"INPUT0": "X"}, {"OUTPUT0": "Y"}),
            step("post", {"INPUT0": "X"}, {"OUTPUT0": "spare"}),
        ),
        "ensemble tensor 'spare' is unused in ensemble 'ens'",
        id="tensor-written-never-read",
    ),
    pytest.param(
        IO
        + scheduling(
            step("pre", {"INPUT0": "X", "INPUT1": "ghost"}, {"OUTPUT0": "Y"}),
        ),
        "step 0 (model 'pre') of ensemble 'ens' reads ensemble tensor 'ghost', which is neither "
        "an ensemble input nor written by any step",
        id="reads-a-tensor-nothing-writes",
    ),
    pytest.param(
        IO
        + scheduling(
            step("a", {"INPUT0": "X", "INPUT1": "from_b"}, {"OUTPUT0": "from_a"}),
            step("b", {"INPUT0": "from_a"}, {"OUTPUT0": "from_b", "OUTPUT1": "Y"}),
        ),
        "circular dependency in ensemble 'ens': steps 0 (model 'a') -> 1 (model 'b') -> "
        "0 (model 'a') wait for each other's outputs",
        id="cycle",
    ),
    pytest.param(
        CHAIN.replace("model_version: -1", "model_version: 0", 1),
        "'model_version' in step 0 of ensemble 'ens' must be -1 (latest) or a version number",
        id="version-zero",
    ),
    pytest.param(
        CHAIN.replace('model_name: "pre"', 'model_name: "pre" model_namespace: "ns"'),
        "'model_namespace' in step 0 of ensemble 'ens' is not supported",
        id="namespace",
    ),
]


@pytest.mark.parametrize(("text", "needle"), BROKEN)
def test_broken_ensembles_are_refused_with_the_reason(text: str, needle: str) -> None:
    assert needle in reason(text)


def test_inputs_and_outputs_are_checked_as_for_any_model() -> None:
    text = CHAIN.replace("dims: [ 4 ]", "dims: [ 0 ]", 1)
    assert "must be > 0 or -1" in reason(text)


# ---- load order (repository/dependencies.py) ---------------------------------------------


def test_composing_models_are_read_from_the_config() -> None:
    assert ensemble_steps(load(CHAIN)) == ("pre", "post")
    assert ensemble_steps(parse_config_text('platform: "onnxruntime_onnx"', "c")) is None


def test_models_load_before_the_ensembles_made_of_them() -> None:
    deps = {"outer": ("inner", "c"), "inner": ("a", "b"), "side": ("a",)}
    waves, cyclic = load_waves({"a", "b", "c", "inner", "outer", "side"}, deps)
    assert waves == [["a", "b", "c"], ["inner", "side"], ["outer"]]
    assert cyclic == {}
    assert closure(["outer"], deps) == {"outer", "inner", "a", "b", "c"}


def test_ensembles_on_a_cycle_are_named_with_the_cycle() -> None:
    deps = {"x": ("y", "m"), "y": ("x",), "z": ("x",), "self": ("self",)}
    waves, cyclic = load_waves({"m", "x", "y", "z", "self"}, deps)
    assert cyclic == {
        "x": "circular dependency between ensembles: x -> y -> x",
        "y": "circular dependency between ensembles: y -> x -> y",
        "self": "circular dependency between ensembles: self -> self",
    }
    # "z" is on no cycle itself: it loads last and finds "x" not ready.
    assert waves == [["m"], ["z"]]
