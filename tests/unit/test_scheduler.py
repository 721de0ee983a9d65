"""The scheduler with real threads and a gated stand-in backend instance."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np
import pytest

from inferd.backends.base import ModelInstance
from inferd.batching.policy import BatchPolicy
from inferd.batching.scheduler import Scheduler
from inferd.server.errors import ErrorCode, InferdError


class GatedInstance(ModelInstance):
    """Doubles its input; blocks each execution until the test opens the gate."""

    def __init__(self, gated: bool = False) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        if not gated:
            self.gate.set()
        self.closed = False

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        self.entered.release()
        self.gate.wait(10)
        x = inputs["x"]
        if (x < 0).any():
            raise ValueError("negative input")
        self.batches.append(len(x))
        return {"y": x * 2}

    def close(self) -> None:
        self.closed = True


def submit(scheduler: Scheduler, value: float) -> asyncio.Future[dict[str, np.ndarray]]:
    return scheduler.submit({"x": np.array([[value]], np.float32)}, 1, None, 0)


async def wait_entered(instance: GatedInstance) -> None:
    assert await asyncio.to_thread(instance.entered.acquire, True, 5)


async def test_requests_queued_while_busy_form_one_batch() -> None:
    instance = GatedInstance(gated=True)
    scheduler = Scheduler(
        "m", BatchPolicy(max_batch_size=8), [instance], asyncio.get_running_loop()
    )
    first = submit(scheduler, 1)
    await wait_entered(instance)
    rest = [submit(scheduler, v) for v in (2, 3, 4)]
    instance.gate.set()
    results = await asyncio.gather(first, *rest)
    assert [r["y"].item() for r in results] == [2, 4, 6, 8]
    assert instance.batches == [1, 3]
    stats = scheduler.stats
    assert (stats.inference_count, stats.execution_count, stats.success.count) == (4, 2, 4)
    assert stats.compute_input.count == stats.compute_infer.count == stats.compute_output.count == 4
    assert sorted(stats.batches) == [1, 3]
    await scheduler.close()
    assert instance.closed


async def test_instances_run_batches_concurrently_on_their_own_threads() -> None:
    instances = [GatedInstance(gated=True), GatedInstance(gated=True)]
    scheduler = Scheduler("m", BatchPolicy(max_batch_size=0), instances, asyncio.get_running_loop())
    futures = [submit(scheduler, 1), submit(scheduler, 2)]
    for instance in instances:  # both are inside execute() at the same time
        await wait_entered(instance)
    for instance in instances:
        instance.gate.set()
    await asyncio.gather(*futures)
    assert instances[0].threads.isdisjoint(instances[1].threads)
    await scheduler.close()


async def test_a_failing_batch_fails_only_its_requests() -> None:
    instance = GatedInstance(gated=True)
    scheduler = Scheduler(
        "m", BatchPolicy(max_batch_size=0), [instance], asyncio.get_running_loop()
    )
    bad, good = submit(scheduler, -1), submit(scheduler, 5)
    instance.gate.set()
    with pytest.raises(InferdError) as info:
        await bad
    assert info.value.code is ErrorCode.INTERNAL and "negative input" in info.value.message
    assert (await good)["y"].item() == 10
    assert scheduler.stats.fail.count == 1 and scheduler.stats.success.count == 1
    await scheduler.close()


async def test_cancelled_requests_are_dropped_before_execution() -> None:
    instance = GatedInstance(gated=True)
    scheduler = Scheduler(
        "m", BatchPolicy(max_batch_size=8), [instance], asyncio.get_running_loop()
    )
    first = submit(scheduler, 1)
    await wait_entered(instance)
    cancelled, kept = submit(scheduler, 2), submit(scheduler, 3)
    cancelled.cancel()
    instance.gate.set()
    await first
    assert (await kept)["y"].item() == 6
    assert instance.batches == [1, 1]
    await scheduler.close()


async def test_close_drains_queued_work_then_refuses_new_requests() -> None:
    instance = GatedInstance(gated=True)
    scheduler = Scheduler(
        "m", BatchPolicy(max_batch_size=2), [instance], asyncio.get_running_loop()
    )
    futures = [submit(scheduler, v) for v in (1, 2, 3, 4, 5)]
    await wait_entered(instance)
    closing = asyncio.create_task(scheduler.close())
    await asyncio.sleep(0)
    with pytest.raises(InferdError) as info:
        submit(scheduler, 6)
    assert info.value.code is ErrorCode.UNAVAILABLE
    instance.gate.set()
    await closing
    assert [f.result()["y"].item() for f in futures] == [2, 4, 6, 8, 10]
    assert instance.closed
