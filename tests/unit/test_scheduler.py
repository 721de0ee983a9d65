"""The scheduler with real threads and a gated stand-in backend instance."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from inferd.backends.base import Deliver, InstanceRequest, ModelInstance, RequestOutcome
from inferd.batching.policy import BatchPolicy
from inferd.batching.scheduler import DEFAULT_OPTIONS, RequestOptions, Scheduler, SchedulerConfig
from inferd.repository.config import QueuePolicy
from inferd.server.errors import ErrorCode, InferdError


class GatedInstance(ModelInstance):
    """Doubles its input; blocks each execution until the test opens the gate."""

    def __init__(self, gated: bool = False) -> None:
        self.batches: list[int] = []
        self.values: list[float] = []
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
        self.values.extend(x.ravel().tolist())
        return {"y": x * 2}

    def close(self) -> None:
        self.closed = True


def make(instances: list[GatedInstance], max_batch_size: int, **config: Any) -> Scheduler:
    scheduling = SchedulerConfig(BatchPolicy(max_batch_size=max_batch_size), **config)
    return Scheduler("m", scheduling, instances, asyncio.get_running_loop())


def submit(
    scheduler: Scheduler, value: float, options: RequestOptions = DEFAULT_OPTIONS
) -> asyncio.Future[dict[str, np.ndarray]]:
    x = np.array([[value]], np.float32)
    return scheduler.submit({"x": x}, 1, None, time.monotonic_ns(), options)


async def wait_entered(instance: GatedInstance) -> None:
    assert await asyncio.to_thread(instance.entered.acquire, True, 5)


async def test_requests_queued_while_busy_form_one_batch() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], max_batch_size=8)
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
    scheduler = make(instances, max_batch_size=0)
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
    scheduler = make([instance], max_batch_size=0)
    bad, good = submit(scheduler, -1), submit(scheduler, 5)
    instance.gate.set()
    with pytest.raises(InferdError) as info:
        await bad
    assert info.value.code is ErrorCode.INTERNAL and "negative input" in info.value.message
    assert (await good)["y"].item() == 10
    assert scheduler.stats.fail.count == 1 and scheduler.stats.success.count == 1
    # As Triton counts them: the failed execution too, but only the answered inference.
    stats = scheduler.stats
    assert (stats.execution_count, stats.inference_count) == (2, 1)
    assert stats.batches[1].compute_infer.count == 2
    await scheduler.close()


class PositivesInstance(GatedInstance):
    """Answers its input's positive elements: an output whose rows the data decides."""

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = super().execute(inputs)["y"] / 2
        return {"y": x[x > 0]}


async def test_an_output_with_fewer_rows_than_its_batch_fails_the_batch() -> None:
    """Cut per request, it would answer one request with another's rows, or with none."""
    instance = PositivesInstance(gated=True)
    scheduler = make([instance], max_batch_size=8)
    first = submit(scheduler, 1)  # alone in its batch: its answer is the whole output
    await wait_entered(instance)
    batched = [submit(scheduler, v) for v in (0, 3)]
    instance.gate.set()
    assert (await first)["y"].tolist() == [1]
    for future in batched:
        with pytest.raises(InferdError, match="output 'y' has 1 rows for a batch of 2 rows"):
            await future
    await scheduler.close()


async def test_cancelled_requests_are_dropped_before_execution() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], max_batch_size=8)
    first = submit(scheduler, 1)
    await wait_entered(instance)
    cancelled, kept = submit(scheduler, 2), submit(scheduler, 3)
    cancelled.cancel()
    instance.gate.set()
    await first
    assert (await kept)["y"].item() == 6
    assert instance.batches == [1, 1]
    await scheduler.close()


