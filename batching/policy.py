"""Batch forming as a pure function: no clock, no asyncio, every timing rule testable with numbers.

Semantics follow Triton's dynamic batcher (shared/reference/PROTOCOL.md 3.2): arrival order,
cut at the largest preferred size reachable, wait at most max_queue_delay for the oldest
request, never merge requests whose variable-dim shapes differ.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
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


@dataclass(frozen=True, slots=True)
class Dispatch:
    count: int  # run the first `count` queued requests as one batch


@dataclass(frozen=True, slots=True)
class Wait:
    until_ns: int | None  # decide again at this time; None = on the next event only


WAIT_FOR_EVENT = Wait(None)


def decide(
    queue: Iterable[Queued], now_ns: int, policy: BatchPolicy, free_instances: int
) -> Dispatch | Wait:
    if free_instances <= 0:
        return WAIT_FOR_EVENT
    items = iter(queue)
    oldest = next(items, None)
    if oldest is None:
        return WAIT_FOR_EVENT
    if policy.max_batch_size == 0:
        return Dispatch(1)

    preferred = policy.preferred_batch_sizes
    largest = policy.largest_preferred
    total, count, preferred_count = oldest.batch_size, 1, 0
    can_grow = total < largest
    if total in preferred:
        preferred_count = 1
    if can_grow:
        for item in items:
            if (
                item.shape_key != oldest.shape_key
                or total + item.batch_size > policy.max_batch_size
            ):
                can_grow = False
                break
            total += item.batch_size
            count += 1
            if total in preferred:
                preferred_count = count
            if total >= largest:
                can_grow = False
                break

    if preferred_count:
        return Dispatch(preferred_count)
    deadline = oldest.enqueued_ns + policy.max_queue_delay_ns
    if not can_grow or now_ns >= deadline:
        return Dispatch(count)
    return Wait(deadline)
