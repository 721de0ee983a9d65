"""The model repository manager: load each model's versions, track their state, hand out
ready versions to the data plane. A model that fails to load never affects the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.registry import BackendRegistry
from inferd.batching.padding import PaddingSpec, padding_spec
from inferd.batching.policy import BatchPolicy
from inferd.batching.scheduler import Scheduler, SchedulerConfig
from inferd.repository.config import (
    DeviceKind,
    ModelConfig,
    normalize,
    read_config,
    to_model_config,
    validate,
)
from inferd.repository.layout import ModelLocation, find_models, select_versions, version_dirs
from inferd.server.errors import InferdError, invalid, not_found, unavailable
from inferd.server.types import ModelIndexEntry

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    UNKNOWN = "UNKNOWN"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class RepositorySettings:
    roots: tuple[Path, ...]
    backend: BackendSettings = field(default_factory=BackendSettings)
    gpu_count: int = 0
    gpu_fallback_to_cpu: bool = False  # KIND_GPU without a GPU: run on CPU (logged) or fail


@dataclass(slots=True)
class ModelVersion:
    """One version of one model: its state, and when READY, its config and scheduler."""

    name: str
    version: int
    state: ModelState = ModelState.UNKNOWN
    reason: str = ""
    config: ModelConfig | None = None
    scheduler: Scheduler | None = None
    labels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    devices: str = ""  # where the instances run, for logs and status
    # Inputs whose shape (or absence) must agree for requests to share a batch.
    shape_key_inputs: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def shape_key(self, shapes: Mapping[str, tuple[int, ...]]) -> Hashable:
        if not self.shape_key_inputs:
            return None
        return tuple(shapes.get(name) for name in self.shape_key_inputs)


@dataclass(slots=True)
class _Prepared:
    """What a loader thread hands back to the loop for one model."""

    config: ModelConfig | None
    scheduling: SchedulerConfig | None
    versions: list[ModelVersion]
    instances: dict[int, list[ModelInstance]]
    padding: PaddingSpec | None = None  # shape buckets, when the config opts in


class ModelRepository:
    def __init__(
        self,
        settings: RepositorySettings,
        registry: BackendRegistry,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._loop = loop
        self._locations: dict[str, ModelLocation] = {}
        # name -> version -> ModelVersion, for every model the repository has seen.
        self._models: dict[str, dict[int, ModelVersion]] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    async def load_all(self, names: set[str] | None = None) -> None:
        """Start-up: load every model found under the roots, or only `names` (explicit mode),
        each on its own loader thread."""
        self._locations = find_models(self._settings.roots)
        for missing in sorted((names or set()) - set(self._locations)):
            self._models[missing] = {
                0: ModelVersion(missing, 0, ModelState.UNAVAILABLE, "not found in any repository")
            }
        wanted = [loc for loc in self._locations.values() if names is None or loc.name in names]
        await asyncio.gather(*(self._load(loc) for loc in wanted))

    async def _load(self, location: ModelLocation) -> None:
        name = location.name
        self._models[name] = {0: ModelVersion(name, 0, ModelState.LOADING)}
        try:
            if location.error:
                raise invalid(location.error)
            prepared = await asyncio.to_thread(self._prepare, location)
        except Exception as exc:
            reason = exc.message if isinstance(exc, InferdError) else f"{type(exc).__name__}: {exc}"
            log.error("model '%s' failed to load: %s", name, reason)
            self._models[name] = {0: ModelVersion(name, 0, ModelState.UNAVAILABLE, reason)}
            return
        self._models[name] = {v.version: v for v in prepared.versions}
        for version in prepared.versions:
            instances = prepared.instances.get(version.version)
            if instances is None:
                continue
            assert version.config is not None
            assert prepared.scheduling is not None
            version.scheduler = Scheduler(
                f"{name}:{version.version}",
                prepared.scheduling,
                instances,
                self._loop,
                padding=prepared.padding,
            )
            version.state = ModelState.READY
            log.info("model '%s' version %d is READY on %s", name, version.version, version.devices)

    def _prepare(self, location: ModelLocation) -> _Prepared:
        """Runs on a loader thread: read and complete the config, create every instance."""
        name, model_dir = location.name, location.path
        proto = read_config(model_dir)
        available = version_dirs(model_dir)
        if not available:
            raise invalid(f"model '{name}' has no version folders (numeric, e.g. {model_dir}/1)")
        backend_name = self._backend_name(proto, model_dir, available)
        backend = self._registry.get(backend_name)
        filename = proto.default_model_filename or backend.default_model_filename
        latest = available[max(available)]
        backend.complete_config(proto, latest / filename, self._settings.backend)
        normalize(proto, name, self._settings.gpu_count)
        validate(proto, name, str(model_dir / "config.pbtxt"))
        config = to_model_config(proto, backend_name)
        labels = _read_labels(config, model_dir)
        padding = padding_spec(config)
        padded = padding.by_name if padding is not None else {}
        # Requests share a batch only when these agree: variable dims (unless ragged or padded)
        # and whether each optional input is present at all.
        shape_key_inputs = tuple(
            t.name
            for t in config.inputs
            if t.optional or (t.variable and not t.allow_ragged_batch and t.name not in padded)
        )
        prepared = _Prepared(config, scheduler_config(config), [], {}, padding)
        for number in _wanted_versions(config, available, prepared):
            version = ModelVersion(
                name, number, config=config, labels=labels, shape_key_inputs=shape_key_inputs
            )
            prepared.versions.append(version)
            try:
                devices, note = self._devices(config)
                version.devices, version.reason = _describe(devices), note
                prepared.instances[number] = self._create_instances(
                    backend, config, available[number] / filename, devices
                )
                version.state = ModelState.LOADING
            except Exception as exc:
                version.state = ModelState.UNAVAILABLE
                version.reason = exc.message if isinstance(exc, InferdError) else str(exc)
                log.error("model '%s' version %d failed to load: %s", name, number, version.reason)
        return prepared

    def _backend_name(self, proto: object, model_dir: Path, available: Mapping[int, Path]) -> str:
        backend: str = getattr(proto, "backend", "")
        platform: str = getattr(proto, "platform", "")
        if backend:
            return backend
        if platform:
            return self._registry.backend_for_platform(platform)
        files = {p.name for p in available[max(available)].iterdir()}
        guessed = self._registry.guess_backend(files)
        if guessed is None:
            raise invalid(
                f"model '{model_dir.name}': the config names no backend or platform and no "
                f"known model file was found in {available[max(available)]}"
            )
        return guessed

    def _devices(self, config: ModelConfig) -> tuple[list[Device], str]:
        """Where each instance runs, and a note for the model status if GPU fell back to CPU."""
        devices: list[Device] = []
        note = ""
        for group in config.instance_groups:
            if group.kind is DeviceKind.GPU:
                if self._settings.gpu_count == 0 or not group.gpus:
                    if not self._settings.gpu_fallback_to_cpu:
                        raise unavailable(
                            f"instance group '{group.name}' asks for KIND_GPU but no GPU is "
                            "available (start with --gpu-fallback=cpu to run it on the CPU)"
                        )
                    log.warning(
                        "model '%s': no GPU available, instance group '%s' falls back to CPU",
                        config.name,
                        group.name,
                    )
                    devices += [Device("cpu")] * group.count
                    note = (
                        "KIND_GPU instances run on the CPU: no GPU available (--gpu-fallback=cpu)"
                    )
                else:
                    devices += [Device("gpu", g) for g in group.gpus for _ in range(group.count)]
            else:
                devices += [Device("cpu")] * group.count
        return devices, note

    def _create_instances(
        self, backend: type[Backend], config: ModelConfig, path: Path, devices: Sequence[Device]
    ) -> list[ModelInstance]:
        settings = BackendSettings(
            default_max_batch_size=self._settings.backend.default_max_batch_size,
            auto_complete=self._settings.backend.auto_complete,
            total_cpu_instances=sum(1 for d in devices if d.kind == "cpu"),
        )
        instances: list[ModelInstance] = []
        try:
            for device in devices:
                instances.append(backend.create_instance(config, path, device, settings))
        except BaseException:
            for instance in instances:
                instance.close()
            raise
        return instances

    async def close(self) -> None:
        """Drain every scheduler and free the instances."""
        versions = [v for vs in self._models.values() for v in vs.values() if v.scheduler]
        for version in versions:
            version.state = ModelState.UNLOADING
        await asyncio.gather(*(v.scheduler.close() for v in versions if v.scheduler))
        for version in versions:
            version.state, version.reason, version.scheduler = (
                ModelState.UNAVAILABLE,
                "unloaded",
                None,
            )

    # ---- queries (event loop, hot path) ------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The ready version asked for, or the highest ready one when `version` is empty."""
        versions = self._models.get(name)
        if versions is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if version:
            found = versions.get(int(version)) if version.isdigit() else None
            if found is None:
                raise not_found(
                    f"Request for unknown model: '{name}' version {version} is not found"
                )
            if not found.ready:
                raise unavailable(
                    f"Request for model '{name}' version {version} which is not at ready state"
                    + (f": {found.reason}" if found.reason else "")
                )
            return found
        best: ModelVersion | None = None
        for candidate in versions.values():
            if candidate.ready and (best is None or candidate.version > best.version):
                best = candidate
        if best is None:
            reasons = "; ".join(v.reason for v in versions.values() if v.reason)
            raise unavailable(
                f"Request for model '{name}' which has no version at ready state"
                + (f": {reasons}" if reasons else "")
            )
        return best

    def model_versions(self, name: str) -> list[ModelVersion]:
        versions = self._models.get(name)
        if versions is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        return sorted(versions.values(), key=lambda v: v.version)

    def ready_versions(self) -> list[ModelVersion]:
        return [
            v
            for name in sorted(self._models)
            for v in sorted(self._models[name].values(), key=lambda v: v.version)
            if v.ready
        ]

    def all_ready(self) -> bool:
        """Every model found is serving (the strict readiness rule)."""
        return all(any(v.ready for v in versions.values()) for versions in self._models.values())

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        entries: list[ModelIndexEntry] = []
        for name in sorted({*self._models, *self._locations}):
            if name not in self._models:
                if not ready_only:
                    entries.append(ModelIndexEntry(name=name))  # found, never loaded
                continue
            for version in sorted(self._models[name].values(), key=lambda v: v.version):
                if ready_only and not version.ready:
                    continue
                entries.append(
                    ModelIndexEntry(
                        name=name,
                        version=str(version.version) if version.version else "",
                        state=version.state.value,
                        reason=version.reason,
                    )
                )
        return entries


