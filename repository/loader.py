"""Preparing a model on a loader thread: read and complete its config, place and create its
instances, warm them up. Nothing here touches the event loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.gpu import GpuInfo
from inferd.backends.registry import BackendRegistry
from inferd.backends.reshape import model_side, reshaped
from inferd.batching.padding import padding_spec
from inferd.batching.ragged import ragged_layout
from inferd.batching.rate_limiter import RateLimiter, Ticket
from inferd.batching.scheduler import SchedulerConfig
from inferd.batching.stats import ModelStats, plain_stats
from inferd.batching.tensors import BatchLayout
from inferd.repository.batch_io_config import validate_batch_io_backend
from inferd.repository.config import (
    DeviceKind,
    InstanceGroup,
    ModelConfig,
    ModelConfigProto,
    config_path,
    normalize,
    read_config,
    to_model_config,
    validate,
    validate_decoupled,
    validate_instance_kinds,
)
from inferd.repository.ensemble_config import is_ensemble
from inferd.repository.layout import ModelLocation, select_versions, version_dirs
from inferd.repository.mlserver_settings import (
    ENV_SOURCE,
    SETTINGS_FILE,
    environment_config,
    mlserver_config,
)
from inferd.repository.rate_limits import register_instances
from inferd.repository.repo_agents import run_agents
from inferd.repository.scheduling import scheduler_config
from inferd.repository.sequence_config import with_initial_state_files
from inferd.repository.versions import ModelState, ModelVersion
from inferd.repository.warmup import run_warmup, warmup_samples
from inferd.server.errors import InferdError, invalid, unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RepositorySettings:
    roots: tuple[Path, ...]
    backend: BackendSettings = field(default_factory=BackendSettings)
    gpus: GpuInfo = field(default_factory=GpuInfo)  # what detection found (server/app.py)
    gpu_fallback_to_cpu: bool = False  # KIND_GPU without a GPU: run on CPU (logged) or fail
    config_name: str = ""  # --model-config-name: configs/<name>.pbtxt before config.pbtxt
    load_threads: int = 4  # --model-load-thread-count: models prepared at once
    load_retries: int = 0  # --model-load-retry-count: further tries after a failed load
    # --rate-limit=execution_count: every instance registers with it (None: off).
    rate_limiter: RateLimiter | None = field(default=None, compare=False)
    # What each version's statistics start as (--metrics-config: with latency summaries).
    new_stats: Callable[[ModelConfig], ModelStats] = field(default=plain_stats, compare=False)
    # --model-namespacing: each root's namespace (the repository as given); None: off, and
    # model names are unique across repositories.
    namespaces: Mapping[Path, str] | None = field(default=None, compare=False)
    # Brings remote repositories' local copies up to date before each scan (blocking; S3, GCS).
    refresh: Callable[[], None] = field(default=lambda: None, compare=False)

    @property
    def gpu_count(self) -> int:
        return self.gpus.count


@dataclass(slots=True)
class PreparedModel:
    """What a loader thread hands back to the loop for one model."""

    config: ModelConfig | None
    scheduling: SchedulerConfig | None
    versions: list[ModelVersion]
    instances: dict[int, list[ModelInstance]]
    layout: BatchLayout | None = None  # shape buckets or ragged inputs, when the config has them
    stats: dict[int, ModelStats] = field(default_factory=dict)  # warmup already counted
    tickets: dict[int, list[Ticket]] = field(default_factory=dict)  # rate limiter's, per version
    # Per version, which of its instances are passive (created, warmed up, never scheduled).
    passive: dict[int, list[bool]] = field(default_factory=dict)


class ModelLoader:
    """Turns a model folder (or an override config) into ready-to-serve versions."""

    def __init__(self, settings: RepositorySettings, registry: BackendRegistry) -> None:
        self._settings = settings
        self._registry = registry

    def prepare(self, location: ModelLocation, override: ModelConfigProto | None) -> PreparedModel:
        """Runs on a loader thread: read and complete the config, create and warm up every
        instance."""
        started = time.monotonic()
        name, model_dir = location.name, location.path
        # An MLServer model's version folders: their settings are its config.
        folders: dict[int, Path] = {}
        version_names: dict[int, str] = {}  # MLServer's names of its versions
        if override is not None:
            proto, source = override, "the load request's 'config' parameter"
        elif location.from_environment:
            proto, version_names = environment_config(model_dir)
            folders, source = {1: model_dir}, ENV_SOURCE
        elif location.settings:
            folders = dict(enumerate(location.settings, start=1))
            proto, version_names = mlserver_config(model_dir, folders, location.repository)
            source = str(folders[max(folders)] / SETTINGS_FILE)
        else:
            config_name = self._settings.config_name
            proto = read_config(model_dir, config_name)
            source = str(config_path(model_dir, config_name))
        if model_dir.name != name:  # served under another name (a registered repository's,
            # or an MLServer model's own)
            proto.name = name
        # An MLServer model's versions are its settings' folders, not numbered ones.
        available = folders or version_dirs(model_dir)
        if not available:
            raise invalid(f"model '{name}' has no version folders (numeric, e.g. {model_dir}/1)")
        run_agents(proto, model_dir)
        if is_ensemble(proto):
            return _prepare_ensemble(name, model_dir, proto, source, available, started)
        backend_name = self._backend_name(proto, model_dir, available)
        backend = self._registry.get(backend_name)
        filename = backend.model_filename(proto)
        latest = available[max(available)]
        backend.complete_config(proto, latest / filename, self._settings.backend)
        gpu_reason = self._gpu_unavailable_reason(backend)
        if gpu_reason and self._settings.gpu_count and _asks_auto(proto):
            log.warning("model '%s': KIND_AUTO instances run on the CPU: %s", name, gpu_reason)
        normalize(proto, name, 0 if gpu_reason else self._settings.gpu_count)
        schemaless = backend.schemaless(proto)
        validate(proto, name, source, schemaless)
        validate_decoupled(proto, backend_name, source)
        validate_instance_kinds(proto, backend_name, source)
        validate_batch_io_backend(proto, backend_name, source)
        config = with_initial_state_files(
            to_model_config(proto, backend_name, schemaless, backend.output_order), model_dir
        )
        labels = _read_labels(config, model_dir)
        warmups = warmup_samples(proto, config, model_dir)
        padding = padding_spec(config)
        padded = padding.by_name if padding is not None else {}
        ragged = ragged_layout(config)
        if padding is not None and ragged is not None:
            raise invalid(
                f"model '{name}': shape buckets (inferd.pad_inputs) and ragged batching "
                "(allow_ragged_batch, batch_input, batch_output) cannot be combined"
            )
        layout: BatchLayout | None = padding if padding is not None else ragged
        # Requests share a batch only when these agree: variable dims (unless ragged or padded)
        # and whether each optional input is present at all.
        shape_key_inputs = tuple(
            t.name
            for t in config.inputs
            if t.optional or (t.variable and not t.allow_ragged_batch and t.name not in padded)
        )
        prepared = PreparedModel(config, scheduler_config(config), [], {}, layout)
        shared_s = time.monotonic() - started  # the config's part of each version's load time
        for number in _wanted_versions(config, available, prepared):
            version_started = time.monotonic()
            version = ModelVersion(
                name,
                number,
                config=config,
                labels=labels,
                shape_key_inputs=shape_key_inputs,
                version_name=version_names.get(number, ""),
            )
            prepared.versions.append(version)
            try:
                devices, note = self._devices(config, gpu_reason)
                version.devices, version.reason = _describe(devices), note
                version.gpu_fallback = bool(note)
                instances = self._create_instances(
                    backend, config, available[number], filename, devices
                )
                stats = self._settings.new_stats(config)
                try:
                    run_warmup(warmups, instances, stats, prepared.layout)
                    if self._settings.rate_limiter is not None:  # warmup runs unlimited
                        prepared.tickets[number] = register_instances(
                            self._settings.rate_limiter, config, devices
                        )
                except BaseException:
                    close_all(instances)
                    raise
                prepared.instances[number] = instances
                prepared.passive[number] = [d.passive for d in devices]
                prepared.stats[number] = stats
                version.state = ModelState.LOADING
                version.load_seconds = shared_s + time.monotonic() - version_started
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
            if group.kind is DeviceKind.MODEL:  # the model places itself: it is told device 0
                devices += _named(group, [Device("model")] * group.count)
            elif group.kind is not DeviceKind.GPU:
                devices += _named(group, [Device("cpu")] * group.count)
            elif not gpu_reason:
                devices += _named(group, _gpu_devices(group, self._settings.gpu_count))
            elif self._settings.gpu_fallback_to_cpu:
                log.warning(
                    "model '%s': instance group '%s' falls back to CPU: %s",
                    config.name,
                    group.name,
                    gpu_reason,
                )
                devices += _named(group, [Device("cpu")] * group.count)
                note = f"KIND_GPU instances run on the CPU ({gpu_reason}; --gpu-fallback=cpu)"
            else:
                raise unavailable(
                    f"instance group '{group.name}' asks for KIND_GPU, but {gpu_reason} "
                    "(start with --gpu-fallback=cpu to run it on the CPU)"
                )
        return devices, note

    def _create_instances(
        self,
        backend: type[Backend],
        config: ModelConfig,
        version_dir: Path,
        filename: str,
        devices: Sequence[Device],
    ) -> list[ModelInstance]:
        settings = replace(
            self._settings.backend, total_cpu_instances=sum(1 for d in devices if d.kind == "cpu")
        )
        model_config = model_side(config)  # with `reshape`, the backend sees the model's shapes
        capabilities = self._settings.gpus.capabilities

        def create(device: Device) -> ModelInstance:
            path = version_dir / _model_file(config, filename, device, capabilities)
            return reshaped(backend.create_instance(model_config, path, device, settings), config)

        if len(devices) < 2 or not backend.creates_instances_in_parallel(config, settings):
            instances: list[ModelInstance] = []
            try:
                for device in devices:
                    instances.append(create(device))
            except BaseException:
                for instance in instances:
                    instance.close()
                raise
            return instances
        with ThreadPoolExecutor(len(devices), "instance-loader") as pool:  # waits for all
            futures = [pool.submit(create, device) for device in devices]
        errors = [error for future in futures if (error := future.exception()) is not None]
        if errors:  # the first failure, in instance order, as a serial load would give it
            for future in futures:
                if future.exception() is None:
                    future.result().close()
            raise errors[0]
        return [future.result() for future in futures]


def _prepare_ensemble(
    name: str,
    model_dir: Path,
    proto: ModelConfigProto,
    source: str,
    available: Mapping[int, Path],
    started: float,
) -> PreparedModel:
    """An ensemble has no backend and no instances: its versions are LOADING until the
    repository checks them against their composing models (ensemble_check.py)."""
    normalize(proto, name, 0)
    validate(proto, name, source)
    config = to_model_config(proto, "")
    labels = _read_labels(config, model_dir)
    prepared = PreparedModel(config, None, [], {})
    for number in _wanted_versions(config, available, prepared):
        version = ModelVersion(name, number, ModelState.LOADING, config=config, labels=labels)
        version.load_seconds = time.monotonic() - started
        prepared.versions.append(version)
    return prepared


def _wanted_versions(
    config: ModelConfig, available: Mapping[int, Path], prepared: PreparedModel
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


def close_all(instances: Iterable[ModelInstance]) -> None:
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


def _model_file(
    config: ModelConfig, filename: str, device: Device, capabilities: Sequence[str]
) -> str:
    """The file an instance loads: for a GPU instance, the config's cc_model_filenames entry
    for its GPU's compute capability when there is one (as Triton's backends pick it), else
    `filename`."""
    if device.kind == "gpu" and device.index < len(capabilities):
        return config.cc_model_filenames.get(capabilities[device.index], filename)
    return filename


def _named(group: InstanceGroup, devices: Sequence[Device]) -> list[Device]:
    """Triton's instance names: the group's name and the instance's index within the group."""
    return [
        replace(device, name=f"{group.name}_{i}", passive=group.passive)
        for i, device in enumerate(devices)
    ]


def _describe(devices: Sequence[Device]) -> str:
    counts: dict[str, int] = {}
    for device in devices:
        counts[str(device)] = counts.get(str(device), 0) + 1
    return ", ".join(f"{n} x {d}" for d, n in counts.items())
