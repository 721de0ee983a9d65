"""Per model-version statistics, updated on the event loop only (no locks on the hot path).

Counters follow Triton's statistics extension; the histograms are inferd's addition for
autoscalers and dashboards, exported by the metrics endpoint.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Latency bucket upper bounds in microseconds: 100 µs .. 10 s, roughly x2.5 per step, which
# covers CPU models of tens of µs and GPU batches of hundreds of ms alike.
LATENCY_BUCKETS_US: tuple[float, ...] = (
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class Histogram:
    """Non-cumulative bucket counts (the last one is +Inf) and the sum of observations."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times


def _latency() -> Histogram:
    return Histogram(LATENCY_BUCKETS_US)


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    # Response cache: hits (lookup time) and misses (lookup and insertion time).
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    inference_count: int = 0  # items (sum of batch sizes)
    execution_count: int = 0  # backend executions
    last_inference_ms: int = 0  # wall clock, ms since the epoch
    batches: dict[int, BatchStats] = field(default_factory=dict)
    # Failures by Triton's metric reason: REJECTED (queue full, timeout, SLA), CANCELED, BACKEND.
    failures: dict[str, int] = field(default_factory=dict)
    # Successful requests with a latency objective, answered by it or after it.
    objective_met: int = 0
    objective_missed: int = 0
    # Histograms in microseconds (request = arrival to response ready) and items per batch.
    request_us: Histogram = field(default_factory=_latency)
    queue_us: Histogram = field(default_factory=_latency)
    compute_us: Histogram = field(default_factory=_latency)
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    # Whole ms from arrival to a streamed request's first response (Triton's opt-in
    # first-response histogram; observed for decoupled models); None when not exported.
    first_response_ms: Histogram | None = None

    def fail_request(self, duration_ns: int, reason: str) -> None:
        self.fail.add(duration_ns)
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.request_us.observe(duration_ns / 1000)


def plain_stats(model_config: object) -> ModelStats:
    """A new version's statistics, whatever its config (see RepositorySettings.new_stats)."""
    return ModelStats()
