"""Batch forming as a pure function: no clock, no asyncio, every timing rule testable with numbers.

Semantics follow Triton's dynamic batcher (shared/reference/PROTOCOL.md 3.2): requests in
priority then arrival order, cut at the largest preferred size reachable, wait at most
max_queue_delay for the oldest request, never merge requests whose variable-dim shapes differ.
inferd adds a latency objective: a request may carry a deadline, and the batch is cut as soon as
waiting longer (or growing it further) would make its earliest deadline unreachable.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int  # items per execution; 0 = never merge requests
    preferred_batch_sizes: tuple[int, ...] = ()  # ascending; empty = (max_batch_size,)
    max_queue_delay_ns: int = 0

    @property
    def largest_preferred(self) -> int:
        return self.preferred_batch_sizes[-1] if self.preferred_batch_sizes else self.max_batch_size


class Queued(Protocol):
    """What the policy sees of a queued request."""

    @property
    def batch_size(self) -> int: ...
    @property
    def enqueued_ns(self) -> int: ...
    @property
    def shape_key(self) -> Hashable: ...
    @property
    def deadline_ns(self) -> int | None: ...  # latency objective: respond by then


@dataclass(frozen=True, slots=True)
class Dispatch:
    count: int  # run the first `count` queued requests as one batch


@dataclass(frozen=True, slots=True)
class Wait:
    until_ns: int | None  # decide again at this time; None = on the next event only


WAIT_FOR_EVENT = Wait(None)
# Expected execution time of a batch of n items, in ns (0 when nothing is known yet).
ExecEstimate = Callable[[int], int]


def _no_estimate(items: int) -> int:
    return 0


def decide(
    queue: Iterable[Queued],
    now_ns: int,
    policy: BatchPolicy,
    free_instances: int,
    estimate: ExecEstimate = _no_estimate,
) -> Dispatch | Wait:
    if free_instances <= 0:
        return WAIT_FOR_EVENT
    items = iter(queue)
    first = next(items, None)
    if first is None:
        return WAIT_FOR_EVENT
    if policy.max_batch_size == 0:
        return Dispatch(1)

    preferred = policy.preferred_batch_sizes
    largest = policy.largest_preferred
    total, count = first.batch_size, 1
    preferred_count = 1 if total in preferred else 0
    oldest = first.enqueued_ns
    deadline = first.deadline_ns
    can_grow = total < largest
    if can_grow:
        for item in items:
            grown = total + item.batch_size
            if item.shape_key != first.shape_key or grown > policy.max_batch_size:
                can_grow = False
                break
            item_deadline = _earliest(deadline, item.deadline_ns)
            if item_deadline is not None and now_ns + estimate(grown) > item_deadline:
                can_grow = False  # a bigger batch would run past someone's objective
                break
            total, count, deadline = grown, count + 1, item_deadline
            oldest = min(oldest, item.enqueued_ns)
            if total in preferred:
                preferred_count = count
            if total >= largest:
                can_grow = False
                break

    if preferred_count:
        return Dispatch(preferred_count)
    until = oldest + policy.max_queue_delay_ns
    if deadline is not None:
        until = min(until, deadline - estimate(total))
    if not can_grow or now_ns >= until:
        return Dispatch(count)
    return Wait(until)


def decide_ahead(queue: Iterable[Queued], policy: BatchPolicy) -> Dispatch | Wait:
    """A batch to queue behind a busy instance's running one, which that instance starts the
    moment it is done, with no hop through the loop (Triton prefetches batches too). Only a
    batch that waiting could not grow, so batching loses nothing: each request alone, the
    largest preferred size reached, or the next request does not fit. None with a latency
    objective, whose plan counts on the batch starting when it is formed."""
    items = iter(queue)
    first = next(items, None)
    if first is None or first.deadline_ns is not None:
        return WAIT_FOR_EVENT
    if policy.max_batch_size == 0:
        return Dispatch(1)
    largest = policy.largest_preferred
    total, count = first.batch_size, 1
    for item in items:
        if total >= largest:
            break
        grown = total + item.batch_size
        if item.shape_key != first.shape_key or grown > policy.max_batch_size:
            return Dispatch(count)
        if item.deadline_ns is not None:
            return WAIT_FOR_EVENT
        total, count = grown, count + 1
    return Dispatch(count) if total >= largest else WAIT_FOR_EVENT


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
