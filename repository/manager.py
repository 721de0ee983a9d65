"""The model repository manager: load each model's versions, track their state, hand out
ready versions to the data plane. A model that fails to load never affects the others.

Ensembles load after the models they are made of, and follow them: an ensemble version is
READY exactly while its composing models are (ensemble_lifecycle.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Collection, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from inferd.backends.base import ModelInstance
from inferd.backends.registry import BackendRegistry
from inferd.batching.decoupled import OpenStreams
from inferd.batching.rate_limiter import Ticket, deregister_all
from inferd.batching.scheduler import Scheduler
from inferd.batching.sequence import SequenceScheduler
from inferd.repository.config import ModelConfigProto, config_from_json
from inferd.repository.dependencies import (
    Dependencies,
    closure,
    ensemble_steps,
    load_waves,
    read_dependencies,
)
from inferd.repository.ensemble_lifecycle import EnsembleTable
from inferd.repository.fingerprint import Fingerprint, fingerprint
from inferd.repository.layout import ModelId, ModelLocation, find_models, version_dirs
from inferd.repository.loader import ModelLoader, PreparedModel, RepositorySettings, close_all
from inferd.repository.model_table import ModelTable, pick
from inferd.repository.overrides import (
    check_file_paths,
    check_model_name,
    remove_override,
    write_override,
)
from inferd.repository.versions import UNLOADED, ModelState, ModelVersion
from inferd.server.errors import InferdError, already_exists, invalid, not_found, unavailable
from inferd.server.types import ModelIndexEntry

__all__ = ["ModelRepository", "ModelState", "ModelVersion", "RepositorySettings"]

log = logging.getLogger(__name__)


class ModelRepository:
    def __init__(
        self,
        settings: RepositorySettings,
        registry: BackendRegistry,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._settings = settings
        self._loader = ModelLoader(settings, registry)
        self._loop = loop
        self._locations: dict[ModelId, ModelLocation] = {}
        # Every model the repository has seen, with its versions.
        self._models = ModelTable()
        # Load, reload and unload of one model run one at a time; different models in parallel.
        self._locks: dict[ModelId, asyncio.Lock] = {}
        # Private folders of models loaded with `file:` parameters, under one temporary root.
        self._overrides: dict[ModelId, Path] = {}
        self._override_root: Path | None = None
        # Models loaded only because an ensemble needed them (explicit mode): unloading that
        # ensemble with `unload_dependents` unloads them too, unless another ensemble runs them.
        self._implicit: set[ModelId] = set()
        self._load_slots = asyncio.Semaphore(max(1, settings.load_threads))
        self._closing = False  # close() began: nothing loads any more
        # Loads that models' code asked for and waits on: (requesting model, model loading).
        self._model_waits: list[tuple[str, str]] = []
        # The folder state each model's serving versions were loaded from: loading a model
        # whose folder has not changed since leaves it as it is, as in Triton.
        self._sources: dict[ModelId, Fingerprint] = {}
        # Repositories added while serving (a SageMaker multi-model endpoint's models), with
        # the names their model folders are served under: root -> folder -> name.
        self._registered: dict[Path, dict[str, str]] = {}
        self._registering: set[Path] = set()
        # Versions taken out of service that still finish their requests (see _retire), and
        # what waits for them; close() waits for it all.
        self._retiring: set[asyncio.Task[None]] = set()
        # Loader threads at work: a signal may stop the server before they are done.
        self._preparing = 0
        self._preparing_lock = threading.Lock()

    @property
    def loading(self) -> bool:
        """Whether a model is being prepared on a loader thread now."""
        return self._preparing > 0

    @property
    def roots(self) -> tuple[Path, ...]:
        return (*self._settings.roots, *self._registered)

    def locate(self) -> dict[ModelId, ModelLocation]:
        """The models in the repositories now, remote ones brought up to date first (blocking:
        run it off the event loop). Raises InferdError when a remote repository cannot be read."""
        self._settings.refresh()
        return self._find()

    def _find(self) -> dict[ModelId, ModelLocation]:
        return find_models(self.roots, self._registered, self._settings.namespaces)

    async def register(self, root: Path, names: Mapping[str, str]) -> None:
        """Add a repository: its model folders are served under `names` (folder -> name), the
        others under their own names. Triton's TRITONSERVER_ServerRegisterModelRepository."""
        if root in self.roots or root in self._registering:
            raise already_exists(f"model repository '{root}' has already been registered")
        self._registering.add(root)  # the checks below wait on the disk
        try:
            if not await asyncio.to_thread(root.is_dir):
                raise invalid(f"failed to register '{root}', repository not found")
            found = {key.name for key in await asyncio.to_thread(self._find)}
            in_use = {
                key.name
                for key, versions in self._models.items()
                if any(v.state is not ModelState.UNAVAILABLE for v in versions.values())
            }
            for name in names.values():
                if name in found or name in in_use or ModelId("", name) in self._overrides:
                    raise already_exists(
                        f"failed to register '{root}', there is a conflicting mapping for '{name}'"
                    )
            self._registered[root] = dict(names)
        finally:
            self._registering.discard(root)

    async def unregister(self, root: Path) -> None:
        """Remove a repository `register` added: the models found in it are unloaded and
        leave the index (Triton's TRITONSERVER_ServerUnregisterModelRepository)."""
        if self._registered.pop(root, None) is None:
            raise not_found(f"failed to unregister '{root}', repository not found")
        # Every model loaded from it was located there first (no second walk of the disk,
        # which SageMaker may be clearing).
        found = [key for key, at in self._locations.items() if root in (at.path, at.path.parent)]
        for key in found:
            if key in self._models:
                await self._forget(key)
            self._locations.pop(key, None)

    # ---- lifecycle -------------------------------------------------------------------------

    async def load_all(self, names: set[str] | None = None) -> None:
        """Start-up: load every model found under the roots, or only `names` (explicit mode)
        and the models the ensembles among them are made of, each on its own loader thread."""
        self._locations = await asyncio.to_thread(self.locate)
        found = set(self._locations)
        for missing in sorted((names or set()) - {key.name for key in found}):
            self._models[ModelId("", missing)] = {
                0: ModelVersion(missing, 0, ModelState.UNAVAILABLE, "not found in any repository")
            }
        wanted = found if names is None else {key for key in found if key.name in names}
        deps = await self._dependencies(wanted)
        if names is not None:
            composing = (closure(wanted, deps) & found) - wanted
            self._implicit |= composing
            wanted |= composing
        await self._load_in_order(wanted, deps)

    async def load(
        self,
        name: str,
        config: str | None = None,
        files: Mapping[str, bytes] | None = None,
        requested_by: str = "",
    ) -> None:
        """Load or reload a model (the repository API). `config` is a JSON ModelConfig used
        instead of config.pbtxt; `files` (path in the model folder -> content) make up the
        whole model folder and need `config`. Raises when any version fails to load.
        `requested_by`: the model whose code asks (pb_utils.load_model). Such loads take no
        --model-load-thread-count slot (a model loading models from its initialize() holds
        one), and a load that would wait for its own requester is refused."""
        if self._closing:
            raise unavailable(f"failed to load '{name}': the server is shutting down")
        if not requested_by:
            await self._load_request(name, config, files, take_slot=True)
            return
        self._refuse_cycle(requested_by, name)
        wait = (requested_by, name)
        self._model_waits.append(wait)
        try:
            await self._load_request(name, config, files, take_slot=False)
        finally:
            self._model_waits.remove(wait)

    def _refuse_cycle(self, requester: str, name: str) -> None:
        """Refuse a model's load of `name` when `name`'s code already waits, through other
        models' loads, for the requester (two initialize() calls loading each other)."""
        reached, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current == requester:
                raise invalid(
                    f"failed to load '{name}': model '{requester}' asked for it while '{name}' "
                    f"waits for '{requester}' to load (models that load each other from "
                    "initialize() would wait forever)"
                )
            if current not in reached:
                reached.add(current)
                todo += [target for asker, target in self._model_waits if asker == current]

    async def _load_request(
        self,
        name: str,
        config: str | None,
        files: Mapping[str, bytes] | None,
        take_slot: bool,
    ) -> None:
        files = files or {}
        if files and config is None:
            raise invalid(
                f"failed to load '{name}': 'file:' parameters need a 'config' parameter too "
                "(the model folder they make up has no config.pbtxt)"
            )
        try:
            override = (
                None if config is None else config_from_json(config, "the 'config' parameter")
            )
            if files:
                check_model_name(name)
                check_file_paths(files)
        except InferdError as exc:  # "failed to load" leads, as in Triton's words for a load
            raise InferdError(exc.code, f"failed to load '{name}': {exc.message}") from None
        if files:
            reasons = [await self._load_one(ModelId("", name), None, override, files, take_slot)]
        else:
            self._locations = await asyncio.to_thread(self.locate)
            # One model folder, or with --model-namespacing one in each repository holding it.
            found = [at for key, at in self._locations.items() if key.name == name]
            if not found:
                raise not_found(
                    f"failed to load '{name}': no model folder '{name}' in any repository"
                )
            reasons = await asyncio.gather(
                *(self._load_one(at.id, at, override, {}, take_slot) for at in found)
            )
        failed = "\n".join(reason for reason in reasons if reason)
        if failed:
            raise invalid(failed)

    async def _load_one(
        self,
        key: ModelId,
        location: ModelLocation | None,
        override: ModelConfigProto | None,
        files: Mapping[str, bytes],
        take_slot: bool,
    ) -> str:
        """Load one model for a load request (from `files` when there is no `location`):
        why it failed in Triton 2.51's words, or ""."""
        deps = await self._dependencies({key}, None if override is None else (key, override))
        if key in deps:
            await self._load_composing(key, deps, take_slot)
        self._implicit.discard(key)  # asked for by name: no longer only a dependency
        async with self._lock(key):
            written: Path | None = None
            if location is None:
                written = await asyncio.to_thread(
                    write_override, self._overrides_root(), key.name, files
                )
                location = ModelLocation(key.name, written)
            installed, reason = await self._load(
                location,
                override,
                take_slot,
                keep_unchanged=override is None and not files,
                retired_folder=self._overrides.get(key),
            )
            if installed:  # the retired versions' folder goes with them (_retire)
                self._overrides.pop(key, None)
                if written is not None:
                    self._overrides[key] = written
            elif written is not None:  # backs no version
                await asyncio.to_thread(remove_override, written)
        return f"load failed for model '{key}': {reason}" if reason else ""

    async def _load_composing(
        self, key: ModelId, deps: Dependencies[ModelId], take_slot: bool
    ) -> None:
        """Before ensemble `key` loads, the models it is made of that are not loaded yet load,
        as Triton does; those already serving are left as they are."""
        _, cyclic = load_waves(closure([key], deps), deps)
        if key in cyclic:
            self._mark_cyclic({key: cyclic[key]})
            raise invalid(f"failed to load '{key.name}': {cyclic[key]}")
        missing = {
            model
            for model in closure([key], deps) - {key}
            if model in self._locations
            and not any(v.ready for v in self._models.get(model, {}).values())
            # A model asking from its initialize() for an ensemble made of itself: its own
            # load holds its lock. The ensemble follows once that load is done.
            and (take_slot or not self._lock(model).locked())
        }
        self._implicit |= missing
        await self._load_in_order(missing, deps, take_slot=take_slot)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Take every version (of each model of that name, with --model-namespacing) out of
        service; they finish their requests and are freed in the background (_retire), then
        the model stays in the index, UNAVAILABLE "unloaded".
        Ensembles made of it become UNAVAILABLE. With `unload_dependents`, the models an
        ensemble loaded for itself go too, unless another ensemble runs them. A model never
        served has nothing to unload: as in Triton 2.51, that succeeds and changes nothing."""
        keys = self._models.ids(name)
        if not keys:
            log.info("model '%s' is not loaded: nothing to unload", name)
            return
        if self._closing:  # close() unloads it (a model's finalize() may ask meanwhile)
            return
        for key in keys:
            await self._unload(key, unload_dependents)

    async def _unload(self, key: ModelId, unload_dependents: bool) -> None:
        versions = self._models.get(key)
        if versions is None:
            return
        composing = self._ensembles().composing(versions.values())
        async with self._lock(key):
            freed = self._retire(
                list(self._models.get(key, {}).values()), self._overrides.pop(key, None)
            )
            self._sources.pop(key, None)
        self._implicit.discard(key)
        self._ensembles().refresh()
        if unload_dependents and composing:
            self._in_background(self._unload_dependents(freed, composing))

    async def _unload_dependents(
        self, freed: asyncio.Task[None] | None, composing: Iterable[ModelId]
    ) -> None:
        """Unload the models an ensemble loaded for itself, once its requests (which run
        them) are done, unless another ensemble runs them by then."""
        if freed is not None:
            await freed
        for model in composing:
            if model in self._implicit and not self._ensembles().users(model):
                await self._unload(model, unload_dependents=True)

    async def apply_changes(
        self,
        changed: Iterable[ModelId],
        removed: Iterable[ModelId],
        locations: Mapping[ModelId, ModelLocation],
    ) -> None:
        """Poll mode: (re)load the models whose folder changed, unload and forget removed ones;
        `locations`: the scan that found the changes. Failures are logged and shown in the
        index; a failed reload keeps the old versions."""
        self._locations = dict(locations)
        outcomes = await asyncio.gather(
            *(self._forget(key) for key in removed), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("repository change failed: %r", outcome)
        keys = {key for key in changed if key in self._locations}
        await self._load_in_order(keys, await self._dependencies(keys), tolerate=True)

    async def _dependencies(
        self, keys: Iterable[ModelId], own: tuple[ModelId, ModelConfigProto] | None = None
    ) -> dict[ModelId, tuple[ModelId, ...]]:
        """The ensembles among `keys` and among the models they are made of, transitively,
        with their composing models. `own`: a model's config given with its load request."""
        steps: dict[ModelId, tuple[str, ...]] = {}
        if own is not None:
            named = ensemble_steps(own[1])
            if named is not None:
                steps[own[0]] = named
        deps: dict[ModelId, tuple[ModelId, ...]] = {}
        todo, seen = set(keys), set[ModelId]()
        while todo:
            seen |= todo
            locations = [
                self._locations[k] for k in todo if k in self._locations and k not in steps
            ]
            steps.update(
                await asyncio.to_thread(read_dependencies, locations, self._settings.config_name)
            )
            for key in todo & steps.keys():
                deps[key] = tuple(self._step_model(name, key.namespace) for name in steps[key])
            todo = {model for key in todo for model in deps.get(key, ())} - seen
        return deps

    def _step_model(self, name: str, namespace: str) -> ModelId:
        """The model an ensemble's step names: the one of that name in the ensemble's own
        repository, else the only one anywhere (Triton's rule with --model-namespacing)."""
        candidates = {key for key in (*self._locations, *self._models) if key.name == name}
        try:
            found = pick(candidates, name, namespace)
        except InferdError:
            found = None  # several, none in the ensemble's repository: its load says so
        return found or ModelId(namespace, name)

    async def _load_in_order(
        self,
        keys: Collection[ModelId],
        deps: Dependencies[ModelId],
        tolerate: bool = False,
        take_slot: bool = True,
    ) -> None:
        """Load `keys` in waves: models before the ensembles made of them. With `tolerate`,
        an unexpected failure is logged instead of raised."""
        waves, cyclic = load_waves(keys, deps)
        self._mark_cyclic(cyclic)
        for wave in waves:
            outcomes = await asyncio.gather(
                *(
                    self._load_locked(self._locations[key], take_slot)
                    for key in wave
                    if key in self._locations
                ),
                return_exceptions=tolerate,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    log.error("repository change failed: %r", outcome)

    def _mark_cyclic(self, cyclic: Mapping[ModelId, str]) -> None:
        for key, reason in cyclic.items():
            log.error("model '%s' failed to load: %s", key, reason)
            if not any(v.ready for v in self._models.get(key, {}).values()):
                self._models[key] = {0: _version(key, 0, ModelState.UNAVAILABLE, reason)}

    async def _load_locked(self, location: ModelLocation, take_slot: bool) -> None:
        async with self._lock(location.id):
            await self._load(location, take_slot=take_slot)

    async def _forget(self, key: ModelId) -> None:
        async with self._lock(key):
            self._retire(list(self._models.get(key, {}).values()))
            self._models.pop(key)
            self._sources.pop(key, None)
        self._implicit.discard(key)
        self._ensembles().refresh()
        log.info("model '%s' was removed from the repository", key)

    def _lock(self, key: ModelId) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _ensembles(self) -> EnsembleTable:
        found = {key.name for key in self._locations}
        return EnsembleTable(self._models, found, self._settings.new_stats)

    def _overrides_root(self) -> Path:
        if self._override_root is None:
            self._override_root = Path(tempfile.mkdtemp(prefix="inferd-overrides-"))
        return self._override_root

    async def _prepare(
        self, location: ModelLocation, override: ModelConfigProto | None, take_slot: bool
    ) -> PreparedModel:
        """Prepare on a loader thread: at most --model-load-thread-count at once (those that
        `take_slot`), and --model-load-retry-count more tries when it fails or some version
        does not load."""
        retries = self._settings.load_retries
        slot = self._load_slots if take_slot else contextlib.nullcontext()
        for attempt in range(retries + 1):
            last = attempt == retries
            async with slot:
                try:
                    prepared = await asyncio.to_thread(self._prepare_now, location, override)
                except Exception as exc:
                    if last:
                        raise
                    log.warning("model '%s' failed to load (%s); trying again", location.name, exc)
                    continue
            if last or all(v.state is not ModelState.UNAVAILABLE for v in prepared.versions):
                return prepared
            log.warning("model '%s' failed to load; trying again", location.name)
            deregister_all(t for tickets in prepared.tickets.values() for t in tickets)
            await asyncio.gather(
                *(asyncio.to_thread(close_all, i) for i in prepared.instances.values())
            )
        raise AssertionError("unreachable: the last try returns or raises")

    def _prepare_now(
        self, location: ModelLocation, override: ModelConfigProto | None
    ) -> PreparedModel:
        with self._preparing_lock:
            self._preparing += 1
        try:
            return self._loader.prepare(location, override)
        finally:
            with self._preparing_lock:
                self._preparing -= 1

    async def _load(
        self,
        location: ModelLocation,
        override: ModelConfigProto | None = None,
        take_slot: bool = True,
        keep_unchanged: bool = False,
        retired_folder: Path | None = None,
    ) -> tuple[bool, str]:
        """Load one model: (whether its new versions were installed, why some failed or "").

        The new versions are prepared next to the serving ones and swapped in when all are
        ready; a reload that fails leaves the serving versions serving. With
        `keep_unchanged`, a serving model whose folder is as it was loaded stays as it is.
        `retired_folder`: the private folder the versions this load replaces came from,
        deleted once they are freed. Call under its lock.
        """
        key, name = location.id, location.name
        previous = list(self._models.get(key, {}).values())
        serving = any(v.ready for v in previous)
        source = await asyncio.to_thread(fingerprint, location)
        if keep_unchanged and serving and self._sources.get(key) == source:
            log.info("model '%s' is unchanged since it was loaded: not reloaded", key)
            return False, ""
        if not serving:
            self._models[key] = {0: _version(key, 0, ModelState.LOADING)}
        try:
            if location.error:
                raise invalid(location.error)
            prepared = await self._prepare(location, override, take_slot)
        except Exception as exc:
            foreseen = isinstance(exc, InferdError)
            reason = str(exc) if foreseen else f"{type(exc).__name__}: {exc}"
            # A failure inferd did not foresee is a bug: its traceback goes to the log.
            log.error("model '%s' failed to load: %s", key, reason, exc_info=not foreseen)
            if not serving:
                # Shown as the version it would have served (the latest folder), as Triton
                # shows a version whose config failed.
                number = _latest_version(location.path)
                self._models[key] = {number: _version(key, number, ModelState.UNAVAILABLE, reason)}
            return False, reason
        for version in prepared.versions:
            version.namespace = key.namespace
        if prepared.config is not None and prepared.config.ensemble is not None:
            self._ensembles().activate(prepared.versions)
        failed = "\n".join(  # Triton 2.51's words for each version that failed
            f"version {v.version} is at UNAVAILABLE state: {v.reason};"
            for v in prepared.versions
            if v.state is ModelState.UNAVAILABLE
        )
        if failed and serving:
            log.error("model '%s' failed to reload; the loaded versions keep serving", key)
            deregister_all(t for tickets in prepared.tickets.values() for t in tickets)
            await asyncio.gather(
                *(asyncio.to_thread(close_all, i) for i in prepared.instances.values())
            )
            return False, failed
        for version in prepared.versions:
            instances = prepared.instances.get(version.version)
            if instances is None:
                continue
            instances, tickets = _active(version, instances, prepared)
            assert version.config is not None
            assert prepared.scheduling is not None
            scheduling = prepared.scheduling
            model = f"{name}:{version.version}"
            # Chosen once: a decoupled model's requests stream their responses (an MLServer
            # model's may).
            streams = (
                OpenStreams(
                    model,
                    self._loop,
                    scheduling.decoupled_unload_timeout_s,
                    required=scheduling.decoupled,
                )
                if scheduling.decoupled or scheduling.streams_optional
                else None
            )
            sequence = version.config.sequence_batching
            if sequence is not None:  # chosen once: a stateful model gets the sequence batcher
                version.scheduler = SequenceScheduler(
                    model,
                    name,
                    sequence,
                    version.config.max_batch_size,
                    instances,
                    self._loop,
                    stats=prepared.stats.get(version.version),
                    inline_max_ns=scheduling.inline_max_ns,
                    tickets=tickets,
                    streams=streams,
                    layout=prepared.layout,
                )
                version.state = ModelState.READY
                log.info("model '%s' version %d is READY (sequence batcher)", name, version.version)
                continue
            version.scheduler = Scheduler(
                model,
                scheduling,
                instances,
                self._loop,
                stats=prepared.stats.get(version.version),
                layout=prepared.layout,
                tickets=tickets,
                streams=streams,
            )
            version.state = ModelState.READY
            log.info("model '%s' version %d is READY on %s", name, version.version, version.devices)
        # The switch: from here on requests resolve to the new versions, and ensembles made
        # of this model see its new config. As in Triton, a version this load does not bring
        # back stays in the index: UNLOADING, then UNAVAILABLE "unloaded" (a request for it
        # by number is told it is not ready).
        installed = {v.version: v for v in prepared.versions}
        kept = {v.version: v for v in previous if v.version and v.version not in installed}
        self._models[key] = {**kept, **installed}
        self._sources[key] = source
        self._ensembles().refresh()
        self._retire(previous, retired_folder)
        return True, failed

    def _retire(
        self, versions: Sequence[ModelVersion], folder: Path | None = None
    ) -> asyncio.Task[None] | None:
        """Take `versions` out of service: from now on requests resolve to none of them.
        Requests that already hold one finish on it; then its instances are freed and
        `folder` (a private model folder) deleted, in the background: as in Triton 2.51, an
        unload or reload returns without waiting for them, so that a long or stuck request
        holds neither it nor the next load of the model. close() waits for them all.
        Returns the task that frees them, if any."""
        running: list[ModelVersion] = []
        for version in versions:
            if version.state is ModelState.UNLOADING:
                continue  # being retired already
            if version.scheduler is None and version.ensemble is None:
                version.state, version.reason = ModelState.UNAVAILABLE, UNLOADED
            else:
                version.state = ModelState.UNLOADING
                running.append(version)
        if running or folder is not None:
            return self._in_background(self._free(running, folder))
        return None

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(work)
        self._retiring.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("unloading failed: %r", task.exception())

    async def _free(self, versions: Sequence[ModelVersion], folder: Path | None) -> None:
        outcomes = await asyncio.gather(
            *(v.scheduler.close() for v in versions if v.scheduler is not None),
            *(v.ensemble.close() for v in versions if v.ensemble is not None),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("freeing a model's instances failed: %r", outcome)
        passive = [i for v in versions for i in v.passive]
        if passive:
            await asyncio.to_thread(close_all, passive)
        for version in versions:
            version.state, version.reason = ModelState.UNAVAILABLE, UNLOADED
            version.scheduler = version.ensemble = None
            version.passive = []
            log.info("model '%s' version %d is unloaded", version.name, version.version)
        self._ensembles().refresh()  # those made of them say why they are not ready
        if folder is not None:
            await asyncio.to_thread(remove_override, folder)

    async def close(self) -> None:
        """Drain every scheduler, free the instances, delete the private model folders."""
        self._closing = True
        self._retire([v for vs in self._models.values() for v in vs.values()])
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._override_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._override_root, True)
            self._override_root = None
        self._overrides.clear()

    # ---- queries (event loop, hot path) ------------------------------------------------------

    def names_version(self, name: str, version: str) -> bool:
        """Whether one of the model's versions goes by `version` as a name (an MLServer
        model's `parameters.version`)."""
        try:
            versions = self._models.versions(name)
        except InferdError:  # a name several repositories hold
            return False
        return versions is not None and any(v.version_name == version for v in versions.values())

    def get(self, name: str, version: str = "", namespace: str | None = None) -> ModelVersion:
        """The ready version asked for, or the highest ready one when `version` is empty.
        `namespace`: the asker's (an ensemble's), which settles a name that several
        repositories hold (--model-namespacing)."""
        versions = self._models.versions(name, namespace)
        if versions is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if version:
            named = [v for v in versions.values() if v.version_name and v.version_name == version]
            if named:  # an MLServer model's version, by the name MLServer gives it
                version = str(named[0].version)
            found = versions.get(version_number(version))
            if found is None:
                raise not_found(
                    f"Request for unknown model: '{name}' version {version} is not found"
                )
            if not found.ready:  # Triton 2.51's words, then why
                raise unavailable(
                    f"Request for unknown model: '{name}' version {version} is not at ready state"
                    + (f": {found.reason}" if found.reason else "")
                )
            return found
        best: ModelVersion | None = None
        for candidate in versions.values():
            if candidate.ready and (best is None or candidate.version > best.version):
                best = candidate
        if best is None:
            reasons = "; ".join(
                v.reason or "unloading"
                for v in versions.values()
                if v.reason or v.state is ModelState.UNLOADING
            )
            raise unavailable(
                f"Request for model '{name}' which has no version at ready state"
                + (f": {reasons}" if reasons else "")
            )
        return best

    def model_versions(self, name: str) -> list[ModelVersion]:
        versions = self._models.versions(name)
        if versions is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        return sorted(versions.values(), key=lambda v: v.version)

    def ready_versions(self) -> list[ModelVersion]:
        return [
            v
            for key in _by_name(self._models)
            for v in sorted(self._models[key].values(), key=lambda v: v.version)
            if v.ready
        ]

    def failed_models(self) -> list[str]:
        """Models with a version that failed to load (from memory: no rescan of the roots)."""
        return sorted(
            str(key)
            for key, versions in self._models.items()
            if any(
                v.state is ModelState.UNAVAILABLE and v.reason != UNLOADED
                for v in versions.values()
            )
        )

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
        self._locations = await asyncio.to_thread(self.locate)
        entries: list[ModelIndexEntry] = []
        for key in _by_name({*self._models, *self._locations}):
            name = key.name
            if key not in self._models:
                if not ready_only:
                    entries.append(ModelIndexEntry(name=name))  # found, never loaded
                continue
            for version in sorted(self._models[key].values(), key=lambda v: v.version):
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


def _active(
    version: ModelVersion, instances: list[ModelInstance], prepared: PreparedModel
) -> tuple[list[ModelInstance], list[Ticket]]:
    """A version's instances that take requests, and their rate-limiter tickets. Its passive
    ones stay loaded on the version, as Triton keeps them, and take none (their tickets go)."""
    tickets = prepared.tickets.get(version.version, [])
    flags = prepared.passive.get(version.version, [])
    if not any(flags):
        return instances, tickets
    version.passive = [i for i, passive in zip(instances, flags, strict=True) if passive]
    if tickets:
        deregister_all(t for t, passive in zip(tickets, flags, strict=True) if passive)
        tickets = [t for t, passive in zip(tickets, flags, strict=True) if not passive]
    return [i for i, passive in zip(instances, flags, strict=True) if not passive], tickets


def _version(key: ModelId, number: int, state: ModelState, reason: str = "") -> ModelVersion:
    return ModelVersion(key.name, number, state, reason, namespace=key.namespace)


def _by_name(keys: Iterable[ModelId]) -> list[ModelId]:
    """In name order, as the index and statistics list models (then by repository)."""
    return sorted(keys, key=lambda key: (key.name, key.namespace))


def _latest_version(model_dir: Path) -> int:
    """The highest version folder of a model, 0 when it has none (or no folder)."""
    try:
        return max(version_dirs(model_dir), default=0)
    except OSError:
        return 0


_INT64_MAX = 2**63 - 1


def version_number(version: str) -> int:
    """A requested version's number; one that is none (or, as Triton 2.51 parses it, does not
    fit an int64) is refused in Triton 2.51's words (its parser's name included)."""
    negative = version[:1] == "-"
    digits = version[1:] if negative else version
    if digits.isascii() and digits.isdigit() and int(digits) <= _INT64_MAX:
        if not negative:
            return int(version)
        raise invalid(
            f"invalid model version specified '{version}' , version should be an integral value > 0"
        )
    raise invalid(
        f"failed to get model version from specified version string '{version}' "
        "(details: stol), version should be an integral value > 0"
    )
