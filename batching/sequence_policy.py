"""The sequence batcher's decisions as pure functions: no clock, no asyncio, plain numbers.

Direct (Triton's direct strategy): every sequence owns one batch slot of one instance; a batch
for an instance covers its slots up to the highest one in use, taking the next request of each
slot that has one, and the rest of the rows are padding the model sees with READY=0.
Oldest: every sequence is bound to an instance; a batch takes the next request of the
sequences whose next request is oldest (dynamic batching over those heads, `policy.decide`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from inferd.batching.policy import WAIT_FOR_EVENT, Wait


@dataclass(frozen=True, slots=True)
class Slot:
    """What the direct strategy sees of one batch slot of an instance."""

    occupied: bool  # a sequence holds it
    head_ns: int | None = None  # when its next request was queued; None = nothing queued
    shape_key: Hashable = None  # requests with different keys cannot share a batch


@dataclass(frozen=True, slots=True)
class DirectBatch:
    rows: int  # batch size: slots 0..rows-1
    ready: tuple[int, ...]  # slots whose next request runs; the other rows are padding


def decide_direct(
    slots: Sequence[Slot], now_ns: int, max_delay_ns: int, min_utilization: float
) -> DirectBatch | Wait:
    """Run as soon as the share of slots with a request reaches `min_utilization`, or once
    the oldest queued request has waited `max_delay_ns` (so with no delay: at once)."""
    first: Slot | None = None
    oldest: int | None = None
    for slot in slots:
        if slot.head_ns is None:
            continue
        if first is None:
            first = slot
        if oldest is None or slot.head_ns < oldest:
            oldest = slot.head_ns
    if first is None or oldest is None:
        return WAIT_FOR_EVENT
    ready = tuple(
        i
        for i, slot in enumerate(slots)
        if slot.head_ns is not None and slot.shape_key == first.shape_key
    )
    full = len(ready) >= min_utilization * len(slots)
    if not full and now_ns < oldest + max_delay_ns:
        return Wait(oldest + max_delay_ns)
    rows = 1 + max(i for i, slot in enumerate(slots) if slot.occupied or slot.head_ns is not None)
    return DirectBatch(rows, ready)
