"""The model repository manager: load each model's versions, track their state, hand out
ready versions to the data plane. A model that fails to load never affects the others."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.gpu import GpuInfo
from inferd.backends.registry import BackendRegistry
from inferd.batching.padding import PaddingSpec, padding_spec
from inferd.batching.policy import BatchPolicy
from inferd.batching.scheduler import Scheduler, SchedulerConfig
from inferd.batching.stats import ModelStats
from inferd.repository.config import (
    CONFIG_FILENAME,
    DeviceKind,
    InstanceGroup,
    ModelConfig,
    ModelConfigProto,
    config_from_json,
    normalize,
    read_config,
    to_model_config,
    validate,
)
from inferd.repository.layout import ModelLocation, find_models, select_versions, version_dirs
from inferd.repository.overrides import (
    check_file_paths,
    check_model_name,
    remove_override,
    write_override,
)
from inferd.repository.warmup import run_warmup, warmup_samples
from inferd.server.errors import InferdError, invalid, not_found, unavailable
from inferd.server.types import ModelIndexEntry

log = logging.getLogger(__name__)

UNLOADED = "unloaded"  # the reason of a version unloaded on purpose (Triton's word)


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
    gpus: GpuInfo = field(default_factory=GpuInfo)  # what detection found (server/app.py)
    gpu_fallback_to_cpu: bool = False  # KIND_GPU without a GPU: run on CPU (logged) or fail

    @property
    def gpu_count(self) -> int:
        return self.gpus.count


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
    gpu_fallback: bool = False  # KIND_GPU instances run on the CPU (--gpu-fallback=cpu)
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
    stats: dict[int, ModelStats] = field(default_factory=dict)  # warmup already counted


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
        # Load, reload and unload of one model run one at a time; different models in parallel.
        self._locks: dict[str, asyncio.Lock] = {}
        # Private folders of models loaded with `file:` parameters, under one temporary root.
        self._overrides: dict[str, Path] = {}
        self._override_root: Path | None = None

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._settings.roots

    # ---- lifecycle -------------------------------------------------------------------------

    async def load_all(self, names: set[str] | None = None) -> None:
        """Start-up: load every model found under the roots, or only `names` (explicit mode),
        each on its own loader thread."""
        self._locations = await asyncio.to_thread(find_models, self.roots)
        for missing in sorted((names or set()) - set(self._locations)):
            self._models[missing] = {
                0: ModelVersion(missing, 0, ModelState.UNAVAILABLE, "not found in any repository")
            }
        wanted = [loc for loc in self._locations.values() if names is None or loc.name in names]
        await asyncio.gather(*(self._load_locked(loc) for loc in wanted))

    async def load(
        self, name: str, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load or reload a model (the repository API). `config` is a JSON ModelConfig used
        instead of config.pbtxt; `files` (path in the model folder -> content) make up the
        whole model folder and need `config`. Raises when any version fails to load."""
        files = files or {}
        if files and config is None:
            raise invalid(
                f"failed to load '{name}': 'file:' parameters need a 'config' parameter too "
                "(the model folder they make up has no config.pbtxt)"
            )
        override = None if config is None else config_from_json(config, "the 'config' parameter")
        location: ModelLocation | None = None
        if files:
            check_model_name(name)
            check_file_paths(files)
        else:
            self._locations = await asyncio.to_thread(find_models, self.roots)
            location = self._locations.get(name)
            if location is None:
                raise not_found(
                    f"failed to load '{name}': no model folder '{name}' in any repository"
                )
        async with self._lock(name):
            written: Path | None = None
            if location is None:
                written = await asyncio.to_thread(
                    write_override, self._overrides_root(), name, files
                )
                location = ModelLocation(name, written)
            installed, reason = await self._load(location, override)
            # Whichever folder no longer backs a served version goes.
            stale = written
            if installed:
                stale = self._overrides.pop(name, None)
                if written is not None:
                    self._overrides[name] = written
            if stale is not None:
                await asyncio.to_thread(remove_override, stale)
        if reason:
            raise invalid(f"failed to load '{name}': {reason}")

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Drain and free every version; the model stays in the index, UNAVAILABLE "unloaded".
        inferd runs no ensembles, so no model depends on another: `unload_dependents` has
        nothing more to unload."""
        if name not in self._models:
            raise invalid(f"Model to be unloaded has not been served: '{name}'")
        async with self._lock(name):
            await self._retire(list(self._models.get(name, {}).values()))
            stale = self._overrides.pop(name, None)
            if stale is not None:
                await asyncio.to_thread(remove_override, stale)
        log.info("model '%s' is unloaded", name)

    async def apply_changes(self, changed: Iterable[str], removed: Iterable[str]) -> None:
        """Poll mode: (re)load the models whose folder changed, unload and forget removed ones.
        Failures are logged and shown in the index; a failed reload keeps the old versions."""
        self._locations = await asyncio.to_thread(find_models, self.roots)
        locations = [self._locations[name] for name in changed if name in self._locations]
        outcomes = await asyncio.gather(
            *(self._load_locked(location) for location in locations),
            *(self._forget(name) for name in removed),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("repository change failed: %r", outcome)

    async def _load_locked(self, location: ModelLocation) -> None:
        async with self._lock(location.name):
            await self._load(location)

    async def _forget(self, name: str) -> None:
        async with self._lock(name):
            await self._retire(list(self._models.get(name, {}).values()))
            self._models.pop(name, None)
        log.info("model '%s' was removed from the repository and is unloaded", name)

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _overrides_root(self) -> Path:
        if self._override_root is None:
            self._override_root = Path(tempfile.mkdtemp(prefix="inferd-overrides-"))
        return self._override_root

    async def _load(
        self, location: ModelLocation, override: ModelConfigProto | None = None
    ) -> tuple[bool, str]:
        """Load one model: (whether its new versions were installed, why some failed or "").

        The new versions are prepared next to the serving ones and swapped in when all are
        ready; a reload that fails leaves the serving versions serving. Call under its lock.
        """
        name = location.name
        previous = list(self._models.get(name, {}).values())
        serving = any(v.ready for v in previous)
        if not serving:
            self._models[name] = {0: ModelVersion(name, 0, ModelState.LOADING)}
        try:
            if location.error:
                raise invalid(location.error)
            prepared = await asyncio.to_thread(self._prepare, location, override)
        except Exception as exc:
            reason = exc.message if isinstance(exc, InferdError) else f"{type(exc).__name__}: {exc}"
            log.error("model '%s' failed to load: %s", name, reason)
            if not serving:
                self._models[name] = {0: ModelVersion(name, 0, ModelState.UNAVAILABLE, reason)}
            return False, reason
        failed = "; ".join(
            f"version {v.version}: {v.reason}"
            for v in prepared.versions
            if v.state is ModelState.UNAVAILABLE
        )
        if failed and serving:
            log.error("model '%s' failed to reload; the loaded versions keep serving", name)
            await asyncio.gather(
                *(asyncio.to_thread(_close_all, i) for i in prepared.instances.values())
            )
            return False, failed
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
                stats=prepared.stats.get(version.version),
                padding=prepared.padding,
            )
            version.state = ModelState.READY
            log.info("model '%s' version %d is READY on %s", name, version.version, version.devices)
        # The switch: from here on requests resolve to the new versions.
        self._models[name] = {v.version: v for v in prepared.versions}
        await self._retire(previous)
        return True, failed

    async def _retire(self, versions: Sequence[ModelVersion]) -> None:
        """Refuse new requests, let queued and running ones finish, then free the instances.
        Requests that already hold a version finish on it."""
        schedulers = [v.scheduler for v in versions if v.scheduler is not None]
        for version in versions:
            if version.scheduler is not None:
                version.state = ModelState.UNLOADING
        await asyncio.gather(*(scheduler.close() for scheduler in schedulers))
        for version in versions:
            version.state, version.reason, version.scheduler = (
                ModelState.UNAVAILABLE,
                UNLOADED,
                None,
            )

    def _prepare(self, location: ModelLocation, override: ModelConfigProto | None) -> _Prepared:
        """Runs on a loader thread: read and complete the config, create and warm up every
        instance."""
        name, model_dir = location.name, location.path
        if override is None:
            proto, source = read_config(model_dir), str(model_dir / CONFIG_FILENAME)
        else:
            proto, source = override, "the load request's 'config' parameter"
        available = version_dirs(model_dir)
        if not available:
            raise invalid(f"model '{name}' has no version folders (numeric, e.g. {model_dir}/1)")
        backend_name = self._backend_name(proto, model_dir, available)
        backend = self._registry.get(backend_name)
        filename = proto.default_model_filename or backend.default_model_filename
        latest = available[max(available)]
        backend.complete_config(proto, latest / filename, self._settings.backend)
        gpu_reason = self._gpu_unavailable_reason(backend)
        if gpu_reason and self._settings.gpu_count and _asks_auto(proto):
            log.warning("model '%s': KIND_AUTO instances run on the CPU: %s", name, gpu_reason)
        normalize(proto, name, 0 if gpu_reason else self._settings.gpu_count)
        validate(proto, name, source)
        config = to_model_config(proto, backend_name)
        labels = _read_labels(config, model_dir)
        warmups = warmup_samples(proto, config, model_dir)
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
                devices, note = self._devices(config, gpu_reason)
                version.devices, version.reason = _describe(devices), note
                version.gpu_fallback = bool(note)
                instances = self._create_instances(
                    backend, config, available[number] / filename, devices
                )
                stats = ModelStats()
                try:
                    run_warmup(warmups, instances, stats)
                except BaseException:
                    _close_all(instances)
                    raise
                prepared.instances[number] = instances
                prepared.stats[number] = stats
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

    def _gpu_unavailable_reason(self, backend: type[Backend]) -> str:
        """Why KIND_GPU instances of this backend cannot run here ('' = they can); KIND_AUTO
        means GPU only when this is ''."""
        gpus = self._settings.gpus
        if gpus.count == 0:
            return gpus.reason
        return backend.gpu_unavailable_reason(gpus)

    def _devices(self, config: ModelConfig, gpu_reason: str) -> tuple[list[Device], str]:
        """Where each instance runs, and a note for the model status if GPU fell back to CPU."""
        devices: list[Device] = []
        note = ""
        for group in config.instance_groups:
            if group.kind is not DeviceKind.GPU:
                devices += [Device("cpu")] * group.count
            elif not gpu_reason:
                devices += _gpu_devices(group, self._settings.gpu_count)
            elif self._settings.gpu_fallback_to_cpu:
                log.warning(
                    "model '%s': instance group '%s' falls back to CPU: %s",
                    config.name,
                    group.name,
                    gpu_reason,
                )
                devices += [Device("cpu")] * group.count
                note = f"KIND_GPU instances run on the CPU ({gpu_reason}; --gpu-fallback=cpu)"
            else:
                raise unavailable(
                    f"instance group '{group.name}' asks for KIND_GPU, but {gpu_reason} "
                    "(start with --gpu-fallback=cpu to run it on the CPU)"
                )
        return devices, note

    def _create_instances(
        self, backend: type[Backend], config: ModelConfig, path: Path, devices: Sequence[Device]
    ) -> list[ModelInstance]:
        settings = replace(
            self._settings.backend, total_cpu_instances=sum(1 for d in devices if d.kind == "cpu")
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
        """Drain every scheduler, free the instances, delete the private model folders."""
        await self._retire([v for vs in self._models.values() for v in vs.values()])
        if self._override_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._override_root, True)
            self._override_root = None
        self._overrides.clear()

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
        """Triton's strict readiness rule: every version of every model it was asked to load
        is READY, except versions unloaded (or being unloaded) on purpose."""
        return all(
            v.ready or v.state is ModelState.UNLOADING or v.reason == UNLOADED
            for versions in self._models.values()
            for v in versions.values()
        )

    async def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        """Models found in the repositories now (name only if never loaded) and those loaded
        from request files, with each version's state."""
        self._locations = await asyncio.to_thread(find_models, self.roots)
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


def _close_all(instances: Iterable[ModelInstance]) -> None:
    for instance in instances:
        try:
            instance.close()
        except Exception:
            log.exception("closing a model instance failed")


def _asks_auto(proto: ModelConfigProto) -> bool:
    groups = proto.instance_group
    return not groups or any(g.kind == g.KIND_AUTO for g in groups)


def _gpu_devices(group: InstanceGroup, gpu_count: int) -> list[Device]:
    """`count` instances on each listed GPU (normalize lists every GPU when the config
    names none), as Triton places them."""
    for gpu in group.gpus:
        if not 0 <= gpu < gpu_count:
            raise invalid(
                f"instance group '{group.name}' names GPU {gpu}, but this process sees "
                f"{gpu_count} GPU(s) (ids 0..{gpu_count - 1}; see CUDA_VISIBLE_DEVICES)"
            )
    return [Device("gpu", gpu) for gpu in group.gpus for _ in range(group.count)]


def _describe(devices: Sequence[Device]) -> str:
    counts: dict[str, int] = {}
    for device in devices:
        counts[str(device)] = counts.get(str(device), 0) + 1
    return ", ".join(f"{n} x {d}" for d, n in counts.items())