async def test_on_done_answers_as_the_batch_finishes() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], max_batch_size=8)
    events: list[str] = []

    def on_done(done: asyncio.Future[dict[str, np.ndarray]]) -> None:
        value = done.result()["y"].item()
        if value == 4:
            raise RuntimeError("a requester's own bug")
        events.append(f"answered {value:g}")

    def request(value: float) -> asyncio.Future[dict[str, np.ndarray]]:
        x = {"x": np.array([[value]], np.float32)}
        future = scheduler.submit(x, 1, None, time.monotonic_ns(), DEFAULT_OPTIONS, on_done)
        future.add_done_callback(lambda _: events.append(f"callback {value * 2:g}"))
        return future

    first = request(1)
    await wait_entered(instance)
    batch = [request(2), request(3), request(4)]
    batch[2].cancel()  # the requester left: never told
    instance.gate.set()
    await asyncio.gather(first, *batch[:2])
    # on_done runs as the scheduler resolves each future, before any done-callback (a loop
    # turn later); a failing on_done does not keep the rest of its batch from being answered.
    assert events.index("answered 2") < events.index("callback 2")
    assert events.index("answered 6") < min(events.index("callback 4"), events.index("callback 6"))
    assert "answered 8" not in events
    await scheduler.close()


async def test_close_drains_queued_work_then_refuses_new_requests() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], max_batch_size=2)
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


# ---- priorities, queue policies, ordering, latency objective -------------------------------


async def busy_with_first(scheduler: Scheduler, instance: GatedInstance) -> asyncio.Future[Any]:
    first = submit(scheduler, 0)
    await wait_entered(instance)
    return first


async def test_a_busy_instance_goes_on_with_the_batch_queued_behind_it() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], max_batch_size=0)
    first = await busy_with_first(scheduler, instance)
    second, third = submit(scheduler, 1), submit(scheduler, 2)
    await asyncio.sleep(0)  # the loop turn that schedules them
    assert (scheduler.queued, scheduler.inflight) == (2, 3)  # one is queued on the instance
    instance.gate.set()
    # Waited for on the loop, which cannot turn meanwhile: the instance's thread started the
    # second request by itself.
    assert instance.entered.acquire(timeout=5)
    results = await asyncio.gather(first, second, third)
    assert [r["y"].item() for r in results] == [0, 2, 4]
    assert (scheduler.queued, scheduler.inflight) == (0, 0)
    await scheduler.close()


async def test_an_instance_that_falls_idle_first_runs_the_batch_queued_behind_another() -> None:
    """The batch queued behind an instance expected to finish first goes to whichever
    instance really does (as when every instance takes from one queue)."""
    slow, fast = GatedInstance(gated=True), GatedInstance(gated=True)
    scheduler = make([slow, fast], max_batch_size=0)
    first = submit(scheduler, 1)  # to `fast` (the last idle one), expected to finish first
    await wait_entered(fast)
    second = submit(scheduler, 2)  # to `slow`
    await wait_entered(slow)
    third = submit(scheduler, 3)  # queued behind `fast`'s running batch
    await asyncio.sleep(0)
    assert scheduler.queued == 1
    slow.gate.set()  # but `slow` is done first: it takes the third
    assert [(await f)["y"].item() for f in (second, third)] == [4, 6]
    assert slow.values == [2, 3] and not fast.values  # `fast` is still inside the first
    fast.gate.set()
    assert (await first)["y"].item() == 2
    assert fast.values == [1]
    await scheduler.close()


class AttachedInstance(GatedInstance):
    """Runs batches elsewhere and answers on the loop (as a stub process does): each batch
    handed over is noted with whether it came from the loop (early); a runner thread of its
    own then waits at the gate, doubles, and delivers. Declines early hand-overs of the values
    in `too_big`, and hand-overs from the thread wait for `send_gate`."""

    takes_requests = True
    answers_on_loop = True

    def __init__(self, too_big: frozenset[float] = frozenset()) -> None:
        super().__init__(gated=True)
        self.too_big = too_big
        self.send_gate = threading.Event()
        self.send_gate.set()
        self.begun: list[tuple[float, bool]] = []  # (value, early)
        self._batches: queue.SimpleQueue[tuple[Any, list[float]] | None] = queue.SimpleQueue()
        self._runner = threading.Thread(target=self._run, daemon=True)

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        self.loop, self.deliver = loop, deliver
        self._runner.start()

    def begin_requests(
        self, requests: Sequence[InstanceRequest], job: Any, early: bool = False
    ) -> bool:
        values = [r.inputs["x"].item() for r in requests]
        if early and self.too_big.intersection(values):
            return False
        if not early:
            self.send_gate.wait(10)
        self.begun.extend((value, early) for value in values)
        self._batches.put((job, values))
        return True

    def _run(self) -> None:
        while (batch := self._batches.get()) is not None:
            job, values = batch
            self.entered.release()
            self.gate.wait(10)
            outcomes: list[RequestOutcome] = [
                {"y": np.array([[2 * value]], np.float32)} for value in values
            ]
            self.loop.call_soon_threadsafe(self.deliver, job, outcomes)

    def close(self) -> None:
        self._batches.put(None)
        super().close()


