"""A request's answer from its model's outputs: the outputs it asked for (all of them when it
named none), classification applied, in the order asked, and the response parameters the model
set."""

from __future__ import annotations

import numpy as np

from inferd.backends.base import OutputsWithParameters
from inferd.batching.scheduler import Outputs
from inferd.repository.manager import ModelVersion
from inferd.server.classification import classify
from inferd.server.errors import invalid
from inferd.server.types import DataType, InferRequest, InferResponse, RequestedOutput


def answer(request: InferRequest, model: ModelVersion, outputs: Outputs) -> InferResponse:
    config = model.config
    assert config is not None
    result: list[tuple[str, DataType, np.ndarray]] = []
    # A python model may leave an output out of its answer, or return it as another type than
    # its config's: as in Triton, the answer leaves it out, or carries the type it came as.
    if request.outputs is None and not config.schemaless:
        for tensor in config.outputs:
            array = outputs.get(tensor.name)
            if array is not None:
                result.append((tensor.name, _carried_type(tensor.datatype, array), array))
    else:
        types = {t.name: t.datatype for t in config.outputs}
        # A schemaless model's answer is what it returned, typed by its arrays where its
        # metadata declares nothing.
        wanted = request.outputs or [RequestedOutput(name) for name in outputs]
        for output in wanted:
            array = outputs.get(output.name)
            if array is None:
                if not config.schemaless:
                    continue
                raise invalid(  # nothing checked the name before the model ran
                    f"unexpected inference output '{output.name}' for model '{config.name}'"
                )
            if output.classification > 0:
                labels = model.labels.get(output.name, ())
                batched = config.max_batch_size > 0
                array = classify(array, output.classification, labels, batched=batched)
                result.append((output.name, DataType.BYTES, array))
            else:
                datatype = _carried_type(types.get(output.name), array)
                result.append((output.name, datatype, array))
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
