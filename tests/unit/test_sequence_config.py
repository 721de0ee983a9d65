"""sequence_batching: strict parsing into the typed view, Triton's defaults, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferd.repository.config import (
    ModelConfig,
    normalize,
    parse_config_text,
    to_model_config,
    validate,
)
from inferd.repository.sequence_config import (
    ControlInput,
    ControlKind,
    SequenceBatching,
    Strategy,
    with_initial_state_files,
)
from inferd.server.errors import InferdError
from inferd.server.types import DataType

BASE = """
name: "m"
backend: "python"
max_batch_size: 4
input [{ name: "INPUT" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUTPUT" data_type: TYPE_INT32 dims: [1] }]
"""

FULL = """
sequence_batching {
  max_sequence_idle_microseconds: 5000
  control_input [
    { name: "START" control [{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }] },
    { name: "END" control [{ kind: CONTROL_SEQUENCE_END fp32_false_true: [0.5, 2.5] }] },
    { name: "READY" control [{ kind: CONTROL_SEQUENCE_READY bool_false_true: [false, true] }] },
    { name: "CORRID" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING }] }
  ]
  state [{
    input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [-1, 2]
    initial_state { data_type: TYPE_FP32 dims: [3, 2] zero_data: true name: "zeros" }
  }]
}
"""


def load(text: str) -> ModelConfig:
    config = parse_config_text(BASE + text, "config.pbtxt")
    normalize(config, "m", 0)
    validate(config, "m", "config.pbtxt")
    return to_model_config(config, "python")


def sequence(config: ModelConfig) -> SequenceBatching:
    assert config.sequence_batching is not None
    return config.sequence_batching


def control(seq: SequenceBatching, kind: ControlKind) -> ControlInput:
    found = seq.control(kind)
    assert found is not None
    return found


def refused(text: str) -> str:
    with pytest.raises(InferdError) as error:
        load(text)
    return error.value.message


def test_full_config() -> None:
    seq = sequence(load(FULL))
    assert seq.strategy is Strategy.DIRECT
    assert seq.max_sequence_idle_us == 5000
    end = control(seq, ControlKind.END)
    assert (end.datatype, end.false_value, end.true_value) == (DataType.FP32, 0.5, 2.5)
    assert control(seq, ControlKind.READY).datatype is DataType.BOOL
    assert control(seq, ControlKind.CORRID).datatype is DataType.BYTES
    (state,) = seq.states
    assert (state.input_name, state.output_name, state.dims) == ("STATE_IN", "STATE_OUT", (-1, 2))
    assert state.initial.shape == (3, 2) and not state.initial.any()
    assert state.initial.dtype == np.float32
    assert seq.generated_inputs == ("START", "END", "READY", "CORRID", "STATE_IN")


def test_defaults_as_triton_fills_them() -> None:
    seq = sequence(load("sequence_batching { }"))
    assert seq.strategy is Strategy.DIRECT and seq.max_sequence_idle_us == 1_000_000
    oldest = load("sequence_batching { oldest { max_candidate_sequences: 8 } }")
    seq = sequence(oldest)
    assert seq.strategy is Strategy.OLDEST
    assert seq.preferred_batch_sizes == (4,) and seq.max_candidate_sequences == 8
    printed = oldest.proto.sequence_batching
    assert list(printed.oldest.preferred_batch_size) == [4]
    assert printed.max_sequence_idle_microseconds == 1_000_000


def test_state_without_initial_state_starts_from_zeros() -> None:
    text = (
        'sequence_batching { state [{ input_name: "I" output_name: "O" data_type: TYPE_INT64 '
        "dims: [2] }] }"
    )
    (state,) = sequence(load(text)).states
    assert state.initial.tolist() == [0, 0] and state.initial.dtype == np.int64
    # Memory hints with the same results: every state is a fresh array that grows as it must.
    hinted = text.replace(
        "dims: [2]", "dims: [2] use_growable_memory: true use_same_buffer_for_input_output: true"
    )
    assert sequence(load(hinted)).states[0].dims == (2,)


@pytest.mark.parametrize("strategy", ["direct {}", "oldest {}"])
def test_iterative_sequence_is_read_with_either_strategy(strategy: str) -> None:
    assert sequence(load(f"sequence_batching {{ iterative_sequence: true {strategy} }}")).iterative
    assert not sequence(load(f"sequence_batching {{ {strategy} }}")).iterative


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'sequence_batching { control_input [{ name: "S" control [] }] }',
            "exactly one control",
        ),
        (
            'sequence_batching { control_input [{ name: "S" control [{ kind: '
            "CONTROL_SEQUENCE_START }] }] }",
            "needs exactly one of int32_false_true",
        ),
        (
            'sequence_batching { control_input [{ name: "S" control [{ kind: '
            "CONTROL_SEQUENCE_START int32_false_true: [0] }] }] }",
            "must hold two values",
        ),
        (
            'sequence_batching { control_input [{ name: "C" control [{ kind: '
            "CONTROL_SEQUENCE_CORRID }] }] }",
            "needs a data_type",
        ),
        (
            'sequence_batching { control_input [{ name: "C" control [{ kind: '
            "CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 }] }] }",
            "data_type must be TYPE_UINT64",
        ),
        (
            'sequence_batching { control_input [{ name: "INPUT" control [{ kind: '
            "CONTROL_SEQUENCE_START int32_false_true: [0, 1] }] }] }",
            "duplicates the name of another input",
        ),
        (
            'sequence_batching { control_input [{ name: "A" control [{ kind: '
            'CONTROL_SEQUENCE_START int32_false_true: [0, 1] }] }, { name: "B" control [{ kind: '
            "CONTROL_SEQUENCE_START int32_false_true: [0, 1] }] }] }",
            "more than one control input of kind CONTROL_SEQUENCE_START",
        ),
        (
            'sequence_batching { state [{ input_name: "I" output_name: "O" '
            "data_type: TYPE_INT32 dims: [-1] }] }",
            "give it an initial_state",
        ),
        (
            'sequence_batching { state [{ input_name: "I" output_name: "O" data_type: TYPE_STRING '
            'dims: [1] initial_state { dims: [1] data_file: "x.bin" } }] }',
            "data_file is not supported for TYPE_STRING",
        ),
        ('sequence_batching { state [{ input_name: "I" dims: [1] }] }', "needs input_name"),
        (
            "sequence_batching { oldest { preferred_batch_size: [8] } }",
            "preferred_batch_size 8 must be in 1..4",
        ),
        (
            "sequence_batching { direct { minimum_slot_utilization: 1.5 } }",
            "minimum_slot_utilization",
        ),
        (
            'sequence_batching { state [{ input_name: "I" output_name: "O" data_type: TYPE_INT32 '
            "dims: [1] }] } model_transaction_policy { decoupled: true }",
            "implicit state) of a decoupled model",
        ),
    ],
)
def test_refused(text: str, expected: str) -> None:
    message = refused(text)
    assert expected in message and "model 'm'" in message


def test_sequence_and_dynamic_batching_together_are_refused() -> None:
    with pytest.raises(InferdError) as error:
        parse_config_text(BASE + "sequence_batching { }\ndynamic_batching { }", "config.pbtxt")
    assert "config.pbtxt" in error.value.message


DATA_FILE = (
    'sequence_batching { state [{ input_name: "I" output_name: "O" data_type: TYPE_INT16 '
    'dims: [-1] initial_state { dims: [3] data_file: "start.bin" } }] }'
)


def test_initial_state_from_a_data_file(tmp_path: Path) -> None:
    config = load(DATA_FILE)
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "start.bin").write_bytes(np.array([7, -1, 3], "<i2").tobytes())
    (state,) = sequence(with_initial_state_files(config, tmp_path)).states
    assert state.initial.tolist() == [7, -1, 3] and state.initial.dtype == np.int16


@pytest.mark.parametrize(
    ("content", "expected"), [(b"\x01", "holds 1 bytes"), (None, "cannot read")]
)
def test_bad_initial_state_data_file(tmp_path: Path, content: bytes | None, expected: str) -> None:
    (tmp_path / "initial_state").mkdir()
    if content is not None:
        (tmp_path / "initial_state" / "start.bin").write_bytes(content)
    with pytest.raises(InferdError) as error:
        with_initial_state_files(load(DATA_FILE), tmp_path)
    assert expected in error.value.message and "model 'm'" in error.value.message
