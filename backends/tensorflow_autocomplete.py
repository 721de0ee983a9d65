"""What a TensorFlow model says about its tensors, and how a config must agree with it: the
backend's parameters, the choice of a SavedModel signature, auto-complete and checks. Plain data
only: this module never imports TensorFlow (the backend reads the model files and hands the
tensors over as names, TensorFlow DataType enum names and shapes)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inferd.backends.autocomplete import (
    TensorSpec,
    check_tensors,
    complete_max_batch_size,
    complete_tensors,
    model_dims_of,
)
from inferd.repository.config import ModelConfigProto
from inferd.repository.sequence_config import generated_names
from inferd.server.errors import InferdError, invalid
from inferd.server.types import DataType

log = logging.getLogger(__name__)

# Triton's tensorflow backend parameter names (config `parameters`).
SIGNATURE_DEF = "TF_SIGNATURE_DEF"
GRAPH_TAG = "TF_GRAPH_TAG"
INTRA_OP_THREADS = "TF_NUM_INTRA_THREADS"
INTER_OP_THREADS = "TF_NUM_INTER_THREADS"
INIT_OPS_FILE = "TF_INIT_OPS_FILE"

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
# Signatures a SavedModel may carry that are not for serving.
_INTERNAL_SIGNATURES = frozenset({"__saved_model_init_op", "__saved_model_train_op"})

# TensorFlow's DataType enum names (types.proto) -> wire datatypes.
TF_DATATYPES: Mapping[str, DataType] = {
    "DT_BOOL": DataType.BOOL,
    "DT_UINT8": DataType.UINT8,
    "DT_UINT16": DataType.UINT16,
    "DT_UINT32": DataType.UINT32,
    "DT_UINT64": DataType.UINT64,
    "DT_INT8": DataType.INT8,
    "DT_INT16": DataType.INT16,
    "DT_INT32": DataType.INT32,
    "DT_INT64": DataType.INT64,
    "DT_HALF": DataType.FP16,
    "DT_FLOAT": DataType.FP32,
    "DT_DOUBLE": DataType.FP64,
    "DT_STRING": DataType.BYTES,
    "DT_BFLOAT16": DataType.BF16,
}


@dataclass(frozen=True, slots=True)
class TfParameters:
    """The config's `parameters` this backend reads."""

    signature_def: str = ""  # "" = serving_default (or the only serving signature)
    graph_tag: str = SERVE_TAG
    intra_op_threads: int | None = None  # None = inferd's default; 0 = TensorFlow's own
    inter_op_threads: int | None = None
    init_ops_file: str = ""  # GraphDef: JSON {"init_ops": [...]} run once per session


def parse_parameters(parameters: Mapping[str, str]) -> TfParameters:
    return TfParameters(
        signature_def=parameters.get(SIGNATURE_DEF, ""),
        graph_tag=parameters.get(GRAPH_TAG, "") or SERVE_TAG,
        intra_op_threads=_thread_count(parameters, INTRA_OP_THREADS),
        inter_op_threads=_thread_count(parameters, INTER_OP_THREADS),
        init_ops_file=parameters.get(INIT_OPS_FILE, ""),
    )


def _thread_count(parameters: Mapping[str, str], key: str) -> int | None:
    raw = parameters.get(key, "").strip()
    if raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise invalid(f"parameter '{key}' must be a non-negative integer, got '{raw}'")
    return value


def proto_parameters(config: ModelConfigProto) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


@dataclass(frozen=True, slots=True)
class TfTensor:
    """One tensor as the model file declares it, before it becomes a TensorSpec."""

    name: str
    dtype: str  # TensorFlow's DataType enum name, e.g. DT_FLOAT
    shape: tuple[int, ...] | None  # -1 = variable; None = unknown rank


@dataclass(frozen=True, slots=True)
class Signature:
    """A SavedModel signature (or a GraphDef's configured tensors): keys, types, shapes."""

    key: str
    inputs: tuple[TfTensor, ...]
    outputs: tuple[TfTensor, ...]


def tf_shape(shape: Any) -> tuple[int, ...] | None:
    """A tf.TensorShape as dims (-1 = variable), None for an unknown rank."""
    if shape.rank is None:
        return None
    return tuple(-1 if d is None else int(d) for d in shape.as_list())


