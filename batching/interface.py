"""What the rest of the server needs of a model's scheduler, whichever kind it is (the dynamic
batcher, the sequence batcher, the decoupled one): the core submits and admits, the metrics
read the gauges and statistics, unload closes."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Protocol

import numpy as np

from inferd.batching.decoupled import OpenStreams
from inferd.batching.estimator import LatenessMargin
from inferd.batching.scheduler import DEFAULT_OPTIONS, OnDone, Outputs, RequestOptions
from inferd.batching.stats import ModelStats
from inferd.server.types import InferRequest


class ModelScheduler(Protocol):
    model: str
    loop: asyncio.AbstractEventLoop
    stats: ModelStats
    margin: LatenessMargin
    streams: OpenStreams | None  # a decoupled model's requests' response streams

    @property
    def queued(self) -> int: ...

    @property
    def inflight(self) -> int: ...

    @property
    def busy(self) -> int: ...

    @property
    def instances(self) -> int: ...

    def admit(self, arrival_ns: int) -> None: ...

    def submit(
        self,
        inputs: dict[str, np.ndarray],
        batch_size: int,
        shape_key: Hashable,
        arrival_ns: int,
        options: RequestOptions = DEFAULT_OPTIONS,
        on_done: OnDone | None = None,
        request: InferRequest | None = None,
    ) -> asyncio.Future[Outputs]: ...

    async def close(self) -> None: ...
