"""An ensemble against the models it is made of (Triton's ValidateEnsembleConfig and its
messages): every composing model ready, batch sizes that fit, every mapped name a real input or
output of the composing model, and one data type and a compatible shape per ensemble tensor.

Run whenever the ensemble loads and again whenever a model it is made of loads, reloads or
goes away: an ensemble is READY exactly while this finds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from inferd.repository.config import ModelConfig, TensorConfig
from inferd.repository.ensemble_config import EnsembleConfig, EnsembleStep, dataflow, step_labels
from inferd.server.types import DataType

# The ready config a step uses, or why there is none ("not found in any repository", ...).
ConfigLookup = Callable[[EnsembleStep], ModelConfig | str]


@dataclass(frozen=True, slots=True)
class _Tensor:
    """What one model says of an ensemble tensor."""

    model: str
    datatype: DataType
    dims: tuple[int, ...]  # without the batch dim
    batching: bool

    @property
    def full_dims(self) -> tuple[int, ...]:
        return (-1, *self.dims) if self.batching else self.dims


def composing_error(config: ModelConfig, ensemble: EnsembleConfig, lookup: ConfigLookup) -> str:
    """Why the ensemble cannot serve with the composing models as they are now ("" = it can)."""
    name = config.name
    configs: list[ModelConfig] = []
    missing: dict[str, str] = {}
    for step in ensemble.steps:
        found = lookup(step)
        if isinstance(found, str):
            missing.setdefault(step.model_name, found)
        else:
            configs.append(found)
    if missing:
        details = "; ".join(f"'{model}': {why}" for model, why in missing.items() if why)
        return (
            f"ensemble {name} contains models that are not available: "
            + ", ".join(missing)
            + (f" ({details})" if details else "")
        )
    tensors: dict[str, _Tensor] = {}
    batching = config.max_batch_size > 0
    for tensor in (*config.inputs, *config.outputs):
        tensors.setdefault(tensor.name, _node(name, tensor, batching))
    decoupled = [index for index, composing in enumerate(configs) if composing.decoupled]
    if len(decoupled) > 1:
        models = ", ".join(ensemble.steps[index].model_name for index in decoupled)
        return (
            f"ensemble {name} contains more than one decoupled model ({models}): inferd "
            "streams an ensemble's responses from one decoupled step"
        )
    if decoupled:
        graph = dataflow(
            ensemble, [t.name for t in config.inputs], [t.name for t in config.outputs]
        )
        reason = graph.decoupled_error(decoupled[0], name, step_labels(ensemble))
        if reason:
            return reason
    for step, composing in zip(ensemble.steps, configs, strict=True):
        limit = composing.max_batch_size
        if limit != 0 and limit < config.max_batch_size:
            return (
                f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it "
                f"contains model {step.model_name} which only allows maximum batch size to be "
                f"{limit}"
            )
        reason = _mapping_error(name, step, composing, tensors)
        if reason:
            return reason
    return ""


def _mapping_error(
    ensemble: str, step: EnsembleStep, config: ModelConfig, tensors: dict[str, _Tensor]
) -> str:
    model = step.model_name
    inputs = {t.name: t for t in config.inputs}
    outputs = {t.name: t for t in config.outputs}
    batching = config.max_batch_size > 0
    for model_input, tensor in step.input_map.items():
        if model_input not in inputs:
            return (
                f"in ensemble {ensemble}, ensemble tensor {tensor} is mapping to non-existing "
                f"input {model_input} in model {model}"
            )
    for spec in config.inputs:
        if spec.name not in step.input_map and not spec.optional:
            return (
                f"in ensemble {ensemble}, input {spec.name} in model {model} is not mapped to "
                "any ensemble tensors"
            )
    for model_output, tensor in step.output_map.items():
        if model_output not in outputs:
            return (
                f"in ensemble {ensemble}, ensemble tensor {tensor} is mapped from non-existing "
                f"output {model_output} in model {model}"
            )
    mapped = [
        *((tensor, inputs[name]) for name, tensor in step.input_map.items()),
        *((tensor, outputs[name]) for name, tensor in step.output_map.items()),
    ]
    for tensor, spec in mapped:
        node = _node(model, spec, batching)
        seen = tensors.setdefault(tensor, node)
        reason = _inconsistency(seen, node)
        if reason:
            return f"in ensemble {ensemble}, ensemble tensor {tensor}: {reason}"
    return ""


def _node(model: str, tensor: TensorConfig, batching: bool) -> _Tensor:
    return _Tensor(model, tensor.datatype, tensor.dims, batching)


def _inconsistency(seen: _Tensor, other: _Tensor) -> str:
    if seen.datatype is not other.datatype:
        return (
            f"inconsistent data type: {seen.datatype.config_name} is inferred from model "
            f"{seen.model} while {other.datatype.config_name} is inferred from model {other.model}"
        )
    # Shapes agree when equal up to -1, either without the batch dim or with it (a tensor
    # passed between a batching and a non-batching model); otherwise checked per request.
    if not _dims_agree(seen.dims, other.dims) and not _dims_agree(seen.full_dims, other.full_dims):
        return (
            f"inconsistent shape: {list(seen.full_dims)} is inferred from model {seen.model} "
            f"while {list(other.full_dims)} is inferred from model {other.model}"
        )
    return ""


def _dims_agree(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def decoupled_step(ensemble: EnsembleConfig, lookup: ConfigLookup) -> int | None:
    """The step whose model is decoupled, if any (composing_error allows one at most): each of
    its responses makes one response of the ensemble, which is then decoupled too."""
    for index, step in enumerate(ensemble.steps):
        found = lookup(step)
        if not isinstance(found, str) and found.decoupled:
            return index
    return None
