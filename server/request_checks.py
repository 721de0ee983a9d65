"""What a request must be to reach its model's scheduler: its inputs and requested outputs
checked against the model's config (Triton 2.51's messages, with its `[request id: ...]`
prefix where Triton puts one), and its scheduling parameters parsed.
Failures are InferdErrors (INVALID_ARGUMENT), which the core counts as the model's."""

from __future__ import annotations

from collections.abc import Collection, Hashable

from inferd.batching.scheduler import RequestOptions
from inferd.repository.config import ModelConfig
from inferd.repository.manager import ModelVersion
from inferd.repository.scheduling import LATENCY_SLO_PARAMETER, latency_slo_ns
from inferd.server.errors import InferdError, invalid, refused
from inferd.server.types import DataType, InferRequest, Params


def validate_request(request: InferRequest, model: ModelVersion) -> tuple[int, Hashable]:
    """Check the request against the model config; return its batch size and shape key."""
    config = model.config
    assert config is not None
    if config.schemaless:  # any tensors: the model checks them itself; no batching
        return 1, model.shape_key({})
    specs = config.input_by_name
    if len(request.inputs) > len(specs):  # Triton counts before it looks at names
        raise _count_refusal(request, config)
    batching = config.max_batch_size > 0
    batch_size = 1
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (name, array) in enumerate(request.inputs.items()):
        spec = specs.get(name)
        if spec is None:
            raise invalid(f"unexpected inference input '{name}' for model '{config.name}'")
        if array.dtype is not spec.dtype and array.dtype != spec.dtype:
            got = DataType.from_numpy(array.dtype).value
            raise _refused(
                request,
                f"inference input '{name}' data-type is '{got}', but model '{config.name}' "
                f"expects '{spec.datatype.value}'",
            )
        shape = array.shape
        dims = shape
        if batching:
            if not shape or shape[0] < 1:
                raise _refused(
                    request,
                    f"input '{name}' for model '{config.name}' needs a batch dim of at least 1, "
                    f"got shape {_listed(shape)}",
                )
            if index == 0:
                batch_size = shape[0]
            elif shape[0] != batch_size:
                raise _refused(
                    request,
                    f"input '{name}' batch size does not match other inputs for '{config.name}'",
                )
            dims = shape[1:]
        if dims != spec.dims and not _dims_match(spec.dims, dims):
            expected = (-1, *spec.dims) if batching else spec.dims
            raise _refused(
                request,
                f"unexpected shape for input '{name}' for model '{config.name}'. Expected "
                f"{_listed(expected)}, got {_listed(shape)}. {_BATCH_NOTE if batching else ''}",
            )
        shapes[name] = dims
    if batching and batch_size > config.max_batch_size:
        raise _refused(
            request,
            f"inference request batch-size must be <= {config.max_batch_size} for '{config.name}'",
        )
    if len(shapes) != len(specs) and _missing(config, shapes):
        raise _count_refusal(request, config)
    if request.outputs is not None:
        known = {t.name for t in config.outputs}
        for output in request.outputs:
            if output.name not in known:
                raise invalid(
                    f"unexpected inference output '{output.name}' for model '{config.name}'"
                )
    return batch_size, model.shape_key(shapes)


# Triton 2.51's words after a shape error of a batching model.
_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to "
    "be prepended to each input shape. If you want to specify the full shape including the "
    "batch dim in your input dims config, try setting max_batch_size to zero. See the model "
    "configuration docs for more info on max_batch_size."
)


def _missing(config: ModelConfig, given: Collection[str]) -> list[str]:
    return [t.name for t in config.inputs if t.name not in given and not t.optional]


def _count_refusal(request: InferRequest, config: ModelConfig) -> InferdError:
    return _refused(
        request,
        f"expected {len(config.inputs)} inputs but got {len(request.inputs)} inputs for model "
        f"'{config.name}'. Got input(s) {_quoted(sorted(request.inputs))}, but missing required "
        f"input(s) {_quoted(_missing(config, request.inputs))}. Please provide all required "
        "input(s).",
    )


def _refused(request: InferRequest, message: str) -> InferdError:
    """A request the model's config refuses, as Triton words it: with the request's id."""
    return refused(request.id, message)


def _listed(dims: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _quoted(names: list[str]) -> str:
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


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
