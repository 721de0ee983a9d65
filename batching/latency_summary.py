"""Latency summaries: Triton's `--metrics-config summary_latencies=true` families (a count, a sum
and quantiles over a sliding time window, per model version), fed by ModelStats' durations.

Triton computes its summaries with prometheus-cpp's `Summary`: the count and the sum are
cumulative; the quantiles come from a CKMS targeted-quantile stream in each of 5 age buckets
over a 60 s max age. Every observation goes into all 5 streams, one stream is emptied every
12 s, and a scrape reads the oldest one, so the quantiles cover the last 48 to 60 seconds;
with no observation in that window they are NaN.

inferd keeps the same window with 5 disjoint 12 s buckets (the current one and the 4 before it:
again 48 to 60 seconds), but holds each bucket's observations themselves, counted by value,
instead of a CKMS stream. That makes the quantiles exact rather than within the requested rank
error, and is cheap in Python: an observation is a list append, and the counting is done in
numpy per few thousand observations and when scraped. Values are whole microseconds, as
Triton's (durations in ns divided by 1000, rounded down); from 10 ms up they keep 4 significant
digits (within 0.05 %), which bounds a bucket to about 9,000 distinct values per decade
however many requests arrive. A quantile q of n observations is the value of rank
max(1, floor(q * n)) in ascending order, the rank prometheus-cpp aims at (so with 20
observations the 0.99 quantile is the 19th, not the largest, as Triton prints it).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import repeat

import numpy as np
import numpy.typing as npt

from inferd.batching.stats import Duration, ModelStats

MAX_AGE_NS = 60 * 1_000_000_000  # prometheus-cpp's default max_age, which Triton uses
AGE_BUCKETS = 5  # prometheus-cpp's default age_buckets
FLUSH_AT = 4096  # observations held as a plain list before they are counted
SIGNIFICANT_DIGITS = 4  # kept from 10**SIGNIFICANT_DIGITS µs up; smaller values are exact

# Lower bounds of the decades whose values are rounded: 10**4 (step 10), 10**5 (step 100), ...
_DECADES = np.array([10**k for k in range(SIGNIFICANT_DIGITS, 19)], dtype=np.int64)

Ints = npt.NDArray[np.int64]


def rounded(values: Ints) -> Ints:
    """Values with at most SIGNIFICANT_DIGITS significant digits (half up); smaller ones as
    they are."""
    step = np.int64(10) ** np.searchsorted(_DECADES, values, side="right").astype(np.int64)
    result: Ints = (values + step // 2) // step * step
    return result


class _Bucket:
    """The observations of one age bucket: distinct values, ascending, and how often each came."""

    __slots__ = ("counts", "slot", "values")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.values: Ints = np.empty(0, dtype=np.int64)
        self.counts: Ints = np.empty(0, dtype=np.int64)

    def add(self, observed: Ints) -> None:
        values, counts = np.unique(rounded(observed), return_counts=True)
        if self.values.size:
            values, counts = _merged(
                np.concatenate((self.values, values)), np.concatenate((self.counts, counts))
            )
        self.values, self.counts = values, counts.astype(np.int64)


def _merged(values: Ints, counts: Ints) -> tuple[Ints, Ints]:
    """Equal values' counts added up, values ascending."""
    distinct, where = np.unique(values, return_inverse=True)
    # float weights are exact for counts below 2**53
    return distinct, np.bincount(where, weights=counts).astype(np.int64)


