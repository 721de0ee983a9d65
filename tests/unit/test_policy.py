"""decide() and decide_ahead(): every batching rule, with plain numbers."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import pytest

from inferd.batching.policy import BatchPolicy, Dispatch, Wait, decide, decide_ahead


@dataclass
class Item:
    batch_size: int = 1
    enqueued_ns: int = 0
    shape_key: Hashable = None
    deadline_ns: int | None = None


def queue(*sizes: int, at: int = 0) -> list[Item]:
    return [Item(size, at) for size in sizes]


MS = 1_000_000
DEFAULT = BatchPolicy(max_batch_size=8)  # dynamic_batching {}: preferred = [max], no delay
PREFERRED = BatchPolicy(max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_ns=MS)
DELAYED = BatchPolicy(max_batch_size=8, max_queue_delay_ns=MS)

CASES = [
    # name, queue, now, policy, free instances, expected
    ("empty queue waits for an event", [], 0, DEFAULT, 1, Wait(None)),
    ("no free instance waits", queue(1, 1), 0, DEFAULT, 0, Wait(None)),
    ("no delay: send what is queued", queue(1, 1, 1), 0, DEFAULT, 1, Dispatch(3)),
    ("full batch at max", queue(*[1] * 10), 0, DEFAULT, 1, Dispatch(8)),
    ("next request would overflow", queue(5, 4), 0, DEFAULT, 1, Dispatch(1)),
    ("request batch sizes add up", queue(2, 3, 3), 0, DEFAULT, 1, Dispatch(3)),
    ("non-batching model: one at a time", queue(1, 1), 0, BatchPolicy(0), 1, Dispatch(1)),
    ("preferred size reached: send it now", queue(1, 1, 1, 1, 1), 0, PREFERRED, 1, Dispatch(4)),
    ("largest preferred size wins", queue(*[1] * 9), 0, PREFERRED, 1, Dispatch(8)),
    ("below preferred: wait for the delay", queue(1, 1), 0, PREFERRED, 1, Wait(MS)),
    ("delay counts from the oldest", [Item(1, 5), Item(1, 9)], 6, PREFERRED, 1, Wait(5 + MS)),
    ("delay expired: send what is there", queue(1, 1), MS, PREFERRED, 1, Dispatch(2)),
    ("delay without preferred sizes", queue(1, 1), MS - 1, DELAYED, 1, Wait(MS)),
    ("full batch does not wait for the delay", queue(*[1] * 8), 0, DELAYED, 1, Dispatch(8)),
    ("overflow does not wait for the delay", queue(7, 2), 0, DELAYED, 1, Dispatch(1)),
]


@pytest.mark.parametrize(
    ("items", "now", "policy", "free", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    items: list[Item], now: int, policy: BatchPolicy, free: int, expected: Dispatch | Wait
) -> None:
    assert decide(items, now, policy, free) == expected


def test_different_variable_shapes_are_not_merged() -> None:
    items = [Item(1, 0, (3,)), Item(1, 0, (3,)), Item(1, 0, (5,)), Item(1, 0, (3,))]
    assert decide(items, 0, DEFAULT, 1) == Dispatch(2)
    # Cut by a shape change, the pending batch cannot grow: no waiting for the delay.
    assert decide(items, 0, DELAYED, 1) == Dispatch(2)


def per_item(ns: int):  # type: ignore[no-untyped-def]
    return lambda items: items * ns


def test_latency_objective_cuts_the_wait_short() -> None:
    items = [Item(1, 0, None, 500_000), Item(1, 0, None, 900_000)]
    estimate = per_item(100_000)  # 2 items: 200 us
    assert decide(items, 0, DELAYED, 1, estimate) == Wait(300_000)
    assert decide(items, 300_000, DELAYED, 1, estimate) == Dispatch(2)


def test_latency_objective_stops_the_batch_growing_past_a_deadline() -> None:
    items = [Item(1, 0, None, 250_000)] + [Item(1, 0) for _ in range(5)]
    assert decide(items, 0, DELAYED, 1, per_item(100_000)) == Dispatch(2)


def test_delay_counts_from_the_oldest_in_the_batch() -> None:
    items = [Item(1, 50), Item(1, 10)]  # a high-priority request queued after a lower one
    assert decide(items, 20, DELAYED, 1) == Wait(10 + MS)


WAIT = Wait(None)
AHEAD_CASES = [
    # name, queue, policy, expected
    ("empty queue", [], DEFAULT, WAIT),
    ("non-batching model: the next request", queue(1, 1), BatchPolicy(0), Dispatch(1)),
    ("a batch that could still grow waits", queue(1, 1, 1), DEFAULT, WAIT),
    ("a full batch goes ahead", queue(*[1] * 10), DEFAULT, Dispatch(8)),
    ("the largest preferred size is full", queue(*[1] * 9), PREFERRED, Dispatch(8)),
    ("a smaller preferred size waits for more", queue(*[1] * 5), PREFERRED, WAIT),
    ("the next request does not fit", queue(5, 4), DEFAULT, Dispatch(1)),
    ("one request as large as the largest", queue(8, 1), DEFAULT, Dispatch(1)),
    ("a shape change ends the batch", [Item(1, 0, (3,)), Item(1, 0, (5,))], DEFAULT, Dispatch(1)),
    ("a latency objective first", [Item(1, 0, None, MS), Item(1)], BatchPolicy(0), WAIT),
    ("a latency objective inside", [Item(4), Item(4, 0, None, MS)], DEFAULT, WAIT),
    (
        "an objective past the cut is not in it",
        [Item(8), Item(1, 0, None, MS)],
        DEFAULT,
        Dispatch(1),
    ),
]


@pytest.mark.parametrize(
    ("items", "policy", "expected"),
    [case[1:] for case in AHEAD_CASES],
    ids=[case[0] for case in AHEAD_CASES],
)
def test_decide_ahead(items: list[Item], policy: BatchPolicy, expected: Dispatch | Wait) -> None:
    assert decide_ahead(items, policy) == expected