async def test_an_attached_instance_is_handed_batches_from_the_loop_even_while_busy() -> None:
    instance = AttachedInstance()
    scheduler = make([instance], max_batch_size=0)
    first = await busy_with_first(scheduler, instance)
    second = submit(scheduler, 1)
    await asyncio.sleep(0)  # the loop turn that schedules it
    assert instance.begun == [(0, True), (1, True)]  # the first still runs
    instance.gate.set()
    assert [r["y"].item() for r in await asyncio.gather(first, second)] == [0, 2]
    stats = scheduler.stats
    assert stats.success.count == 2
    await scheduler.close()


async def test_no_batch_is_handed_over_before_the_one_ahead_of_it() -> None:
    instance = AttachedInstance(too_big=frozenset({0}))
    instance.send_gate.clear()
    scheduler = make([instance], max_batch_size=0)
    first = submit(scheduler, 0)  # too big for the loop: the instance's thread sends it
    await asyncio.sleep(0)
    second = submit(scheduler, 1)
    await asyncio.sleep(0)
    assert instance.begun == []  # so the second waits for the thread too
    instance.send_gate.set()
    instance.gate.set()
    assert [r["y"].item() for r in await asyncio.gather(first, second)] == [0, 2]
    assert instance.begun == [(0, False), (1, False)]
    await scheduler.close()


@pytest.mark.parametrize(
    ("max_batch_size", "config"),
    [
        (4, {}),
        (1, {"priority_levels": 2, "default_priority": 1}),
        (1, {"default_queue_policy": QueuePolicy(default_timeout_us=60_000_000)}),
        (1, {"default_queue_policy": QueuePolicy(allow_timeout_override=True)}),
        (1, {"default_queue_policy": QueuePolicy(max_queue_size=10)}),
        (0, {"latency_slo_ns": 60 * 10**9}),
    ],
    ids=["could-grow", "priorities", "timeout", "override", "bounded", "objective"],
)
async def test_requests_stay_in_the_queue_while_they_may_still_change_places(
    max_batch_size: int, config: dict[str, Any]
) -> None:
    """Where a queued request may still join a bigger batch, time out, be refused, be overtaken
    or plan on starting now, nothing is queued on a busy instance: it waits for the loop."""
    instance = GatedInstance(gated=True)
    scheduler = make([instance], max_batch_size, **config)
    first = await busy_with_first(scheduler, instance)
    second = submit(scheduler, 1)
    await asyncio.sleep(0)
    instance.gate.set()
    assert not instance.entered.acquire(timeout=0.2)
    await asyncio.gather(first, second)
    await scheduler.close()


async def test_higher_priority_runs_first() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], 1, priority_levels=2, default_priority=2)
    first = await busy_with_first(scheduler, instance)
    low = [submit(scheduler, v, RequestOptions(priority=2)) for v in (1, 2)]
    default = submit(scheduler, 3)  # priority 0 = the default level (2)
    # Past the levels: the default level too, as in Triton 2.51.
    beyond = submit(scheduler, 5, RequestOptions(priority=3))
    high = submit(scheduler, 4, RequestOptions(priority=1))
    instance.gate.set()
    await asyncio.gather(first, *low, default, beyond, high)
    assert instance.values == [0, 4, 1, 2, 3, 5]
    await scheduler.close()


