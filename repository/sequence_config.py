"""`sequence_batching` (stateful models): strict checks and the typed view the sequence
scheduler reads (batching/sequence.py).

Control and state inputs are model inputs that the config's `input` list does not name: the
scheduler generates them for every batch, so clients never send them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as pb

from inferd.server.errors import invalid
from inferd.server.types import DataType

if TYPE_CHECKING:
    from inferd.repository.config import ModelConfig

# Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS.
DEFAULT_IDLE_US = 1_000_000
# CORRID may be one of these (Triton's sequence batcher accepts no other type).
_CORRID_TYPES = frozenset(
    {DataType.UINT64, DataType.INT64, DataType.UINT32, DataType.INT32, DataType.BYTES}
)


class Strategy(StrEnum):
    DIRECT = "direct"
    OLDEST = "oldest"


class ControlKind(StrEnum):
    START = "CONTROL_SEQUENCE_START"
    READY = "CONTROL_SEQUENCE_READY"
    END = "CONTROL_SEQUENCE_END"
    CORRID = "CONTROL_SEQUENCE_CORRID"


@dataclass(frozen=True, slots=True)
class ControlInput:
    name: str
    kind: ControlKind
    datatype: DataType
    false_value: int | float | bool = 0  # unused for CORRID
    true_value: int | float | bool = 1


@dataclass(frozen=True, slots=True, eq=False)
class SequenceState:
    """Implicit state: `input_name` is fed what `output_name` returned for the previous
    request of the same sequence; `initial` (zeros unless the config says otherwise) on START."""

    input_name: str
    output_name: str
    datatype: DataType
    dims: tuple[int, ...]
    initial: np.ndarray  # one item, without the batch dim
    initial_file: str = ""  # initial_state data_file, under <model>/initial_state/


@dataclass(frozen=True, slots=True)
class SequenceBatching:
    strategy: Strategy
    max_sequence_idle_us: int
    controls: tuple[ControlInput, ...]
    states: tuple[SequenceState, ...]
    max_queue_delay_us: int = 0
    minimum_slot_utilization: float = 0.0  # direct
    max_candidate_sequences: int = 0  # oldest; 0 = max(1, max_batch_size) per instance
    preferred_batch_sizes: tuple[int, ...] = ()  # oldest
    preserve_ordering: bool = False  # oldest (one request per sequence runs at a time anyway)
    # Each request is a sequence of its own that the model may run again and again
    # (rescheduling) until it is done: continuous batching (Triton's iterative sequences).
    iterative: bool = False

    @property
    def generated_inputs(self) -> tuple[str, ...]:
        """Inputs the scheduler feeds: controls, then states."""
        return (*(c.name for c in self.controls), *(s.input_name for s in self.states))

    def control(self, kind: ControlKind) -> ControlInput | None:
        return next((c for c in self.controls if c.kind is kind), None)


def generated_names(config: Any) -> tuple[frozenset[str], frozenset[str]]:
    """(input names, output names) that sequence_batching reserves, from the raw message:
    auto-complete must not add them to the config as regular tensors."""
    if not config.HasField("sequence_batching"):
        return frozenset(), frozenset()
    seq = config.sequence_batching
    inputs = {c.name for c in seq.control_input} | {s.input_name for s in seq.state}
    return frozenset(inputs), frozenset(s.output_name for s in seq.state)


def sequence_tensors(sequence: SequenceBatching | None) -> tuple[list[str], list[str]]:
    """(input names, output names) of a typed config's control and state tensors: what an
    instance feeds and fetches besides the config's own inputs and outputs."""
    if sequence is None:
        return [], []
    inputs = [c.name for c in sequence.controls] + [s.input_name for s in sequence.states]
    return inputs, [s.output_name for s in sequence.states]


def normalize_sequence(config: Any) -> None:
    """Triton's defaults: idle time 1 s; oldest batches at max_batch_size by preference."""
    seq = config.sequence_batching
    if seq.max_sequence_idle_microseconds == 0:
        seq.max_sequence_idle_microseconds = DEFAULT_IDLE_US
    oldest = seq.oldest if seq.HasField("oldest") else None
    if oldest is not None and not oldest.preferred_batch_size and config.max_batch_size > 0:
        oldest.preferred_batch_size.append(config.max_batch_size)


