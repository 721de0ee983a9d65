"""What a request must be to reach its model's scheduler: its inputs and requested outputs
checked against the model's config (Triton's messages), and its scheduling parameters parsed.
Failures are InferdErrors (INVALID_ARGUMENT), which the core counts as the model's."""

from __future__ import annotations

from collections.abc import Hashable

from inferd.batching.scheduler import RequestOptions
from inferd.repository.manager import ModelVersion
from inferd.repository.scheduling import LATENCY_SLO_PARAMETER, latency_slo_ns
from inferd.server.errors import invalid
from inferd.server.types import DataType, InferRequest, Params


def validate_request(request: InferRequest, model: ModelVersion) -> tuple[int, Hashable]:
    """Check the request against the model config; return its batch size and shape key."""
    config = model.config
    assert config is not None
    specs = config.input_by_name
    batching = config.max_batch_size > 0
    batch_size = 1
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (name, array) in enumerate(request.inputs.items()):
        spec = specs.get(name)
        if spec is None:
            raise invalid(f"unexpected inference input '{name}' for model '{config.name}'")
        if array.dtype is not spec.dtype and array.dtype != spec.dtype:
            got = DataType.from_numpy(array.dtype).value
            raise invalid(
                f"inference input '{name}' data-type is '{got}', but model '{config.name}' "
                f"expects '{spec.datatype.value}'"
            )
        shape = array.shape
        dims = shape
        if batching:
            if not shape or shape[0] < 1:
                raise invalid(
                    f"input '{name}' for model '{config.name}' needs a batch dim of at least 1, "
                    f"got shape {list(shape)}"
                )
            if index == 0:
                batch_size = shape[0]
            elif shape[0] != batch_size:
                raise invalid(
                    f"input '{name}' batch size {shape[0]} differs from the batch size "
                    f"{batch_size} of the other inputs"
                )
            dims = shape[1:]
        if dims != spec.dims and not _dims_match(spec.dims, dims):
            expected = [-1, *spec.dims] if batching else list(spec.dims)
            raise invalid(
                f"unexpected shape for input '{name}' for model '{config.name}'. "
                f"Expected {expected}, got {list(shape)}"
            )
        shapes[name] = dims
    if batching and batch_size > config.max_batch_size:
        raise invalid(
            f"inference request batch-size must be <= {config.max_batch_size} for "
            f"'{config.name}', got {batch_size}"
        )
    if len(shapes) != len(specs):
        missing = [t.name for t in config.inputs if t.name not in shapes and not t.optional]
        if missing:
            raise invalid(
                f"expected {len(config.inputs)} inputs but got {len(shapes)} inputs for model "
                f"'{config.name}'. Got input(s) {sorted(shapes)}, but missing required "
                f"input(s) {missing}. Please provide all required input(s)."
            )
    if request.outputs is not None:
        known = {t.name for t in config.outputs}
        for output in request.outputs:
            if output.name not in known:
                raise invalid(
                    f"unexpected inference output '{output.name}' for model '{config.name}'"
                )
    return batch_size, model.shape_key(shapes)


def _dims_match(wanted: tuple[int, ...], got: tuple[int, ...]) -> bool:
    """-1 in the config matches any size."""
    return len(wanted) == len(got) and all(w in (-1, g) for w, g in zip(wanted, got, strict=True))


def request_options(parameters: Params, model: str) -> RequestOptions | None:
    """The scheduling parameters of a request (Triton's reserved `priority` and `timeout`, and
    inferd's latency objective); None when it has none."""
    priority = parameters.get("priority", 0)
    timeout = parameters.get("timeout", 0)
    slo = parameters.get(LATENCY_SLO_PARAMETER)
    if not priority and not timeout and slo is None:
        return None
    for name, value in (("priority", priority), ("timeout", timeout)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(f"parameter '{name}' must be a non-negative integer, got {value!r}")
    assert isinstance(priority, int) and isinstance(timeout, int)
    return RequestOptions(priority, timeout, latency_slo_ns(slo, model))
