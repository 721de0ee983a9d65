"""A request's answer from its model's outputs: the outputs it asked for (all of them when it
named none), classification applied, in its model's order, and the response parameters the model
set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferd.backends.base import OutputsWithParameters
from inferd.batching.scheduler import Outputs
from inferd.repository.config import OutputOrder, TensorConfig
from inferd.repository.manager import ModelVersion
from inferd.server.classification import classify
from inferd.server.errors import invalid
from inferd.server.types import DataType, InferRequest, InferResponse, RequestedOutput


def answer(request: InferRequest, model: ModelVersion, outputs: Outputs) -> InferResponse:
    config = model.config
    assert config is not None
    result = (
        _schemaless(request, model, outputs)
        if config.schemaless
        else _declared(request, model, outputs)
    )
    if not isinstance(outputs, OutputsWithParameters):
        return InferResponse(request.model_name, str(model.version), result, request.id)
    return InferResponse(
        model_name=request.model_name,
        model_version=str(model.version),
        outputs=result,
        id=request.id,
        parameters=outputs.parameters,
        output_parameters=outputs.output_parameters,
        headers=outputs.headers,
    )


def _declared(
    request: InferRequest, model: ModelVersion, outputs: Outputs
) -> list[tuple[str, DataType, np.ndarray]]:
    """The outputs asked for (all when none were), in the order the model's Triton backend
    lists them (config.output_order), whatever order the request named them in."""
    config = model.config
    assert config is not None
    ordered: Sequence[TensorConfig] = config.answer_outputs
    if config.output_order is OutputOrder.RETURNED:
        by_name = config.output_by_name
        ordered = [by_name[name] for name in outputs if name in by_name]
    asked = {o.name: o for o in request.outputs} if request.outputs else None  # [] = all
    result: list[tuple[str, DataType, np.ndarray]] = []
    for tensor in ordered:
        classification = 0
        if asked is not None:
            output = asked.get(tensor.name)
            if output is None:
                continue
            classification = output.classification
        # A python model may leave an output out of its answer, or return it as another
        # type than its config's: as in Triton, the answer leaves it out, or carries the type
        # it came as.
        array = outputs.get(tensor.name)
        if array is None:
            continue
        if classification > 0:
            array = _classified(model, tensor.name, array, classification)
            result.append((tensor.name, DataType.BYTES, array))
        else:
            result.append((tensor.name, _carried_type(tensor.datatype, array), array))
    return result


def _schemaless(
    request: InferRequest, model: ModelVersion, outputs: Outputs
) -> list[tuple[str, DataType, np.ndarray]]:
    """A schemaless model's answer: what it returned (the outputs asked for, in the order
    asked), typed by its arrays where its metadata declares nothing."""
    config = model.config
    assert config is not None
    result: list[tuple[str, DataType, np.ndarray]] = []
    for output in request.outputs or [RequestedOutput(name) for name in outputs]:
        array = outputs.get(output.name)
        if array is None:
            raise invalid(  # nothing checked the name before the model ran
                f"unexpected inference output '{output.name}' for model '{config.name}'"
            )
        if output.classification > 0:
            array = _classified(model, output.name, array, output.classification)
            result.append((output.name, DataType.BYTES, array))
        else:
            declared = config.output_by_name.get(output.name)
            datatype = _carried_type(None if declared is None else declared.datatype, array)
            result.append((output.name, datatype, array))
    return result


def _classified(model: ModelVersion, name: str, array: np.ndarray, count: int) -> np.ndarray:
    config = model.config
    assert config is not None
    labels = model.labels.get(name, ())
    return classify(array, count, labels, batched=config.max_batch_size > 0)


def _carried_type(declared: DataType | None, array: np.ndarray) -> DataType:
    if declared is not None and array.dtype == declared.numpy:
        return declared
    return DataType.from_numpy(array.dtype)


def holds_answer(outputs: Outputs, request: InferRequest, model: ModelVersion) -> bool:
    """A cache entry holds every output the request needs."""
    if request.outputs is not None:
        return all(o.name in outputs for o in request.outputs)
    assert model.config is not None
    return model.config.schemaless or all(t.name in outputs for t in model.config.outputs)
