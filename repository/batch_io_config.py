"""A config's `batch_input` and `batch_output` (Triton's ragged batching, ragged_batching.md):
tensors the server makes for each batch from the requests in it, and outputs it scatters back
to the requests by the shape of one of their inputs. Checked and typed here; made and scattered
by batching/ragged.py."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tritonclient.grpc import model_config_pb2 as pb

from inferd.server.errors import invalid
from inferd.server.types import DataType


class BatchInputKind(StrEnum):
    ELEMENT_COUNT = "BATCH_ELEMENT_COUNT"
    ACCUMULATED_ELEMENT_COUNT = "BATCH_ACCUMULATED_ELEMENT_COUNT"
    ACCUMULATED_ELEMENT_COUNT_WITH_ZERO = "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO"
    MAX_ELEMENT_COUNT_AS_SHAPE = "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE"
    ITEM_SHAPE = "BATCH_ITEM_SHAPE"
    ITEM_SHAPE_FLATTEN = "BATCH_ITEM_SHAPE_FLATTEN"


# What a batch input may hold: Triton documents TYPE_INT32 and TYPE_FP32.
_DATA_TYPES = (DataType.INT32, DataType.FP32)


@dataclass(frozen=True, slots=True)
class BatchInput:
    kind: BatchInputKind
    targets: tuple[str, ...]  # model inputs that get it (the same tensor each)
    datatype: DataType
    source: str  # the request input it is derived from


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """BATCH_SCATTER_WITH_INPUT_SHAPE, the one kind: the model makes the targets for the whole
    batch at once; each request gets its part, shaped as its `source` input."""

    targets: tuple[str, ...]
    source: str


# The backends that make batch inputs and scatter batch outputs: those that run a batch as one
# concatenated execution and whose models inferd checks against them.
BATCH_IO_BACKENDS = frozenset({"onnxruntime"})


def validate_batch_io_backend(config: Any, backend: str, source: str) -> None:
    if (config.batch_input or config.batch_output) and backend not in BATCH_IO_BACKENDS:
        raise invalid(
            f"model '{config.name}' ({source}): batch_input and batch_output are not supported "
            f"by inferd's '{backend}' backend (only by: {', '.join(sorted(BATCH_IO_BACKENDS))})"
        )


def parse_batch_io(
    config: Any, where: str
) -> tuple[tuple[BatchInput, ...], tuple[BatchOutput, ...]]:
    """The typed batch inputs and outputs of a config; refused with a reason when they cannot
    work (InferdError INVALID_ARGUMENT)."""
    if not config.batch_input and not config.batch_output:
        return (), ()
    if config.max_batch_size == 0:
        raise invalid(f"{where}: batch_input and batch_output need max_batch_size > 0")
    inputs = {t.name for t in config.input}
    outputs = {t.name for t in config.output}
    batch_inputs: list[BatchInput] = []
    for item in config.batch_input:
        kind = BatchInputKind(pb.BatchInput.Kind.Name(item.kind))
        label = f"batch_input {kind.value}"
        source = _one_source(where, label, item.source_input, inputs)
        datatype = DataType.from_config_name(pb.DataType.Name(item.data_type))
        if datatype not in _DATA_TYPES:
            raise invalid(f"{where}: {label} must have data_type TYPE_INT32 or TYPE_FP32")
        if not item.target_name:
            raise invalid(f"{where}: {label} names no target_name")
        for target in item.target_name:
            if target in inputs:
                raise invalid(
                    f"{where}: {label} target '{target}' is also a model input: clients cannot "
                    "send a batch input"
                )
        batch_inputs.append(BatchInput(kind, tuple(item.target_name), datatype, source))
    batch_outputs: list[BatchOutput] = []
    for item in config.batch_output:
        label = "batch_output BATCH_SCATTER_WITH_INPUT_SHAPE"
        source = _one_source(where, label, item.source_input, inputs)
        if not item.target_name:
            raise invalid(f"{where}: {label} names no target_name")
        for target in item.target_name:
            if target not in outputs:
                raise invalid(f"{where}: {label} target '{target}' is not a model output")
        batch_outputs.append(BatchOutput(tuple(item.target_name), source))
    return tuple(batch_inputs), tuple(batch_outputs)


def _one_source(where: str, label: str, sources: Any, inputs: set[str]) -> str:
    if len(sources) != 1:
        raise invalid(f"{where}: {label} needs exactly one source_input, got {len(sources)}")
    source = str(sources[0])
    if source not in inputs:
        raise invalid(f"{where}: {label} source_input '{source}' is not a model input")
    return source
