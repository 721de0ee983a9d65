"""`reshape { shape }` on a config's inputs and outputs: clients see `dims`, the model takes and
makes `shape` (a common use: `dims: [1]` with `reshape: { shape: [] }` for a model that takes
one scalar per batch item).

Backends see the model's side only: they are created with `model_side(config)`, whose tensors
have the reshape shapes as dims, and their instances are wrapped in a `ReshapedInstance`,
which reshapes the inputs on the way in and the outputs on the way out. A variable-size dim
(-1) takes its size from the other side's variable-size dims, in order, as Triton's
InferenceRequest::Normalize does for inputs. Outputs that already have their `dims` shape
(a python model may make them so) are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from inferd.backends.base import InstanceRequest, ModelInstance, RequestOutcome
from inferd.repository.config import ModelConfig, TensorConfig
from inferd.server.errors import internal

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # name: (from, to) without batch dim


def model_side(config: ModelConfig) -> ModelConfig:
    """The config as the backend sees it: reshaped tensors have their model shape as dims."""
    if not _reshaped(config.inputs) and not _reshaped(config.outputs):
        return config
    inputs = tuple(_model_tensor(t) for t in config.inputs)
    return replace(
        config,
        inputs=inputs,
        outputs=tuple(_model_tensor(t) for t in config.outputs),
        input_by_name={t.name: t for t in inputs},
    )


def reshaped(instance: ModelInstance, config: ModelConfig) -> ModelInstance:
    """`instance` (made from `model_side(config)`) as clients' shapes need it."""
    if not _reshaped(config.inputs) and not _reshaped(config.outputs):
        return instance
    to_model = {t.name: (t.dims, t.reshape) for t in config.inputs if t.reshape is not None}
    to_api = {t.name: (t.reshape, t.dims) for t in config.outputs if t.reshape is not None}
    return ReshapedInstance(instance, to_model, to_api, config.max_batch_size > 0)


@dataclass(frozen=True, slots=True)
class _Reshapes:
    shapes: Shapes
    lead: int  # leading dims kept as they are: 1 (the batch dim) for a batching model

    def apply(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(tensors)
        for name, (source, target) in self.shapes.items():
            array = out.get(name)
            if array is not None:
                out[name] = self._reshape(name, array, source, target)
        return out

    def _reshape(
        self, name: str, array: np.ndarray, source: tuple[int, ...], target: tuple[int, ...]
    ) -> np.ndarray:
        lead, item = array.shape[: self.lead], array.shape[self.lead :]
        if _fits(item, target):
            return array  # already shaped (a python model's own output)
        variable = iter([size for size, dim in zip(item, source, strict=False) if dim == -1])
        try:
            shape = tuple(next(variable) if dim == -1 else dim for dim in target)
            return array.reshape(lead + shape)
        except (StopIteration, ValueError):
            raise internal(
                f"tensor '{name}' has shape {list(array.shape)}, which does not reshape from "
                f"{list(source)} to {list(target)}"
            ) from None


class ReshapedInstance(ModelInstance):
    """A backend instance between the clients' shapes and the model's."""

    def __init__(
        self, inner: ModelInstance, to_model: Shapes, to_api: Shapes, batched: bool
    ) -> None:
        self._inner = inner
        self._inputs = _Reshapes(to_model, 1 if batched else 0)
        self._outputs = _Reshapes(to_api, 1 if batched else 0)
        self.runs_on_any_thread = inner.runs_on_any_thread
        self.takes_requests = inner.takes_requests

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._outputs.apply(self._inner.execute(self._inputs.apply(inputs)))

    def execute_requests(self, requests: Sequence[InstanceRequest]) -> list[RequestOutcome]:
        shaped = [replace(r, inputs=self._inputs.apply(r.inputs)) for r in requests]
        results = self._inner.execute_requests(shaped)
        return [r if isinstance(r, Exception) else self._outputs.apply(r) for r in results]

    def close(self) -> None:
        self._inner.close()


def _reshaped(tensors: Iterable[TensorConfig]) -> bool:
    return any(t.reshape is not None for t in tensors)


def _model_tensor(tensor: TensorConfig) -> TensorConfig:
    if tensor.reshape is None:
        return tensor
    return replace(tensor, dims=tensor.reshape, reshape=None)


def _fits(item: tuple[int, ...], target: tuple[int, ...]) -> bool:
    return len(item) == len(target) and all(t in (-1, i) for i, t in zip(item, target, strict=True))
