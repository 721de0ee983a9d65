"""decide_direct(): the direct sequence batcher's slot rules, with plain numbers."""

from __future__ import annotations

from inferd.batching.policy import Wait
from inferd.batching.sequence_policy import DirectBatch, Slot, decide_direct

MS = 1_000_000
EMPTY = Slot(False)
IDLE = Slot(True)  # a sequence holds the slot, with no request queued


def queued(at: int = 0, key: object = None) -> Slot:
    return Slot(True, at, key)


def test_nothing_queued_waits_for_a_request() -> None:
    assert decide_direct([EMPTY, IDLE, EMPTY], 0, 0, 0.0) == Wait(None)


def test_no_delay_runs_at_once_and_pads_the_slots_without_a_request() -> None:
    # Rows cover the slots up to the last one in use; slot 1 holds a sequence with nothing to
    # run, slot 0 is free: both are padding rows (READY=0).
    decision = decide_direct([EMPTY, IDLE, queued(), EMPTY], 5, 0, 0.0)
    assert decision == DirectBatch(rows=3, ready=(2,))


def test_every_queued_slot_runs_in_one_batch() -> None:
    decision = decide_direct([queued(3), queued(1), IDLE, queued(2)], 5, 0, 0.0)
    assert decision == DirectBatch(rows=4, ready=(0, 1, 3))


def test_delay_waits_for_more_slots_until_the_oldest_request_is_due() -> None:
    slots = [queued(1 * MS), IDLE, IDLE, IDLE]
    assert decide_direct(slots, 1 * MS, 2 * MS, 0.5) == Wait(3 * MS)
    assert decide_direct(slots, 3 * MS, 2 * MS, 0.5) == DirectBatch(4, (0,))


def test_minimum_slot_utilization_runs_before_the_delay() -> None:
    slots = [queued(0), queued(MS), IDLE, EMPTY]
    assert decide_direct(slots, MS, 10 * MS, 0.5) == DirectBatch(3, (0, 1))
    assert decide_direct(slots, MS, 10 * MS, 0.75) == Wait(10 * MS)


def test_requests_of_another_shape_wait_for_the_next_batch() -> None:
    decision = decide_direct([queued(0, "a"), queued(0, "b"), queued(0, "a")], 0, 0, 0.0)
    assert decision == DirectBatch(3, (0, 2))