async def test_full_queue_rejects_at_once() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], 1, default_queue_policy=QueuePolicy(max_queue_size=1))
    first = await busy_with_first(scheduler, instance)
    queued = submit(scheduler, 1)
    with pytest.raises(InferdError) as info:
        submit(scheduler, 2)
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert info.value.message == "[request id: <id_unknown>] Exceeds maximum queue size"
    instance.gate.set()
    await asyncio.gather(first, queued)
    assert scheduler.stats.failures == {}  # Triton 2.51 counts it nowhere
    await scheduler.close()


async def test_queue_timeout_rejects_while_the_instance_is_still_busy() -> None:
    instance = GatedInstance(gated=True)
    # Long enough that the first request is dispatched before it expires on a loaded machine.
    policy = QueuePolicy(default_timeout_us=50_000)
    scheduler = make([instance], 1, default_queue_policy=policy)
    first = await busy_with_first(scheduler, instance)
    late = submit(scheduler, 1)
    with pytest.raises(InferdError) as info:
        await asyncio.wait_for(late, 5)  # the gate is still closed
    assert (info.value.code, info.value.message) == (
        ErrorCode.UNAVAILABLE,
        "Request timeout expired",
    )
    instance.gate.set()
    await first
    await scheduler.close()


async def test_timeout_override_may_only_lower_the_default() -> None:
    instance = GatedInstance(gated=True)
    policy = QueuePolicy(default_timeout_us=60_000_000, allow_timeout_override=True)
    scheduler = make([instance], 1, default_queue_policy=policy)
    first = await busy_with_first(scheduler, instance)
    short = submit(scheduler, 1, RequestOptions(timeout_us=1_000))
    with pytest.raises(InferdError):
        await asyncio.wait_for(short, 5)
    instance.gate.set()
    await first
    await scheduler.close()


async def test_delay_action_moves_expired_requests_behind_the_others() -> None:
    instance = GatedInstance(gated=True)
    policy = QueuePolicy(delay_on_timeout=True, allow_timeout_override=True)
    scheduler = make([instance], 1, default_queue_policy=policy)
    first = await busy_with_first(scheduler, instance)
    expired = submit(scheduler, 1, RequestOptions(timeout_us=1_000))
    await asyncio.sleep(0.01)
    fresh = submit(scheduler, 2)  # no timeout
    instance.gate.set()
    await asyncio.gather(first, expired, fresh)
    assert instance.values == [0, 2, 1]  # the expired request was delayed, not rejected
    await scheduler.close()


async def test_preserve_ordering_releases_responses_in_arrival_order() -> None:
    slow, fast = GatedInstance(gated=True), GatedInstance(gated=True)
    scheduler = make([fast, slow], 1, preserve_ordering=True)
    first = submit(scheduler, 1)  # goes to the last idle instance: `slow`
    await wait_entered(slow)
    second = submit(scheduler, 2)
    await wait_entered(fast)
    fast.gate.set()
    await asyncio.sleep(0.05)
    assert not second.done()  # finished, but held back behind the first request
    slow.gate.set()
    assert (await first)["y"].item() == 2 and (await second)["y"].item() == 4
    await scheduler.close()


async def test_latency_objective_rejects_requests_that_cannot_make_it() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], 4, latency_slo_ns=10_000_000)
    scheduler.estimator.observe(1, 50_000_000)  # the model takes 50 ms: 10 ms is hopeless
    relaxed = RequestOptions(latency_slo_ns=200_000_000)
    first = submit(scheduler, 1, relaxed)
    await wait_entered(instance)
    with pytest.raises(InferdError) as info:
        submit(scheduler, 2)
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert "latency objective of 10 ms" in info.value.message
    second = submit(scheduler, 3, relaxed)
    instance.gate.set()
    assert (await first)["y"].item() == 2 and (await second)["y"].item() == 6
    assert scheduler.stats.failures == {"REJECTED": 1}
    await scheduler.close()


