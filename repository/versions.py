"""A model version as the repository tracks it: state, reason, and when READY its scheduler."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from inferd.backends.base import ModelInstance
from inferd.batching.interface import ModelScheduler
from inferd.batching.stats import ModelStats
from inferd.repository.config import ModelConfig
from inferd.repository.ensemble_runtime import EnsembleRuntime
from inferd.repository.layout import ModelId
from inferd.repository.mlserver_settings import BACKEND as MLSERVER

UNLOADED = "unloaded"  # the reason of a version unloaded on purpose (Triton's word)


class ModelState(StrEnum):
    UNKNOWN = "UNKNOWN"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelVersion:
    """One version of one model: its state, and when READY, its config and scheduler (an
    ensemble: its runtime instead, kept while UNAVAILABLE too, so that it comes back READY
    once its composing models are)."""

    name: str
    version: int
    state: ModelState = ModelState.UNKNOWN
    reason: str = ""
    config: ModelConfig | None = None
    scheduler: ModelScheduler | None = None
    ensemble: EnsembleRuntime | None = None
    labels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    devices: str = ""  # where the instances run, for logs and status
    gpu_fallback: bool = False  # KIND_GPU instances run on the CPU (--gpu-fallback=cpu)
    load_seconds: float = 0.0  # config to warmed-up instances (nv_model_load_duration_secs)
    # Inputs whose shape (or absence) must agree for requests to share a batch.
    shape_key_inputs: tuple[str, ...] = ()
    namespace: str = ""  # its repository, with --model-namespacing (layout.ModelId)
    # Another name requests may give the version by (an MLServer model's `parameters.version`).
    version_name: str = ""
    # Instances of `passive` groups: loaded with the version, freed with it, never scheduled.
    passive: list[ModelInstance] = field(default_factory=list)

    @property
    def id(self) -> ModelId:
        return ModelId(self.namespace, self.name)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def mlserver(self) -> bool:
        """An MLServer model: its requests and answers go as MLServer's dataplane has them
        (server/mlserver_envelope.py), and its REST routes are MLServer's."""
        return self.config is not None and self.config.backend == MLSERVER

    @property
    def caches(self) -> bool:
        """Its config enables the response cache (used when the server has one)."""
        return self.config is not None and self.config.response_cache

    @property
    def stats(self) -> ModelStats | None:
        if self.scheduler is not None:
            return self.scheduler.stats
        return None if self.ensemble is None else self.ensemble.stats

    def shape_key(self, shapes: Mapping[str, tuple[int, ...]]) -> Hashable:
        if not self.shape_key_inputs:
            return None
        return tuple(shapes.get(name) for name in self.shape_key_inputs)
