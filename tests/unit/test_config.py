"""config.pbtxt parsing, normalisation, validation and the JSON Triton prints."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from inferd.repository.config import (
    DeviceKind,
    config_from_json,
    config_to_json,
    normalize,
    parse_config_text,
    to_model_config,
    validate,
    validate_instance_kinds,
)
from inferd.repository.scheduling import scheduler_config
from inferd.server.errors import ErrorCode, InferdError
from inferd.server.types import DataType

# Written in Triton's documented syntax (model_configuration.md), including comments,
# list and repeated-field forms, enums and nested policies.
TRITON_DOC_CONFIG = """
# A model as Triton's documentation writes it.
name: "doc_model"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [ 1, 3 ] } }
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_STRING
    dims: [ -1 ]
    optional: true
  }
]
output {
  name: "OUTPUT0"
  data_type: TYPE_FP32
  dims: [ 16 ]
  label_filename: "labels.txt"
}
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 50000
    allow_timeout_override: true
    max_queue_size: 64
  }
}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


def parsed(text: str = TRITON_DOC_CONFIG, name: str = "doc_model", gpus: int = 0):  # type: ignore[no-untyped-def]
    config = parse_config_text(text, "config.pbtxt")
    normalize(config, name, gpus)
    validate(config, name, "config.pbtxt")
    return config


def test_triton_documented_syntax_parses_into_typed_config() -> None:
    config = to_model_config(parsed(), "onnxruntime")
    assert config.max_batch_size == 8
    assert [(t.name, t.datatype, t.dims) for t in config.inputs] == [
        ("INPUT0", DataType.FP32, (16,)),
        ("INPUT1", DataType.BYTES, (-1,)),
    ]
    assert config.inputs[1].optional and config.inputs[1].variable
    assert config.outputs[0].label_filename == "labels.txt"
    assert config.instance_groups[0].kind is DeviceKind.CPU
    assert config.instance_groups[0].count == 2
    assert config.version_policy.kind == "specific"
    assert config.version_policy.versions == (1, 3)
    batching = config.dynamic_batching
    assert batching is not None
    assert batching.preferred_batch_sizes == (4, 8)
    assert batching.max_queue_delay_us == 100
    assert batching.default_queue_policy.delay_on_timeout
    assert batching.default_queue_policy.max_queue_size == 64
    assert config.parameters == {"intra_op_thread_count": "2"}


def test_misspelt_field_names_the_field_and_the_file() -> None:
    with pytest.raises(InferdError) as info:
        parse_config_text('name: "m"\nmax_batch_sise: 4\n', "/repo/m/config.pbtxt")
    assert info.value.code is ErrorCode.INVALID_ARG
    assert "max_batch_sise" in info.value.message
    assert "/repo/m/config.pbtxt" in info.value.message
    assert "2:1" in info.value.message  # line and column


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (
            parse_config_text,
            'input [{ name: "x" data_type: 16 dims: [ 1 ] }]',
            "input[0].data_type is 16, which is no DataType value",
        ),
        (
            config_from_json,
            '{"instance_group": [{"kind": 9}]}',
            "instance_group[0].kind is 9, which is no Kind value",
        ),
        (
            config_from_json,
            '{"sequence_batching": {"control_input": [{"name": "S", "control": [{"kind": 77}]}]}}',
            "sequence_batching.control_input[0].control[0].kind is 77, which is no Kind value",
        ),
    ],
)
def test_an_enum_number_the_enum_lacks_is_refused_naming_the_field(
    parse: Callable[[str, str], object], text: str, message: str
) -> None:
    # Both parsers take numbers for enums; one the enum lacks used to fail later, in a
    # conversion, with Python's words.
    with pytest.raises(InferdError) as info:
        parse(text, "src")
    assert info.value.code is ErrorCode.INVALID_ARG
    assert info.value.message == f"failed to parse src: {message}"


def test_normalize_fills_triton_defaults() -> None:
    config = parsed(
        'max_batch_size: 4\ninput [{name: "x" data_type: TYPE_FP32 dims: [2]}]\n'
        'output [{name: "y" data_type: TYPE_FP32 dims: [2]}]\ndynamic_batching {}',
        name="m",
    )
    assert config.name == "m"
    assert config.version_policy.latest.num_versions == 1
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert len(config.instance_group) == 1
    group = config.instance_group[0]
    # A group the config does not list is named as the model, as Triton names it.
    assert (group.name, group.count) == ("m", 1)
    assert to_model_config(config, "onnxruntime").instance_groups[0].kind is DeviceKind.CPU


