"""Ensembles in the repository's model table: an ensemble version is READY exactly while its
composing models are ready and fit it (ensemble_check.py). The repository calls `refresh`
whenever a model loads, reloads or goes away; an ensemble then changes state with its models,
as in Triton, and needs no reload of its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterable
from dataclasses import replace
from functools import partial

from inferd.batching.stats import ModelStats, plain_stats
from inferd.repository.config import ModelConfig
from inferd.repository.ensemble_check import composing_error, decoupled_step
from inferd.repository.ensemble_config import LATEST_VERSION, EnsembleStep
from inferd.repository.ensemble_runtime import EnsembleRuntime
from inferd.repository.layout import ModelId
from inferd.repository.model_table import ModelTable
from inferd.repository.versions import ModelState, ModelVersion
from inferd.server.errors import InferdError

log = logging.getLogger(__name__)


class EnsembleTable:
    """Reads the repository's model table (shared, never copied) and `found` (the names of
    the model folders in the repositories) to judge ensembles; `new_stats` makes a new
    ensemble version's statistics."""

    def __init__(
        self,
        models: ModelTable,
        found: Container[str],
        new_stats: Callable[[ModelConfig], ModelStats] = plain_stats,
    ) -> None:
        self._models = models
        self._found = found
        self._new_stats = new_stats

    def composing_config(self, step: EnsembleStep, namespace: str = "") -> ModelConfig | str:
        """The config of the version a step of an ensemble in `namespace` runs, or why there
        is none."""
        try:
            key = self._models.find(step.model_name, namespace)
        except InferdError as exc:
            return exc.message
        versions = None if key is None else self._models.get(key)
        if not versions:
            return "not loaded" if step.model_name in self._found else "not found"
        if step.model_version == LATEST_VERSION:
            ready = [v for v in versions.values() if v.ready]
            if ready:
                return _as_step(max(ready, key=lambda v: v.version))
            reasons = dict.fromkeys(v.reason or v.state.value for v in versions.values())
            return "; ".join(reasons)
        version = versions.get(step.model_version)
        if version is None:
            return f"version {step.model_version} is not loaded"
        if not version.ready:
            return f"version {step.model_version}: {version.reason or version.state.value}"
        return _as_step(version)

    def reason(self, version: ModelVersion) -> str:
        """Why this ensemble version cannot serve now ("" = it can); also notes which of its
        steps is decoupled, as its models are now."""
        config = version.config
        assert config is not None and config.ensemble is not None
        assert version.ensemble is not None
        step_config = partial(self.composing_config, namespace=version.namespace)
        why = composing_error(config, config.ensemble, step_config)
        if not why:
            version.ensemble.decoupled_step = decoupled_step(config.ensemble, step_config)
        return why

    def activate(self, versions: Iterable[ModelVersion]) -> None:
        """Newly loaded ensemble versions: READY, or UNAVAILABLE with the reason."""
        for version in versions:
            if version.state is not ModelState.LOADING:
                continue
            assert version.config is not None
            version.ensemble = EnsembleRuntime(version.config, self._new_stats(version.config))
            why = self.reason(version)
            version.state = ModelState.UNAVAILABLE if why else ModelState.READY
            version.reason = why
            if why:
                log.error(
                    "ensemble '%s' version %d is UNAVAILABLE: %s",
                    version.name,
                    version.version,
                    why,
                )
            else:
                log.info("ensemble '%s' version %d is READY", version.name, version.version)

    def refresh(self) -> None:
        """Judge every loaded ensemble again against the models as they are now. Repeated
        until nothing changes, so that an ensemble made of ensembles follows them."""
        for _ in range(len(self._models) + 1):
            changed = False
            for versions in self._models.values():
                for version in versions.values():
                    changed |= self._judge(version)
            if not changed:
                return

    def _judge(self, version: ModelVersion) -> bool:
        if version.ensemble is None or version.state not in (
            ModelState.READY,
            ModelState.UNAVAILABLE,
        ):
            return False
        decoupled = version.ensemble.decoupled_step
        why = self.reason(version)
        state = ModelState.UNAVAILABLE if why else ModelState.READY
        if (state, why) == (version.state, version.reason):
            # An ensemble made of this one follows a change of its decoupled step too.
            return version.ensemble.decoupled_step != decoupled
        version.state, version.reason = state, why
        if why:
            log.warning(
                "ensemble '%s' version %d is now UNAVAILABLE: %s",
                version.name,
                version.version,
                why,
            )
        else:
            log.info("ensemble '%s' version %d is READY again", version.name, version.version)
        return True

    def users(self, model: ModelId) -> list[ModelId]:
        """The loaded ensembles (ready or waiting for their models, not being unloaded)
        that run `model`."""
        return sorted(
            ensemble
            for ensemble, versions in self._models.items()
            if any(
                v.ensemble is not None
                and v.state is not ModelState.UNLOADING
                and model in self.composing([v])
                for v in versions.values()
            )
        )

    def composing(self, versions: Iterable[ModelVersion]) -> list[ModelId]:
        """The models the steps of these (ensemble) versions run, those the table has."""
        found: dict[ModelId, None] = {}
        for version in versions:
            config = version.config
            if config is None or config.ensemble is None:
                continue
            for name in config.ensemble.model_names:
                try:
                    key = self._models.find(name, version.namespace)
                except InferdError:
                    continue
                if key is not None:
                    found[key] = None
        return list(found)


def _as_step(version: ModelVersion) -> ModelConfig:
    """A ready version's config as a step of an ensemble sees it: an ensemble that streams
    (it has a decoupled step) is a decoupled step itself."""
    config = version.config
    assert config is not None
    if version.ensemble is not None and version.ensemble.decoupled and not config.decoupled:
        return replace(config, decoupled=True)
    return config