def parse_sequence_batching(config: Any, where: str) -> SequenceBatching:
    """Check a normalised config's sequence_batching and return its typed view."""
    seq = config.sequence_batching
    if config.HasField("dynamic_batching"):
        raise invalid(f"{where}: sequence_batching and dynamic_batching cannot both be set")
    if config.model_transaction_policy.decoupled and seq.state:
        # A decoupled model answers through its response sender, after execute() may have
        # returned: there is no one answer to take the next request's state from.
        raise invalid(
            f"{where}: sequence_batching.state (implicit state) of a decoupled model is not "
            "supported by inferd; keep the state in the model instance, keyed by the CORRID "
            "control"
        )
    inputs = {t.name for t in config.input}
    controls = _controls(seq, where, inputs)
    states = _states(seq, where, inputs | {c.name for c in controls})
    mbs = config.max_batch_size
    if seq.HasField("oldest"):
        oldest = seq.oldest
        for size in oldest.preferred_batch_size:
            if not 0 < size <= max(1, mbs):
                raise invalid(
                    f"{where}: sequence_batching.oldest.preferred_batch_size {size} must be in "
                    f"1..{max(1, mbs)}"
                )
        return SequenceBatching(
            Strategy.OLDEST,
            seq.max_sequence_idle_microseconds or DEFAULT_IDLE_US,
            controls,
            states,
            max_queue_delay_us=oldest.max_queue_delay_microseconds,
            max_candidate_sequences=oldest.max_candidate_sequences,
            preferred_batch_sizes=tuple(sorted(oldest.preferred_batch_size)),
            preserve_ordering=oldest.preserve_ordering,
            iterative=seq.iterative_sequence,
        )
    direct = seq.direct
    utilization = direct.minimum_slot_utilization
    if not 0.0 <= utilization <= 1.0:
        raise invalid(
            f"{where}: sequence_batching.direct.minimum_slot_utilization must be in 0..1, "
            f"got {utilization}"
        )
    return SequenceBatching(
        Strategy.DIRECT,
        seq.max_sequence_idle_microseconds or DEFAULT_IDLE_US,
        controls,
        states,
        max_queue_delay_us=direct.max_queue_delay_microseconds,
        minimum_slot_utilization=utilization,
        iterative=seq.iterative_sequence,
    )


def _controls(seq: Any, where: str, inputs: set[str]) -> tuple[ControlInput, ...]:
    controls: list[ControlInput] = []
    kinds: set[ControlKind] = set()
    for item in seq.control_input:
        what = f"{where}: sequence_batching control_input '{item.name}'"
        if not item.name:
            raise invalid(f"{where}: a sequence_batching control_input has no name")
        if item.name in inputs or any(c.name == item.name for c in controls):
            raise invalid(f"{what} duplicates the name of another input")
        if len(item.control) != 1:
            raise invalid(f"{what} must have exactly one control, got {len(item.control)}")
        control = item.control[0]
        kind = ControlKind(pb.ModelSequenceBatching.Control.Kind.Name(control.kind))
        if kind in kinds:
            raise invalid(f"{what}: more than one control input of kind {kind.value}")
        kinds.add(kind)
        controls.append(_control(item.name, kind, control, what))
    return tuple(controls)


def _control(name: str, kind: ControlKind, control: Any, what: str) -> ControlInput:
    given = [
        (field, values)
        for field, values in (
            ("int32_false_true", control.int32_false_true),
            ("fp32_false_true", control.fp32_false_true),
            ("bool_false_true", control.bool_false_true),
        )
        if len(values)
    ]
    if kind is ControlKind.CORRID:
        if given:
            raise invalid(f"{what}: CONTROL_SEQUENCE_CORRID takes data_type, not {given[0][0]}")
        if control.data_type == pb.TYPE_INVALID:
            raise invalid(f"{what}: CONTROL_SEQUENCE_CORRID needs a data_type")
        datatype = DataType.from_config_name(pb.DataType.Name(control.data_type))
        if datatype not in _CORRID_TYPES:
            raise invalid(
                f"{what}: CONTROL_SEQUENCE_CORRID data_type must be TYPE_UINT64, TYPE_INT64, "
                f"TYPE_UINT32, TYPE_INT32 or TYPE_STRING, got {datatype.config_name}"
            )
        return ControlInput(name, kind, datatype)
    if control.data_type != pb.TYPE_INVALID:
        raise invalid(f"{what}: data_type applies to CONTROL_SEQUENCE_CORRID only")
    if len(given) != 1:
        raise invalid(
            f"{what}: {kind.value} needs exactly one of int32_false_true, fp32_false_true, "
            "bool_false_true"
        )
    field, values = given[0]
    if len(values) != 2:
        raise invalid(f"{what}: {field} must hold two values (false, true), got {len(values)}")
    datatype = {
        "int32_false_true": DataType.INT32,
        "fp32_false_true": DataType.FP32,
        "bool_false_true": DataType.BOOL,
    }[field]
    return ControlInput(name, kind, datatype, values[0], values[1])


