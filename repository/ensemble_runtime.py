"""What an ensemble version holds where other models hold a scheduler: its steps and their
dataflow, its statistics, and its requests in flight, which an unload waits for. The steps
themselves run through the composing models' schedulers (server/ensemble.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from inferd.batching.stats import ModelStats
from inferd.repository.config import ModelConfig
from inferd.repository.ensemble_config import EnsembleStep, dataflow
from inferd.repository.ensemble_graph import Plan
from inferd.server.errors import unavailable

# Plans are kept per set of requested outputs; past this many sets they are made per request.
MAX_CACHED_PLANS = 64


class EnsembleRuntime:
    def __init__(self, config: ModelConfig, stats: ModelStats | None = None) -> None:
        ensemble = config.ensemble
        assert ensemble is not None
        self.name = config.name
        self.config = config
        self.steps: tuple[EnsembleStep, ...] = ensemble.steps
        self.graph = dataflow(
            ensemble, [t.name for t in config.inputs], [t.name for t in config.outputs]
        )
        self.stats = stats if stats is not None else ModelStats()
        # Set whenever the composing models are judged (they may change): a step whose model
        # is decoupled streams the ensemble's responses (server/ensemble.py).
        self.decoupled_step: int | None = None
        self.inflight = 0
        self._all = self.graph.plan()
        self._plans: dict[frozenset[str], Plan] = {}
        self._closing = False
        self._drained: asyncio.Event | None = None

    @property
    def decoupled(self) -> bool:
        """Answers through a stream only: as in Triton, also when only a step is decoupled."""
        return self.config.decoupled or self.decoupled_step is not None

    def plan(self, requested: Collection[str] | None) -> Plan:
        """The steps for a request that asks for `requested` outputs (None = all)."""
        if requested is None:
            return self._all
        key = frozenset(requested)
        plan = self._plans.get(key)
        if plan is None:
            plan = self.graph.plan(key)
            if len(self._plans) < MAX_CACHED_PLANS:
                self._plans[key] = plan
        return plan

    def started(self) -> None:
        if self._closing:
            raise unavailable(f"model '{self.name}' is unloading")
        self.inflight += 1

    def finished(self) -> None:
        self.inflight -= 1
        if self._drained is not None and self.inflight == 0:
            self._drained.set()

    async def close(self) -> None:
        """Refuse new requests; return once those in flight have been answered."""
        self._closing = True
        if self.inflight:
            self._drained = asyncio.Event()
            await self._drained.wait()