def test_kind_auto_picks_gpu_when_there_is_one() -> None:
    config = parsed(
        'input [{name: "x" data_type: TYPE_FP32 dims: [2]}]\n'
        'output [{name: "y" data_type: TYPE_FP32 dims: [2]}]\n'
        "instance_group [{count: 2}]",
        name="m",
        gpus=2,
    )
    typed = to_model_config(config, "onnxruntime")
    assert typed.instance_groups[0].kind is DeviceKind.GPU
    assert typed.instance_groups[0].gpus == (0, 1)


def test_kind_model_is_for_backends_whose_model_places_itself() -> None:
    config = parsed(
        'input [{name: "x" data_type: TYPE_FP32 dims: [2]}]\n'
        'output [{name: "y" data_type: TYPE_FP32 dims: [2]}]\n'
        "instance_group [{kind: KIND_MODEL count: 2}]",
        name="m",
    )
    validate_instance_kinds(config, "python", "test")
    assert to_model_config(config, "python").instance_groups[0].kind is DeviceKind.MODEL
    with pytest.raises(InferdError, match="KIND_MODEL is not supported by inferd's 'onnxruntime'"):
        validate_instance_kinds(config, "onnxruntime", "test")


BAD_CONFIGS = [
    ('name: "other"', "must match the folder name"),
    ("max_batch_size: -1", "max_batch_size"),
    (
        'input [{name: "x" data_type: TYPE_FP32 dims: [2]}, {name: "x" data_type: TYPE_FP32 '
        "dims: [3]}]",
        "input 'x' is declared twice, differently",
    ),
    ('input [{name: "z" dims: [2]}]', "input 'z' has no data_type"),
    ('input [{name: "z" data_type: TYPE_FP32}]', "at least one dim"),
    ('input [{name: "z" data_type: TYPE_FP32 dims: [0]}]', "must be > 0 or -1"),
    ("max_batch_size: 4\ndynamic_batching { preferred_batch_size: [8] }", "1..4"),
    (
        "max_batch_size: 4\ndynamic_batching { priority_levels: 2 default_priority_level: 1 "
        "priority_queue_policy { key: 3 value { max_queue_size: 1 } } }",
        "priority queue policy must have priority level in range [1, 2]",
    ),
    (
        "model_transaction_policy { decoupled: true }\nresponse_cache { enable: true }",
        "Response Cache does not currently support model m with 'decoupled' transaction policy",
    ),
    (
        "max_batch_size: 4\nsequence_batching {}\nresponse_cache { enable: true }",
        "Response Cache does not currently support model m with sequence batching scheduler",
    ),
    (
        'batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_INT32 '
        'source_input: "a" }]',
        "batch_input and batch_output need max_batch_size > 0",
    ),
    # reshape, with Triton's messages (model_config_utils.cc ValidateIOShape)
    (
        'input [{name: "z" data_type: TYPE_FP32 dims: [1] reshape { shape: [] }}]',
        "model input 'z' cannot have empty reshape for non-batching model",
    ),
    (
        'input [{name: "z" data_type: TYPE_FP32 dims: [4] reshape { shape: [0, 4] }}]',
        "model input 'z' reshape dimensions must be integer >= 1, or -1",
    ),
    (
        'input [{name: "z" data_type: TYPE_FP32 dims: [6] reshape { shape: [4, 2] }}]',
        "model input 'z' has different size for dims and reshape",
    ),
    (
        'input [{name: "z" data_type: TYPE_FP32 dims: [-1] reshape { shape: [4] }}]',
        "model input 'z' has different size for dims and reshape",
    ),
    (
        'input [{name: "z" data_type: TYPE_FP32 dims: [-1, 2] reshape { shape: [-1, -1] }}]',
        "model input 'z' has different number of variable-size dimensions for dims and reshape",
    ),
    (
        'input [{name: "z" data_type: TYPE_FP32 dims: [2, 4, -1, 6] reshape '
        "{ shape: [4, -1, 12] }}]",
        "model input 'z' has different size for dims and reshape",
    ),
]