def _states(seq: Any, where: str, taken: set[str]) -> tuple[SequenceState, ...]:
    states: list[SequenceState] = []
    outputs: set[str] = set()
    for item in seq.state:
        what = f"{where}: sequence_batching state '{item.input_name}'"
        if not item.input_name or not item.output_name:
            raise invalid(f"{where}: a sequence_batching state needs input_name and output_name")
        if item.input_name in taken:
            raise invalid(f"{what} duplicates the name of another input")
        if item.output_name in outputs:
            raise invalid(f"{what}: output_name '{item.output_name}' is used twice")
        taken.add(item.input_name)
        outputs.add(item.output_name)
        # use_same_buffer_for_input_output and use_growable_memory are memory hints with the
        # same results: honoured trivially, since every state is a fresh array here that is
        # as large as the model makes it.
        if item.data_type == pb.TYPE_INVALID:
            raise invalid(f"{what} has no data_type")
        if not item.dims or any(d < -1 or d == 0 for d in item.dims):
            raise invalid(f"{what} dims {list(item.dims)} must be > 0 or -1")
        datatype = DataType.from_config_name(pb.DataType.Name(item.data_type))
        dims = tuple(item.dims)
        initial = item.initial_state[0] if item.initial_state else None
        states.append(
            SequenceState(
                item.input_name,
                item.output_name,
                datatype,
                dims,
                _initial(item, datatype, dims, what),
                initial.data_file if initial is not None else "",
            )
        )
    return tuple(states)


def _initial(item: Any, datatype: DataType, dims: tuple[int, ...], what: str) -> np.ndarray:
    if len(item.initial_state) > 1:
        raise invalid(f"{what}: at most one initial_state is supported")
    if not item.initial_state:
        if -1 in dims:
            raise invalid(f"{what} has variable dims {list(dims)}: give it an initial_state")
        return _zeros(datatype, dims)
    initial = item.initial_state[0]
    if initial.HasField("data_file") and datatype is DataType.BYTES:
        raise invalid(f"{what}: initial_state data_file is not supported for TYPE_STRING states")
    if initial.HasField("data_file") and not initial.data_file:
        raise invalid(f"{what}: initial_state data_file is empty")
    if initial.data_type not in (pb.TYPE_INVALID, item.data_type):
        raise invalid(f"{what}: initial_state data_type differs from the state's")
    shape = tuple(initial.dims)
    if not shape or any(d < 1 for d in shape):
        raise invalid(f"{what}: initial_state dims {list(shape)} must all be > 0")
    if len(shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, shape, strict=True)):
        raise invalid(f"{what}: initial_state dims {list(shape)} do not fit dims {list(dims)}")
    return _zeros(datatype, shape)


def with_initial_state_files(config: ModelConfig, model_dir: Path) -> ModelConfig:
    """Read the initial states given as files (raw values in row-major order, in the model's
    `initial_state` folder, as Triton reads them); the config unchanged when there are none."""
    seq = config.sequence_batching
    if seq is None or not any(s.initial_file for s in seq.states):
        return config
    states = []
    for state in seq.states:
        if state.initial_file:
            state = replace(state, initial=_read_initial(state, model_dir, config.name))
        states.append(state)
    return replace(config, sequence_batching=replace(seq, states=tuple(states)))


def _read_initial(state: SequenceState, model_dir: Path, model: str) -> np.ndarray:
    path = model_dir / "initial_state" / state.initial_file
    what = f"model '{model}': sequence_batching state '{state.input_name}'"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise invalid(f"{what}: cannot read initial_state data_file {path}: {exc}") from None
    zeros = state.initial
    if len(data) != zeros.nbytes:
        raise invalid(
            f"{what}: initial_state data_file {path} holds {len(data)} bytes, but dims "
            f"{list(zeros.shape)} of {state.datatype.config_name} take {zeros.nbytes}"
        )
    array = np.frombuffer(data, dtype=zeros.dtype).reshape(zeros.shape)
    array.flags.writeable = False
    return array


def _zeros(datatype: DataType, dims: tuple[int, ...]) -> np.ndarray:
    if datatype is DataType.BYTES:
        return np.full(dims, b"", dtype=np.object_)
    zeros = np.zeros(dims, dtype=datatype.numpy)
    zeros.flags.writeable = False  # shared by every sequence that starts
    return zeros
