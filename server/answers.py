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
from inferd.server.types import DataType, InferRequest, InferResponse


def answer(request: InferRequest, model: ModelVersion, outputs: Outputs) -> InferResponse:
    config = model.config
    assert config is not None
    result: list[tuple[str, DataType, np.ndarray]] = []
    types = {t.name: t.datatype for t in config.outputs}
    if config.schemaless:  # what the model answered, typed by its arrays
        types = {
            name: types.get(name) or DataType.from_numpy(a.dtype) for name, a in outputs.items()
        }
    if request.outputs is None:
        names = list(outputs) if config.schemaless else [t.name for t in config.outputs]
        for name in names:
            result.append((name, types[name], outputs[name]))
    else:
        for wanted in request.outputs:
            if wanted.name not in outputs:  # only a schemaless model can leave one out
                raise invalid(
                    f"unexpected inference output '{wanted.name}' for model '{config.name}'"
                )
            array = outputs[wanted.name]
            if wanted.classification > 0:
                labels = model.labels.get(wanted.name, ())
                batched = config.max_batch_size > 0
                array = classify(array, wanted.classification, labels, batched=batched)
                result.append((wanted.name, DataType.BYTES, array))
            else:
                result.append((wanted.name, types[wanted.name], array))
    return InferResponse(
        model_name=request.model_name,
        model_version=str(model.version),
        outputs=result,
        id=request.id,
        parameters=outputs.parameters if isinstance(outputs, OutputsWithParameters) else {},
    )


def holds_answer(outputs: Outputs, request: InferRequest, model: ModelVersion) -> bool:
    """A cache entry holds every output the request needs."""
    if request.outputs is not None:
        return all(o.name in outputs for o in request.outputs)
    assert model.config is not None
    return model.config.schemaless or all(t.name in outputs for t in model.config.outputs)