class LatencySummary:
    """One summary: cumulative count and sum of whole microseconds, and exact quantiles of the
    observations of the last 48 to 60 seconds. No clock inside: callers pass `now` (ns, from
    one monotonic clock). Updated and read on one thread (the event loop)."""

    __slots__ = (
        "_buckets",
        "_interval",
        "_keep",
        "_pending",
        "_slot",
        "_slot_end",
        "_start",
        "count",
        "quantiles",
        "total",
    )

    def __init__(
        self,
        quantiles: Sequence[float],
        start_ns: int,
        max_age_ns: int = MAX_AGE_NS,
        age_buckets: int = AGE_BUCKETS,
    ) -> None:
        if age_buckets < 1 or max_age_ns < age_buckets:
            raise ValueError("a summary needs at least one age bucket of at least 1 ns")
        self.quantiles = tuple(quantiles)
        self.count = 0
        self.total = 0
        self._start = start_ns
        self._interval = max_age_ns // age_buckets
        self._keep = age_buckets
        self._slot = 0
        self._slot_end = start_ns + self._interval
        self._pending: list[int] = []
        self._buckets: deque[_Bucket] = deque()

    def observe(self, value_us: int, now_ns: int, times: int = 1) -> None:
        """`times` observations of `value_us` made at `now_ns`."""
        if now_ns >= self._slot_end:
            self._advance(now_ns)
        self.count += times
        self.total += value_us * times
        pending = self._pending
        if times == 1:
            pending.append(value_us)
        else:
            pending.extend(repeat(value_us, times))
        if len(pending) >= FLUSH_AT:
            self._flush()

    def values(self, now_ns: int) -> list[float]:
        """The value of each quantile over the window ending at `now_ns`, NaN for all when the
        window holds no observation."""
        if now_ns >= self._slot_end:
            self._advance(now_ns)
        self._flush()
        buckets = self._buckets
        if not buckets:
            return [math.nan] * len(self.quantiles)
        if len(buckets) == 1:
            values, counts = buckets[0].values, buckets[0].counts
        else:
            values, counts = _merged(
                np.concatenate([b.values for b in buckets]),
                np.concatenate([b.counts for b in buckets]),
            )
        ranks = np.cumsum(counts)  # ranks[i]: how many observations are <= values[i]
        n = int(ranks[-1])
        found: list[float] = []
        for q in self.quantiles:
            rank = min(n, max(1, int(q * n)))  # int(): prometheus-cpp's static_cast<int>
            found.append(int(values[np.searchsorted(ranks, rank)]))
        return found

    def _advance(self, now_ns: int) -> None:
        """Start the age bucket that `now_ns` falls in, and forget the ones that left the
        window. Pending observations were made before `now_ns`: they go to the bucket that
        was current until now."""
        self._flush()
        slot = (now_ns - self._start) // self._interval
        self._slot = slot
        self._slot_end = self._start + (slot + 1) * self._interval
        buckets = self._buckets
        while buckets and buckets[0].slot <= slot - self._keep:
            buckets.popleft()

    def _flush(self) -> None:
        if not self._pending:
            return
        buckets = self._buckets
        if not buckets or buckets[-1].slot != self._slot:
            buckets.append(_Bucket(self._slot))
        buckets[-1].add(np.array(self._pending, dtype=np.int64))
        self._pending.clear()


class SummarizedDuration(Duration):
    """A Duration that also feeds a LatencySummary. An add() of `ns` for `count` requests is
    `count` observations of `ns / count` each: record_batch() adds a batch's compute time once
    for all its requests. Adds with count 0 (time added to observations already counted) only
    change the total."""

    __slots__ = ("_clock", "summary")

    def __init__(self, summary: LatencySummary, clock: Callable[[], int]) -> None:
        super().__init__()
        self.summary = summary
        self._clock = clock

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns
        if count:
            self.summary.observe(ns // count // 1000, self._clock(), count)

    def quantile_values(self) -> list[float]:
        return self.summary.values(self._clock())


def summarized_stats(
    quantiles: Sequence[float], clock: Callable[[], int] = time.monotonic_ns
) -> ModelStats:
    """Statistics whose request, queue, compute and response-cache durations are summarized
    too (the windows start now)."""
    start = clock()

    def duration() -> SummarizedDuration:
        return SummarizedDuration(LatencySummary(quantiles, start), clock)

    return ModelStats(
        success=duration(),
        queue=duration(),
        compute_input=duration(),
        compute_infer=duration(),
        compute_output=duration(),
        cache_hit=duration(),
        cache_miss=duration(),
    )
