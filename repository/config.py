"""config.pbtxt: strict parsing into Triton's own ModelConfig message, normalisation, typed view.

The protobuf message (from the compiled modules tritonclient ships) stays the source of truth
for what the config endpoint prints; the frozen dataclasses are what the data plane reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, MutableSequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2 as pb

from inferd.repository.batch_io_config import BatchInput, BatchOutput, parse_batch_io
from inferd.repository.ensemble_config import (
    EnsembleConfig,
    is_ensemble,
    parse_ensemble,
    validate_ensemble,
)
from inferd.repository.model_metrics import ModelMetricsConfig, parse_model_metrics
from inferd.repository.sequence_config import (
    SequenceBatching,
    normalize_sequence,
    parse_sequence_batching,
)
from inferd.server.errors import invalid
from inferd.server.types import DataType

# tritonclient ships no type stubs for its generated messages, so to mypy they are Any.
ModelConfigProto: TypeAlias = Any
CONFIG_FILENAME = "config.pbtxt"
CUSTOM_CONFIG_DIR = "configs"  # --model-config-name=NAME reads configs/NAME.pbtxt


class OutputOrder(StrEnum):
    """The order an answer lists a model's outputs in: the order its Triton backend adds them
    to the response (neither Triton's core nor its front doors sort them, and none follows
    the order the request named them in)."""

    CONFIG = "config"  # the config's (OpenVINO, FIL; ensembles, whose Triton order is a hash's)
    NAME = "name"  # by name: ONNX Runtime, PyTorch and TensorFlow keep them in a std::map/set
    RETURNED = "returned"  # as the instance returned them: python models, TensorRT's engine


class DeviceKind(StrEnum):
    AUTO = "KIND_AUTO"
    GPU = "KIND_GPU"
    CPU = "KIND_CPU"
    MODEL = "KIND_MODEL"


@dataclass(frozen=True, slots=True)
class TensorConfig:
    name: str
    datatype: DataType
    dims: tuple[int, ...]  # without the batch dim; -1 = variable
    # `reshape { shape }`: the shape the model itself takes or makes (clients see `dims`).
    reshape: tuple[int, ...] | None = None
    optional: bool = False
    allow_ragged_batch: bool = False
    label_filename: str = ""

    @property
    def variable(self) -> bool:
        return -1 in self.dims

    # The numpy dtype, kept beside the datatype: requests are checked against it.
    dtype: np.dtype[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", self.datatype.numpy)


@dataclass(frozen=True, slots=True)
class RateLimiterResource:
    name: str
    count: int
    is_global: bool = False  # one copy for the server, not one per device


@dataclass(frozen=True, slots=True)
class RateLimiterConfig:
    """An instance group's `rate_limiter` (used with --rate-limit=execution_count)."""

    resources: tuple[RateLimiterResource, ...] = ()
    priority: int = 0  # 0 counts as 1; an instance of priority N runs 1/N as often as one of 1


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    name: str
    kind: DeviceKind
    count: int
    gpus: tuple[int, ...]
    rate_limiter: RateLimiterConfig = RateLimiterConfig()
    passive: bool = False  # its instances load but take no requests (Triton's `passive`)


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    delay_on_timeout: bool = False  # timeout_action DELAY (else REJECT)
    default_timeout_us: int = 0  # 0 = no timeout
    allow_timeout_override: bool = False
    max_queue_size: int = 0  # 0 = unbounded


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = QueuePolicy()
    priority_queue_policy: Mapping[int, QueuePolicy] | None = None


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    kind: str  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    platform: str
    backend: str
    max_batch_size: int  # 0 = the model does not batch; inputs carry no batch dim
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    instance_groups: tuple[InstanceGroup, ...]
    dynamic_batching: DynamicBatching | None
    version_policy: VersionPolicy
    parameters: Mapping[str, str]
    default_model_filename: str
    proto: ModelConfigProto  # normalised message, for the config endpoint
    input_by_name: Mapping[str, TensorConfig]  # the inputs again, for lookups per request
    output_by_name: Mapping[str, TensorConfig]  # the same for the outputs
    # The outputs in the order answers list them (OutputOrder.RETURNED: the instance's).
    output_order: OutputOrder
    answer_outputs: tuple[TensorConfig, ...]
    ensemble: EnsembleConfig | None = None  # the steps of a `platform: "ensemble"` model
    # Ragged batching: tensors made per batch, outputs scattered back (batch_io_config.py).
    batch_inputs: tuple[BatchInput, ...] = ()
    batch_outputs: tuple[BatchOutput, ...] = ()
    sequence_batching: SequenceBatching | None = None  # a stateful model's sequence batcher
    response_cache: bool = False  # response_cache { enable: true } (used with --cache-config)
    # model_transaction_policy { decoupled: true }: 0..n responses per request, streamed
    # (python backend only; see validate_decoupled).
    decoupled: bool = False
    metrics: ModelMetricsConfig = field(default_factory=ModelMetricsConfig)  # metric_tags & co.
    # Any tensors in and out, the declared ones being metadata only (MLServer models without
    # `inputs`/`outputs` in their settings); such a model does not batch.
    schemaless: bool = False
    # The model file a GPU instance loads, by its GPU's compute capability ("8.0"), in place
    # of default_model_filename (Triton's cc_model_filenames).
    cc_model_filenames: Mapping[str, str] = field(default_factory=dict)