async def test_a_stale_estimate_cannot_lock_the_model_out() -> None:
    instance = GatedInstance()
    scheduler = make([instance], 4, latency_slo_ns=10_000_000)
    scheduler.estimator.observe(1, 50_000_000)  # one hiccup made it look hopeless
    busy = submit(scheduler, 1, RequestOptions(latency_slo_ns=10_000_000_000))
    with pytest.raises(InferdError):  # while another request runs, the estimate decides
        submit(scheduler, 2)
    await busy
    probe = submit(scheduler, 3)  # idle and nothing queued: admitted to measure again
    assert (await probe)["y"].item() == 6
    await scheduler.close()


def test_estimator_caps_outliers_and_scales_unseen_sizes() -> None:
    from inferd.batching.estimator import ExecTimeEstimator

    estimate = ExecTimeEstimator(weight=0.5)
    assert estimate(4) == 0  # nothing known yet: optimistic
    estimate.observe(2, 1_000)
    assert estimate(4) == 2_000  # scaled linearly from the nearest known size
    estimate.observe(2, 1_000_000)  # an outlier moves the mean only towards 3x
    assert estimate(2) == 2_000


async def test_a_backed_up_event_loop_counts_towards_the_latency_forecast() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], 4, latency_slo_ns=15_000_000)
    first = submit(scheduler, 1)
    await wait_entered(instance)
    instance.gate.set()
    time.sleep(0.2)  # the batch finishes meanwhile, but the loop hears of it up to 200 ms late
    await first
    assert scheduler.estimator.return_lag_ns >= 0.2 * 100_000_000  # one EWMA step
    instance.gate.clear()
    busy = submit(scheduler, 1, RequestOptions(latency_slo_ns=10_000_000_000))
    await wait_entered(instance)
    with pytest.raises(InferdError):  # execution is quick, but the loop lag alone is too much
        scheduler.admit(time.monotonic_ns())
    instance.gate.set()
    await busy
    await scheduler.close()


def test_lateness_margin_settles_where_the_miss_rate_is_met() -> None:
    from inferd.batching.estimator import LatenessMargin

    margin = LatenessMargin(step=0.01, limit=0.5, miss_rate=0.01)
    assert margin.planned(10_000_000) == 10_000_000  # nothing late yet: the whole objective
    for _ in range(100):
        margin.observe(late=True)
    assert margin.share == 0.5  # capped: half the objective stays for the work itself
    assert margin.planned(10_000_000) == 5_000_000
    # Late at 1 % of finishes: one late step undoes 99 timely ones, so the margin holds.
    for _ in range(10):
        for _ in range(99):
            margin.observe(late=False)
        margin.observe(late=True)
    assert margin.share == pytest.approx(0.5)
    for _ in range(99 * 10):  # none late any more: the margin shrinks again
        margin.observe(late=False)
    assert margin.share == pytest.approx(0.4)


async def test_late_answers_make_admission_plan_with_a_margin() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], 4, latency_slo_ns=100_000_000)
    # Due in 300 ms: long enough that a loaded machine still dispatches it in time.
    first = submit(scheduler, 1, RequestOptions(latency_slo_ns=300_000_000))
    await wait_entered(instance)
    time.sleep(0.35)
    instance.gate.set()
    await first  # answered, but late
    assert scheduler.margin.share > 0
    await scheduler.close()

    instance = GatedInstance(gated=True)
    scheduler = make([instance], 4, latency_slo_ns=100_000_000)
    scheduler.estimator.observe(1, 30_000_000)  # queued behind one batch: done in 60 ms
    busy = submit(scheduler, 1, RequestOptions(latency_slo_ns=10_000_000_000))
    await wait_entered(instance)
    scheduler.margin.share = 0.5  # the plan now ends at 50 ms
    with pytest.raises(InferdError):
        scheduler.admit(time.monotonic_ns())
    scheduler.margin.share = 0.0
    scheduler.admit(time.monotonic_ns())
    instance.gate.set()
    await busy
    await scheduler.close()