LATENCY_SLO_PARAMETER = "inferd.latency_slo_ms"


def scheduler_config(config: ModelConfig) -> SchedulerConfig:
    """No dynamic_batching = each request runs alone with no queue policy (Triton's default
    scheduler); the latency objective applies either way."""
    slo_ns = latency_slo_ns(config.parameters.get(LATENCY_SLO_PARAMETER, ""), config.name)
    batching = config.dynamic_batching
    if batching is None or config.max_batch_size == 0:
        return SchedulerConfig(BatchPolicy(max_batch_size=0), latency_slo_ns=slo_ns)
    return SchedulerConfig(
        BatchPolicy(
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            max_queue_delay_ns=batching.max_queue_delay_us * 1000,
        ),
        priority_levels=batching.priority_levels,
        default_priority=batching.default_priority_level,
        default_queue_policy=batching.default_queue_policy,
        level_queue_policies=dict(batching.priority_queue_policy or {}),
        preserve_ordering=batching.preserve_ordering,
        latency_slo_ns=slo_ns,
    )


def latency_slo_ns(value: object, where: str) -> int:
    """A latency objective in ms (config string or request parameter) as ns; 0 = none."""
    if value in ("", None):
        return 0
    try:
        ms = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ms = -1.0
    if isinstance(value, bool) or not ms > 0:
        raise invalid(f"{LATENCY_SLO_PARAMETER} for '{where}' must be a positive number of ms")
    return int(ms * 1_000_000)


def _wanted_versions(
    config: ModelConfig, available: Mapping[int, Path], prepared: _Prepared
) -> list[int]:
    wanted = select_versions(available, config.version_policy)
    for missing in sorted(set(config.version_policy.versions) - set(available)):
        prepared.versions.append(
            ModelVersion(
                config.name,
                missing,
                ModelState.UNAVAILABLE,
                f"version {missing} named by the version policy has no folder",
                config=config,
            )
        )
    if not wanted and not prepared.versions:
        raise invalid(f"model '{config.name}': the version policy selects no version")
    return wanted


def _read_labels(config: ModelConfig, model_dir: Path) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for output in config.outputs:
        if not output.label_filename:
            continue
        path = model_dir / output.label_filename
        try:
            labels[output.name] = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise invalid(f"output '{output.name}': cannot read label file {path}: {exc}") from None
    return labels


def _describe(devices: Sequence[Device]) -> str:
    counts: dict[str, int] = {}
    for device in devices:
        counts[str(device)] = counts.get(str(device), 0) + 1
    return ", ".join(f"{n} x {d}" for d, n in counts.items())