def parse_config_text(text: str, source: str) -> ModelConfigProto:
    """Strict text-format parse: an unknown or misspelt field is an error naming it and the file."""
    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise invalid(f"failed to parse {source}: {exc}") from None
    _check_enums(config, source)
    return config


def config_path(model_dir: Path, config_name: str = "") -> Path:
    """Where the model's config is: `configs/<config_name>.pbtxt` when --model-config-name
    names one that exists (Triton's custom configs), else config.pbtxt."""
    if config_name:
        custom = model_dir / CUSTOM_CONFIG_DIR / f"{config_name}.pbtxt"
        if custom.is_file():
            return custom
    return model_dir / CONFIG_FILENAME


def read_config(model_dir: Path, config_name: str = "") -> ModelConfigProto:
    """The model's config (see `config_path`), or an empty config for the backend to complete."""
    path = config_path(model_dir, config_name)
    if not path.is_file():
        return pb.ModelConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid(f"failed to read {path}: {exc}") from None
    return parse_config_text(text, str(path))


def config_from_json(text: str | bytes, source: str) -> ModelConfigProto:
    """A ModelConfig given as JSON (the load API's `config` parameter), parsed as Triton does."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise invalid(f"failed to parse {source}: it is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise invalid(f"failed to parse {source}: a model config is a JSON object")
    config = pb.ModelConfig()
    try:
        json_format.ParseDict(document, config, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise invalid(f"failed to parse {source}: {exc}") from None
    _check_enums(config, source)
    return config


def _check_enums(message: Any, source: str, where: str = "") -> None:
    """Both parsers take a number for an enum field, one the enum may not have (`data_type:
    16`): refused here, naming the field, rather than failing later in a conversion."""
    for fd, value in message.ListFields():
        path = f"{where}{fd.name}"
        if fd.type == FieldDescriptor.TYPE_ENUM:
            values = value if isinstance(value, MutableSequence) else [value]
            for number in values:
                if number not in fd.enum_type.values_by_number:
                    raise invalid(
                        f"failed to parse {source}: {path} is {number}, which is no "
                        f"{fd.enum_type.name} value"
                    )
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                value_fd = fd.message_type.fields_by_name["value"]
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    for key, item in value.items():
                        _check_enums(item, source, f"{path}[{key}].")
            elif isinstance(value, MutableSequence):
                for index, item in enumerate(value):
                    _check_enums(item, source, f"{path}[{index}].")
            else:
                _check_enums(value, source, f"{path}.")


def normalize(config: ModelConfigProto, model_name: str, gpu_count: int) -> None:
    """Fill the defaults Triton fills after auto-complete (core NormalizeModelConfig)."""
    if not config.name:
        config.name = model_name
    if not config.HasField("version_policy") or (
        config.version_policy.HasField("latest") and config.version_policy.latest.num_versions == 0
    ):
        config.version_policy.latest.num_versions = 1
    batching = config.dynamic_batching if config.HasField("dynamic_batching") else None
    if batching is not None and not batching.preferred_batch_size and config.max_batch_size > 0:
        batching.preferred_batch_size.append(config.max_batch_size)
    if config.HasField("sequence_batching"):
        normalize_sequence(config)
    # Printed for ensembles and the other backends' models. A python model's config shows it
    # only where its config.pbtxt or auto_complete_config() sets it, as in Triton 2.51.
    if config.backend != "python":
        config.model_transaction_policy.SetInParent()
    if is_ensemble(config):
        return  # no instances nor optimization of its own (Triton leaves both out)
    # Triton's defaults, printed in every other model's config (inferd keeps no pinned pool).
    optimization = config.optimization
    if not optimization.HasField("input_pinned_memory"):
        optimization.input_pinned_memory.enable = True
    if not optimization.HasField("output_pinned_memory"):
        optimization.output_pinned_memory.enable = True
    if not config.instance_group:  # named as the model, as Triton names it
        group = config.instance_group.add(name=config.name)
        group.kind = pb.ModelInstanceGroup.KIND_AUTO
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.count < 1:  # as Triton: no count (or a negative one) is one instance
            group.count = 1
        if group.kind == pb.ModelInstanceGroup.KIND_AUTO:
            group.kind = (
                pb.ModelInstanceGroup.KIND_GPU if gpu_count > 0 else pb.ModelInstanceGroup.KIND_CPU
            )
        if group.kind == pb.ModelInstanceGroup.KIND_GPU and not group.gpus:
            group.gpus.extend(range(gpu_count))


def validate(
    config: ModelConfigProto, model_name: str, source: str, schemaless: bool = False
) -> None:
    """Reject configs inferd cannot serve faithfully; messages name the field and the model.
    `schemaless`: the model takes and answers tensors its config need not declare."""
    where = f"model '{model_name}' ({source})"
    if config.name != model_name:
        raise invalid(f"{where}: config name '{config.name}' must match the folder name")
    if config.response_cache.enable:
        _validate_response_cache(where, config)
    if config.max_batch_size < 0:
        raise invalid(f"{where}: max_batch_size must be >= 0, got {config.max_batch_size}")
    # A model without inputs or outputs loads, as in Triton (a python model that answers from
    # its parameters, one that only consumes).
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: dict[str, Any] = {}
        for tensor in tensors:
            _validate_tensor(where, kind, tensor, seen)
            if tensor.HasField("reshape"):
                _validate_reshape(where, f"model {kind} '{tensor.name}'", tensor, config)
    parse_batch_io(config, where)
    if config.HasField("dynamic_batching"):
        _validate_batching(where, config)
    if config.HasField("sequence_batching"):
        parse_sequence_batching(config, where)
    validate_ensemble(config)
    for group in config.instance_group:
        _validate_rate_limiter(where, group)


def _validate_rate_limiter(where: str, group: Any) -> None:
    """Resource names must be given and distinct within a group (Triton takes an empty name
    and keeps the last of a repeated one silently; both are mistakes). Counts cannot be
    negative: the message holds them unsigned."""
    seen: set[str] = set()
    for resource in group.rate_limiter.resources:
        if not resource.name:
            raise invalid(
                f"{where}: instance_group '{group.name}' rate_limiter: a resource has no name"
            )
        if resource.name in seen:
            raise invalid(
                f"{where}: instance_group '{group.name}' rate_limiter: resource "
                f"'{resource.name}' is listed twice"
            )
        seen.add(resource.name)


# Backends whose instances can answer a request with 0..n responses (a response sender).
DECOUPLED_BACKENDS = frozenset({"python"})
# Backends whose model code picks its own devices (Triton's KIND_MODEL instances).
MODEL_KIND_BACKENDS = frozenset({"python", "pytorch"})


def validate_decoupled(config: ModelConfigProto, backend: str, source: str) -> None:
    """A decoupled model streams 0..n responses per request: only backends with a response
    sender can run one. (An ensemble may say it is; it streams through its decoupled step.)"""
    if not config.model_transaction_policy.decoupled:
        return
    if backend not in DECOUPLED_BACKENDS:
        raise invalid(
            f"model '{config.name}' ({source}): model_transaction_policy {{ decoupled: true }} "
            f"is not supported by inferd's '{backend}' backend (only by: "
            f"{', '.join(sorted(DECOUPLED_BACKENDS))})"
        )


def validate_instance_kinds(config: ModelConfigProto, backend: str, source: str) -> None:
    """KIND_MODEL instances are placed by the model itself: only model code can do that."""
    for group in config.instance_group:
        if group.kind == pb.ModelInstanceGroup.KIND_MODEL and backend not in MODEL_KIND_BACKENDS:
            raise invalid(
                f"model '{config.name}' ({source}): instance_group '{group.name}' kind "
                f"KIND_MODEL is not supported by inferd's '{backend}' backend (only by: "
                f"{', '.join(sorted(MODEL_KIND_BACKENDS))}, whose model picks its devices)"
            )


def _validate_response_cache(where: str, config: ModelConfigProto) -> None:
    """Cached answers fit requests that stand alone (Triton's rule and wording)."""
    if config.model_transaction_policy.decoupled:
        blocker = "'decoupled' transaction policy"
    elif config.HasField("sequence_batching"):
        blocker = "sequence batching scheduler"
    else:
        return
    raise invalid(
        f"{where}: Response Cache does not currently support model {config.name} with "
        f"{blocker}. Please disable the response cache."
    )


def _validate_tensor(where: str, kind: str, tensor: Any, seen: dict[str, Any]) -> None:
    if not tensor.name:
        raise invalid(f"{where}: an {kind} has no name")
    # Triton loads a tensor declared twice (a copy-paste slip); one declared twice in two
    # ways would leave its type or shape to chance.
    if tensor.name in seen and seen[tensor.name] != tensor:
        raise invalid(f"{where}: {kind} '{tensor.name}' is declared twice, differently")
    seen[tensor.name] = tensor
    if tensor.data_type == pb.TYPE_INVALID:
        raise invalid(f"{where}: {kind} '{tensor.name}' has no data_type")
    if not tensor.dims:
        raise invalid(f"{where}: {kind} '{tensor.name}' must have at least one dim")
    if any(d < -1 or d == 0 for d in tensor.dims):
        raise invalid(f"{where}: {kind} '{tensor.name}' dims {list(tensor.dims)} must be > 0 or -1")


def _validate_reshape(where: str, prefix: str, tensor: Any, config: ModelConfigProto) -> None:
    """Triton's rules (model_config_utils.cc ValidateIOShape) and messages: the same element
    count, and around each variable-size dim the same count on both sides; an empty reshape
    (a scalar per batch item) only for a batching model."""
    dims, shape = list(tensor.dims), list(tensor.reshape.shape)
    if not shape and config.max_batch_size == 0:
        raise invalid(f"{where}: {prefix} cannot have empty reshape for non-batching model")
    if any(d < 1 and d != -1 for d in shape):
        raise invalid(
            f"{where}: {prefix} reshape dimensions must be integer >= 1, or -1 to indicate a "
            "variable-size dimension"
        )
    dims_size, shape_size = _element_count(dims), _element_count(shape)
    different = invalid(f"{where}: {prefix} has different size for dims and reshape")
    if dims_size != shape_size and (shape_size != 0 or dims_size != 1):
        raise different
    if dims_size == -1:  # both have variable-size dims
        dims_runs, shape_runs = _runs(dims), _runs(shape)
        if len(dims_runs) != len(shape_runs):
            raise invalid(
                f"{where}: {prefix} has different number of variable-size dimensions for dims "
                "and reshape"
            )
        if dims_runs != shape_runs:
            raise different


def _element_count(dims: list[int]) -> int:
    """Triton's GetElementCount: -1 with a variable-size dim, 0 for no dims."""
    return -1 if -1 in dims else math.prod(dims) if dims else 0


def _runs(dims: list[int]) -> list[int]:
    """The element counts between variable-size dims: [2, 4, -1, 6] -> [8, 6]."""
    runs = [1]
    for dim in dims:
        if dim == -1:
            runs.append(1)
        else:
            runs[-1] *= dim
    return runs


def _validate_batching(where: str, config: ModelConfigProto) -> None:
    batching = config.dynamic_batching
    for size in batching.preferred_batch_size:
        if not 0 < size <= config.max_batch_size:
            raise invalid(
                f"{where}: preferred_batch_size {size} must be in 1..{config.max_batch_size}"
            )
    if batching.default_priority_level > batching.priority_levels:
        raise invalid(
            f"{where}: default_priority_level {batching.default_priority_level} exceeds "
            f"priority_levels {batching.priority_levels}"
        )
    if batching.priority_levels > 0 and batching.default_priority_level == 0:
        raise invalid(f"{where}: default_priority_level must be set when priority_levels > 0")
    for level in batching.priority_queue_policy:
        if not 0 < level <= batching.priority_levels:  # Triton's words
            raise invalid(
                f"{where}: priority queue policy must have priority level in range "
                f"[1, {batching.priority_levels}]"
            )


def to_model_config(
    config: ModelConfigProto,
    backend: str,
    schemaless: bool = False,
    output_order: OutputOrder = OutputOrder.CONFIG,
) -> ModelConfig:
    """The typed, read-only view of a normalised and validated config."""
    inputs = tuple(_tensor(t, is_input=True) for t in config.input)
    outputs = tuple(_tensor(t, is_input=False) for t in config.output)
    batch_inputs, batch_outputs = parse_batch_io(config, f"model '{config.name}'")
    return ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=backend,
        max_batch_size=config.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        instance_groups=tuple(
            InstanceGroup(
                name=g.name,
                kind=DeviceKind(pb.ModelInstanceGroup.Kind.Name(g.kind)),
                count=g.count,
                gpus=tuple(g.gpus),
                rate_limiter=_rate_limiter(g.rate_limiter),
                passive=g.passive,
            )
            for g in config.instance_group
        ),
        dynamic_batching=_batching(config) if config.HasField("dynamic_batching") else None,
        version_policy=_version_policy(config.version_policy),
        parameters={k: v.string_value for k, v in config.parameters.items()},
        default_model_filename=config.default_model_filename,
        proto=config,
        input_by_name={t.name: t for t in inputs},
        output_by_name={t.name: t for t in outputs},
        output_order=output_order,
        answer_outputs=(
            tuple(sorted(outputs, key=lambda t: t.name))
            if output_order is OutputOrder.NAME
            else outputs
        ),
        ensemble=parse_ensemble(config) if is_ensemble(config) else None,
        sequence_batching=(
            parse_sequence_batching(config, f"model '{config.name}'")
            if config.HasField("sequence_batching")
            else None
        ),
        decoupled=config.model_transaction_policy.decoupled,
        response_cache=config.response_cache.enable,
        schemaless=schemaless,
        cc_model_filenames=dict(config.cc_model_filenames),
        batch_inputs=batch_inputs,
        batch_outputs=batch_outputs,
        metrics=parse_model_metrics(config, f"model '{config.name}'"),
    )