def pick_signature(keys: Iterable[str], wanted: str) -> str:
    """As Triton: the signature named by TF_SIGNATURE_DEF, else serving_default, else the
    first other serving signature (with a warning)."""
    available = sorted(set(keys) - _INTERNAL_SIGNATURES)
    if wanted:
        if wanted not in available:
            raise invalid(
                f"the SavedModel has no signature '{wanted}' (parameter {SIGNATURE_DEF}); "
                f"its signatures are: {', '.join(available) or 'none'}"
            )
        return wanted
    if DEFAULT_SIGNATURE in available:
        return DEFAULT_SIGNATURE
    if not available:
        raise invalid(f"the SavedModel has no serving signature ('{DEFAULT_SIGNATURE}')")
    log.warning(
        "SavedModel has no '%s' signature; using '%s' (set parameter %s to choose)",
        DEFAULT_SIGNATURE,
        available[0],
        SIGNATURE_DEF,
    )
    return available[0]


def to_spec(tensor: TfTensor, config_dims: Sequence[int] | None, batched: bool) -> TensorSpec:
    """A TensorSpec for the shared checks. A tensor of unknown rank takes the config's dims,
    as Triton does; one the config does not name stays unknown (rank 0)."""
    shape = tensor.shape
    if shape is None:
        shape = ((-1,) if batched else ()) + tuple(config_dims) if config_dims else ()
    return TensorSpec(
        name=tensor.name,
        type_name=tensor.dtype,
        datatype=TF_DATATYPES.get(tensor.dtype),
        shape=shape,
    )


def complete_and_check(
    config: ModelConfigProto,
    signature: Signature,
    model_file: Path,
    *,
    auto_complete: bool,
    default_max_batch_size: int,
    every_input: bool,
) -> None:
    """Auto-complete the config from the signature (inferd's ONNX rules, which are Triton's),
    then check that what it says agrees with the model. `every_input`: the model needs all its
    inputs fed (a SavedModel signature), so the config must name them all."""
    try:
        _complete_and_check(
            config, signature, model_file, auto_complete, default_max_batch_size, every_input
        )
    except InferdError as exc:
        if every_input:  # a SavedModel: say which signature the config was checked against
            raise InferdError(exc.code, f"signature '{signature.key}': {exc.message}") from None
        raise


def _complete_and_check(
    config: ModelConfigProto,
    signature: Signature,
    model_file: Path,
    auto_complete: bool,
    default_max_batch_size: int,
    every_input: bool,
) -> None:
    # The sequence batcher's control and state tensors are fed and read by the scheduler:
    # they are not the config's inputs and outputs.
    skip_inputs, skip_outputs = generated_names(config)
    if skip_inputs or skip_outputs:
        signature = replace(
            signature,
            inputs=tuple(t for t in signature.inputs if t.name not in skip_inputs),
            outputs=tuple(t for t in signature.outputs if t.name not in skip_outputs),
        )
    if auto_complete:
        # Shapes as the file has them: a tensor of unknown rank cannot say that it batches.
        specs = [to_spec(t, None, False) for t in (*signature.inputs, *signature.outputs)]
        complete_max_batch_size(config, specs, default_max_batch_size)
        batched = config.max_batch_size > 0
        for tensors, declared in (
            (config.input, signature.inputs),
            (config.output, signature.outputs),
        ):
            _check_completable(tensors, declared)
            specs = [to_spec(t, None, batched) for t in declared]
            complete_tensors(tensors, specs, config.max_batch_size, model_file)
    batched = config.max_batch_size > 0
    for kind, tensors, declared in (
        ("input", config.input, signature.inputs),
        ("output", config.output, signature.outputs),
    ):
        dims = {t.name: model_dims_of(t) for t in tensors}
        specs = [to_spec(t, dims.get(t.name), batched) for t in declared]
        check_tensors(kind, tensors, specs, batched, model_file)
    if every_input:
        missing = sorted({t.name for t in signature.inputs} - {t.name for t in config.input})
        if missing:
            raise invalid(
                f"the config does not name input(s) {', '.join(missing)}; the signature needs "
                f"every input: {', '.join(sorted(t.name for t in signature.inputs))}"
            )


def _check_completable(tensors: Sequence[Any], declared: Sequence[TfTensor]) -> None:
    """Dims of a tensor of unknown rank cannot be completed: the config must give them."""
    named = {t.name: t for t in tensors}
    for tensor in declared:
        if tensor.shape is not None:
            continue
        configured = named.get(tensor.name)
        if (configured is None and not named) or (configured is not None and not configured.dims):
            raise invalid(
                f"tensor '{tensor.name}' has no known shape in the model, so its dims cannot be "
                "auto-completed; give them in the config"
            )
