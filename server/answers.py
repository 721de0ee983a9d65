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
    if request.outputs is None and not config.schemaless:
        for tensor in config.outputs:
            result.append((tensor.name, tensor.datatype, outputs[tensor.name]))
    else:
        types = {t.name: t.datatype for t in config.outputs}
        # A schemaless model's answer is what it returned, typed by its arrays where its
        # metadata declares nothing.
        wanted = request.outputs or [RequestedOutput(name) for name in outputs]
        for output in wanted:
            array = outputs.get(output.name)
            if array is None:  # only a schemaless model can leave one out
                raise invalid(
                    f"unexpected inference output '{output.name}' for model '{config.name}'"
                )
            if output.classification > 0:
                labels = model.labels.get(output.name, ())
                batched = config.max_batch_size > 0
                array = classify(array, output.classification, labels, batched=batched)
                result.append((output.name, DataType.BYTES, array))
            else:
                datatype = types.get(output.name) or DataType.from_numpy(array.dtype)
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


def holds_answer(outputs: Outputs, request: InferRequest, model: ModelVersion) -> bool:
    """A cache entry holds every output the request needs."""
    if request.outputs is not None:
        return all(o.name in outputs for o in request.outputs)
    assert model.config is not None
    return model.config.schemaless or all(t.name in outputs for t in model.config.outputs)