def _tensor(tensor: Any, *, is_input: bool) -> TensorConfig:
    return TensorConfig(
        name=tensor.name,
        datatype=DataType.from_config_name(pb.DataType.Name(tensor.data_type)),
        dims=tuple(tensor.dims),
        reshape=tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None,
        optional=is_input and tensor.optional,
        allow_ragged_batch=is_input and tensor.allow_ragged_batch,
        label_filename="" if is_input else tensor.label_filename,
    )


def _rate_limiter(limiter: Any) -> RateLimiterConfig:
    return RateLimiterConfig(
        resources=tuple(
            RateLimiterResource(r.name, r.count, getattr(r, "global")) for r in limiter.resources
        ),
        priority=limiter.priority,
    )


def _queue_policy(policy: Any) -> QueuePolicy:
    return QueuePolicy(
        delay_on_timeout=policy.timeout_action == pb.ModelQueuePolicy.DELAY,
        default_timeout_us=policy.default_timeout_microseconds,
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=policy.max_queue_size,
    )


def _batching(config: ModelConfigProto) -> DynamicBatching:
    batching = config.dynamic_batching
    return DynamicBatching(
        preferred_batch_sizes=tuple(sorted(batching.preferred_batch_size)),
        max_queue_delay_us=batching.max_queue_delay_microseconds,
        preserve_ordering=batching.preserve_ordering,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        default_queue_policy=_queue_policy(batching.default_queue_policy),
        priority_queue_policy={
            level: _queue_policy(p) for level, p in batching.priority_queue_policy.items()
        },
    )