# Configs tritonserver 2.51 loads, some of them slips: the same repository must load here.
TRITON_LOADS = {
    "no inputs": 'output [{name: "b" data_type: TYPE_FP32 dims: [2]}]',
    "no outputs": 'input [{name: "a" data_type: TYPE_FP32 dims: [2]}]',
    "a tensor declared twice alike": (
        'input [{name: "a" data_type: TYPE_FP32 dims: [2]}, '
        '{name: "a" data_type: TYPE_FP32 dims: [2]}]\n'
        'output [{name: "b" data_type: TYPE_FP32 dims: [2]}]'
    ),
    "dynamic batching of a model that does not batch": (
        'input [{name: "a" data_type: TYPE_FP32 dims: [2]}]\n'
        'output [{name: "b" data_type: TYPE_FP32 dims: [2]}]\n'
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 }"
    ),
    "a negative instance count": (
        'input [{name: "a" data_type: TYPE_FP32 dims: [2]}]\n'
        'output [{name: "b" data_type: TYPE_FP32 dims: [2]}]\n'
        "instance_group [{count: -1 kind: KIND_CPU}]"
    ),
}


@pytest.mark.parametrize("case", TRITON_LOADS)
def test_configs_triton_loads_load(case: str) -> None:
    typed = to_model_config(parsed(TRITON_LOADS[case], name="m"), "python")
    assert typed.instance_groups[0].count >= 1


def test_reshapes_that_keep_the_element_counts_are_accepted() -> None:
    text = (
        "max_batch_size: 4\n"
        'input [{name: "a" data_type: TYPE_FP32 dims: [2, 4, -1, 6] reshape '
        "{ shape: [8, -1, 1, 6] }}]\n"
        'output [{name: "b" data_type: TYPE_FP32 dims: [1] reshape { shape: [] }}]\n'
    )
    typed = to_model_config(parsed(text, name="m"), "onnxruntime")
    assert typed.inputs[0].dims == (2, 4, -1, 6) and typed.inputs[0].reshape == (8, -1, 1, 6)
    assert typed.outputs[0].reshape == ()


@pytest.mark.parametrize(("extra", "needle"), BAD_CONFIGS)
def test_invalid_configs_are_rejected_with_a_reason(extra: str, needle: str) -> None:
    base = (
        'input [{name: "a" data_type: TYPE_FP32 dims: [2]}]\n'
        'output [{name: "b" data_type: TYPE_FP32 dims: [2]}]\n'
    )
    text = extra if extra.startswith("input") else base + extra
    if extra.startswith("input"):
        text += '\noutput [{name: "b" data_type: TYPE_FP32 dims: [2]}]'
    with pytest.raises(InferdError) as info:
        parsed(text, name="m")
    assert needle in info.value.message
    assert "'m'" in info.value.message


def test_config_json_prints_int64_as_numbers_and_enums_by_name() -> None:
    data = config_to_json(parsed())
    assert data["input"][0]["dims"] == [16]
    assert data["input"][0]["data_type"] == "TYPE_FP32"
    assert data["version_policy"] == {"specific": {"versions": [1, 3]}}
    policy = data["dynamic_batching"]["default_queue_policy"]
    assert policy["default_timeout_microseconds"] == 50000
    assert policy["timeout_action"] == "DELAY"
    assert data["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert data["instance_group"][0]["kind"] == "KIND_CPU"
    assert data["parameters"] == {"intra_op_thread_count": {"string_value": "2"}}
    assert data["max_batch_size"] == 8 and data["backend"] == ""  # defaults are printed


@pytest.mark.parametrize(("value", "expected_ns"), [(None, 250_000), ("0", 0), ("40", 40_000)])
def test_inline_execution_threshold_comes_from_the_parameters(
    value: str | None, expected_ns: int
) -> None:
    extra = (
        f'parameters {{ key: "inferd.inline_execution_us" value: {{ string_value: "{value}" }} }}'
    )
    config = to_model_config(parsed(TRITON_DOC_CONFIG + (extra if value else "")), "onnxruntime")
    assert scheduler_config(config).inline_max_ns == expected_ns


def test_inline_execution_threshold_must_be_whole_microseconds() -> None:
    extra = 'parameters { key: "inferd.inline_execution_us" value: { string_value: "fast" } }'
    config = to_model_config(parsed(TRITON_DOC_CONFIG + extra), "onnxruntime")
    with pytest.raises(InferdError, match=r"inferd\.inline_execution_us for 'doc_model' must be"):
        scheduler_config(config)
