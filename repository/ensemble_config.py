"""`platform: "ensemble"`: the typed steps of `ensemble_scheduling`, and the checks that need
nothing but the ensemble's own config (Triton's ValidateEnsembleSchedulingConfig and its
messages). Checks against the composing models' configs are in ensemble_check.py."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from inferd.repository.ensemble_graph import EnsembleGraph
from inferd.server.errors import invalid

ENSEMBLE_PLATFORM = "ensemble"
LATEST_VERSION = -1  # a step's model_version: the composing model's highest ready version


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    model_name: str
    model_version: int  # -1 = the highest ready version
    input_map: Mapping[str, str]  # the composing model's input -> the ensemble tensor it reads
    output_map: Mapping[str, str]  # the composing model's output -> the ensemble tensor it writes

    @property
    def version(self) -> str:
        """The version as a request names it ("" = let the version policy choose)."""
        return "" if self.model_version == LATEST_VERSION else str(self.model_version)


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    steps: tuple[EnsembleStep, ...]
    # ensemble_scheduling.max_inflight_requests: at most this many requests at each step at
    # once, across the ensemble's requests (0: no limit; StepLimiter in ensemble_runtime.py).
    max_inflight: int = 0

    @property
    def model_names(self) -> tuple[str, ...]:
        """The composing models, each once, in step order."""
        return tuple(dict.fromkeys(step.model_name for step in self.steps))


def is_ensemble(proto: Any) -> bool:
    return bool(proto.platform == ENSEMBLE_PLATFORM)


def parse_ensemble(proto: Any) -> EnsembleConfig:
    return EnsembleConfig(
        tuple(
            EnsembleStep(
                model_name=step.model_name,
                model_version=step.model_version,
                input_map=dict(step.input_map),
                output_map=dict(step.output_map),
            )
            for step in proto.ensemble_scheduling.step
        ),
        max_inflight=proto.ensemble_scheduling.max_inflight_requests,
    )


def dataflow(
    ensemble: EnsembleConfig, inputs: Iterable[str], outputs: Iterable[str]
) -> EnsembleGraph:
    """The graph of the steps' tensors, between the ensemble's `inputs` and `outputs`."""
    return EnsembleGraph(
        [(tuple(s.input_map.values()), tuple(s.output_map.values())) for s in ensemble.steps],
        list(inputs),
        list(outputs),
    )


def validate_ensemble(proto: Any) -> None:
    """Raise INVALID_ARG with the reason when `ensemble_scheduling` (or its absence) is wrong.
    Runs after the common checks of the inputs and outputs."""
    name = proto.name
    has_scheduling = proto.HasField("ensemble_scheduling")
    if not is_ensemble(proto):
        if has_scheduling:
            raise invalid(
                f"ensemble scheduling cannot be set for model '{name}' whose platform is not "
                f"{ENSEMBLE_PLATFORM}"
            )
        return
    if not has_scheduling:
        raise invalid(
            f"ensemble scheduling must be set for ensemble {name} whose platform is "
            f"{ENSEMBLE_PLATFORM}"
        )
    if proto.backend:
        raise invalid(
            f"Ensemble model '{name}' must have platform type '{ENSEMBLE_PLATFORM}' and empty "
            "backend type"
        )
    if proto.instance_group:
        raise invalid(f"instance group should not be specified for ensemble '{name}'")
    if proto.HasField("optimization"):
        raise invalid(f"optimization should not be specified for ensemble '{name}'")
    if proto.model_warmup:
        raise invalid(f"model_warmup can not be specified for ensemble '{name}'")
    scheduling = proto.ensemble_scheduling
    if not scheduling.step:
        raise invalid(f"must specify 'step' for ensemble '{name}'")
    inputs = {t.name for t in proto.input}
    for t in proto.output:
        if t.name in inputs:
            raise invalid(
                f"ensemble tensor '{t.name}' is both an input and an output of ensemble '{name}'"
            )
    written: set[str] = set()
    for index, step in enumerate(scheduling.step):
        _validate_step(name, index, step, inputs, written)
    ensemble = parse_ensemble(proto)
    graph = dataflow(ensemble, [t.name for t in proto.input], [t.name for t in proto.output])
    reason = graph.dataflow_error(name, step_labels(ensemble))
    if reason:
        raise invalid(reason)


def _validate_step(name: str, index: int, step: Any, inputs: set[str], written: set[str]) -> None:
    where = f"in step {index} of ensemble '{name}'"
    for field in ("model_name", "input_map", "output_map"):
        if not getattr(step, field):
            raise invalid(f"must specify '{field}' {where}")
    if step.model_namespace:
        raise invalid(f"'model_namespace' {where} is not supported by inferd (no namespacing)")
    if step.model_version < LATEST_VERSION or step.model_version == 0:
        raise invalid(
            f"'model_version' {where} must be -1 (latest) or a version number, "
            f"got {step.model_version}"
        )
    for tensor in step.output_map.values():
        if tensor in inputs:
            raise invalid(
                f"ensemble tensor '{tensor}' is an ensemble input and cannot appear in an "
                f"output map for ensemble '{name}' step {index}"
            )
        if tensor in written:
            raise invalid(
                f"ensemble tensor '{tensor}' can appear in an output map only once for "
                f"ensemble '{name}' step {index}"
            )
        written.add(tensor)


def step_labels(ensemble: EnsembleConfig) -> list[str]:
    return [f"{i} (model '{s.model_name}')" for i, s in enumerate(ensemble.steps)]
