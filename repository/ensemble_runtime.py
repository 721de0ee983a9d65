"""What an ensemble version holds where other models hold a scheduler: its steps and their
dataflow, its statistics, and its requests in flight, which an unload waits for. The steps
themselves run through the composing models' schedulers (server/ensemble.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Collection

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
        # max_inflight_requests: one limiter per step, shared by the ensemble's requests.
        limit = ensemble.max_inflight
        self.limiters = tuple(StepLimiter(limit) if limit else None for _ in self.steps)
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


class StepLimiter:
    """Triton's `max_inflight_requests` for one step of an ensemble: at most `limit` of its
    requests in flight at once, across the ensemble's requests, each from its dispatch to its
    final response. Past that, launches wait their turn, first come first served. On the
    event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self._waiting: deque[Callable[[], None]] = deque()

    def acquire(self, launch: Callable[[], None]) -> bool:
        """True: a place is taken, launch now. False: `launch` is called (its place taken)
        once one frees."""
        if self.inflight < self.limit and not self._waiting:
            self.inflight += 1
            return True
        self._waiting.append(launch)
        return False

    def release(self) -> None:
        self.inflight -= 1
        while self._waiting and self.inflight < self.limit:
            self.inflight += 1
            self._waiting.popleft()()

    def withdraw(self, launch: Callable[[], None]) -> None:
        """A waiting launch that is no longer wanted (its request ended)."""
        with contextlib.suppress(ValueError):  # already called
            self._waiting.remove(launch)