async def test_early_admission_sheds_load_only_when_the_objective_is_out_of_reach() -> None:
    instance = GatedInstance(gated=True)
    scheduler = make([instance], 4, latency_slo_ns=10_000_000)
    scheduler.admit(time.monotonic_ns())  # idle: always admitted
    scheduler.estimator.observe(1, 50_000_000)
    first = submit(scheduler, 1, RequestOptions(latency_slo_ns=10_000_000_000))
    await wait_entered(instance)
    with pytest.raises(InferdError) as info:
        scheduler.admit(time.monotonic_ns())
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert scheduler.stats.failures == {"REJECTED": 1}
    plain = make([GatedInstance()], 4)
    plain.admit(0)  # no objective: nothing to check
    await plain.close()
    instance.gate.set()
    await first
    await scheduler.close()


class AnyThreadInstance(GatedInstance):
    """May run on the loop's thread; `spin_s` of CPU per execution."""

    runs_on_any_thread = True

    def __init__(self, spin_s: float = 0.0) -> None:
        super().__init__()
        self.spin_s = spin_s
        self.order: list[str] = []

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.order.append(threading.current_thread().name)
        end = time.thread_time() + self.spin_s
        while time.thread_time() < end:
            pass
        return super().execute(inputs)


@pytest.mark.parametrize(
    ("inline_us", "spin_s", "on_loop"),
    # The cheap batch's limit is far above what a trivial execute() costs even on busy cores
    # (250 µs was once exceeded under -n 2); the costly one spins well past its limit.
    [(100_000, 0.0, True), (0, 0.0, False), (250, 0.002, False)],
    ids=["cheap-runs-on-loop", "turned-off", "costly-stays-on-thread"],
)
async def test_cheap_batches_run_on_the_loop_once_measured(
    inline_us: int, spin_s: float, on_loop: bool
) -> None:
    instance = AnyThreadInstance(spin_s)
    scheduler = make([instance], 4, inline_max_ns=inline_us * 1000)
    for value in range(1, 5):  # one at a time: every batch has one item
        assert (await submit(scheduler, value))["y"].item() == 2 * value
    loop_thread = threading.current_thread().name
    # The first batch has no measurement yet, so it always runs on the instance's thread.
    assert instance.order[0] == "m-0"
    assert all(name == (loop_thread if on_loop else "m-0") for name in instance.order[1:])
    assert scheduler.stats.execution_count == 4
    await scheduler.close()
    assert instance.closed


class WaitingInstance(AnyThreadInstance):
    """May wait at little CPU (a python model's `time.sleep`): a negative input sleeps."""

    inline_until_slow = True

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            time.sleep(0.03)
            inputs = {"x": -inputs["x"]}
        return super().execute(inputs)


async def test_an_instance_whose_batches_wait_on_the_loop_goes_back_to_its_thread() -> None:
    """Slow batches on the loop are counted over the last 100 there: two, then one more
    once the first dropped out, keep it on the loop; three within 100 send it back."""
    instance = WaitingInstance()
    scheduler = make([instance], 4, inline_max_ns=5_000_000)  # slow: more than 20 ms
    loop_thread = threading.current_thread().name

    async def run(*values: float) -> str:
        for value in values:
            await submit(scheduler, value)
        return instance.order[-1]

    await run(1)  # measured on its thread
    assert await run(-1, -1, *[1] * 98, -1) == loop_thread  # the first -1 has dropped out
    assert await run(1, -1) == loop_thread  # the second too: still two in the last 100
    assert await run(-1) == loop_thread  # three: it ran there, the next ones will not
    assert await run(*[1] * 5) == "m-0"
    await scheduler.close()


async def test_instances_tied_to_their_thread_never_run_on_the_loop() -> None:
    instance = GatedInstance()  # runs_on_any_thread is False by default (CUDA streams etc.)
    scheduler = make([instance], 4, inline_max_ns=10**9)
    for value in range(3):
        await submit(scheduler, value)
    assert instance.threads == {"m-0"}
    await scheduler.close()