def _version_policy(policy: Any) -> VersionPolicy:
    if policy.HasField("all"):
        return VersionPolicy("all")
    if policy.HasField("specific"):
        return VersionPolicy("specific", versions=tuple(policy.specific.versions))
    return VersionPolicy("latest", num_versions=policy.latest.num_versions or 1)


def config_to_json(config: ModelConfigProto) -> dict[str, Any]:
    """The config as Triton prints it: field names as in the proto and in its order, defaults
    included, enums by name and 64-bit integers as JSON numbers (protobuf's JSON would quote
    them)."""
    data: dict[str, Any] = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _as_triton_prints(config.DESCRIPTOR, data)


_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _as_triton_prints(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (MessageToDict's, set fields first) with its fields in the order the proto
    declares them and 64-bit integers as numbers, all the way down."""
    ordered: dict[str, Any] = {}
    for fd in descriptor.fields:
        if fd.name not in data:
            continue
        value = data[fd.name]
        if fd.type in _INT64_TYPES:
            value = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            message = fd.message_type
            if message.GetOptions().map_entry:
                value_fd = message.fields_by_name["value"]
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    value = {
                        key: _as_triton_prints(value_fd.message_type, item)
                        for key, item in value.items()
                    }
            elif isinstance(value, list):
                value = [_as_triton_prints(message, item) for item in value]
            else:
                value = _as_triton_prints(message, value)
        ordered[fd.name] = value
    return ordered
