"""Prometheus metrics: Triton's families, names and labels, plus inferd's latency histograms and
saturation gauges for autoscalers.

Everything is read from the schedulers' statistics when a scrape arrives, on the event loop
that updates them, so the request path does no metrics work and an unloaded model's series
disappear with it. The text is rendered here rather than by prometheus_client, for two
reasons: Triton's counters carry no `_total` suffix, and some scrapers (perf_analyzer's regex)
misread exponent notation, so every number is written in plain decimal.

`--metrics-config` (metrics_config.py) can drop the latency counters and add Triton's latency
summaries; those are the one exception to "no metrics work on the request path": their
statistics are made with durations that also keep the last minute's values
(batching/latency_summary.py), and only when the summaries are on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from functools import cache

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from inferd.backends.pinned_memory import PinnedMemoryPool
from inferd.batching.interface import ModelScheduler
from inferd.batching.latency_summary import SummarizedDuration, summarized_stats
from inferd.batching.stats import Duration, Histogram, ModelStats, plain_stats
from inferd.repository.config import ModelConfig
from inferd.repository.manager import ModelVersion
from inferd.server.metrics_config import MetricsConfig
from inferd.server.redis_cache import RedisCache
from inferd.server.response_cache import ResponseCache

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAILURE_REASONS = ("OTHER", "BACKEND", "CANCELED", "REJECTED")  # Triton's, always all four

# Triton's cumulative counters; durations in µs from the nanosecond totals, rounded down.
_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], int]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda s: s.success.ns // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include "
        "cached requests)",
        lambda s: s.compute_output.ns // 1000,
    ),
)

# The latency counters that `--metrics-config counter_latencies=false` leaves out (Triton's
# latency group, which holds the per-model cache counters too).
LATENCY_COUNTERS = frozenset(
    {
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    }
)

# Triton's summaries (`--metrics-config summary_latencies=true`) of the same durations, in µs,
# with Triton's help texts (its compute summaries reuse the counters' "Cumulative ...").
REQUEST_SUMMARY = "nv_inference_request_summary_us"
_SUMMARIES: tuple[tuple[str, str, Callable[[ModelStats], Duration]], ...] = (
    (
        REQUEST_SUMMARY,
        "Summary of inference request duration in microseconds (includes cached requests)",
        lambda s: s.success,
    ),
    (
        "nv_inference_queue_summary_us",
        "Summary of inference queuing duration in microseconds (includes cached requests)",
        lambda s: s.queue,
    ),
    (
        "nv_inference_compute_input_summary_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda s: s.compute_input,
    ),
    (
        "nv_inference_compute_infer_summary_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda s: s.compute_infer,
    ),
    (
        "nv_inference_compute_output_summary_us",
        "Cumulative inference compute output duration in microseconds (does not include "
        "cached requests)",
        lambda s: s.compute_output,
    ),
)

# (name, help, histogram, divisor from the recorded unit to the exported one)
_HISTOGRAMS: tuple[tuple[str, str, Callable[[ModelStats], Histogram], int], ...] = (
    (
        "inferd_request_duration_seconds",
        "Request latency, arrival to response ready, in seconds (successful and failed)",
        lambda s: s.request_us,
        1_000_000,
    ),
    (
        "inferd_queue_duration_seconds",
        "Time a request waited in the queue, in seconds",
        lambda s: s.queue_us,
        1_000_000,
    ),
    (
        "inferd_compute_duration_seconds",
        "Execution time of the batch that served a request (input, infer, output), in seconds",
        lambda s: s.compute_us,
        1_000_000,
    ),
    (
        "inferd_batch_size",
        "Inferences per executed batch (sum of the requests' batch sizes)",
        lambda s: s.batch_size,
        1,
    ),
)


_CACHE_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], int]], ...] = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", lambda s: s.cache_hit.count),
    (
        "nv_cache_hit_duration_per_model",
        "Total cache hit duration per model, in microseconds",
        lambda s: s.cache_hit.ns // 1000,
    ),
    (
        "nv_cache_num_misses_per_model",
        "Number of cache misses per model",
        lambda s: s.cache_miss.count,
    ),
    (
        "nv_cache_miss_duration_per_model",
        "Total cache miss (insert+lookup) duration per model, in microseconds",
        lambda s: s.cache_miss.ns // 1000,
    ),
)

# Summaries of the same per-model durations (`summary_latencies=true`): one observation per
# lookup that hit, and per miss (its lookup and insertion together).
_CACHE_SUMMARIES: tuple[tuple[str, str, Callable[[ModelStats], Duration]], ...] = (
    (
        "nv_cache_hit_summary_per_model",
        "Summary of cache hit counts/durations per model, in microseconds.",
        lambda s: s.cache_hit,
    ),
    (
        "nv_cache_miss_summary_per_model",
        "Summary of cache miss counts/durations per model, in microseconds.",
        lambda s: s.cache_miss,
    ),
)

_GAUGES: tuple[tuple[str, str, Callable[[ModelScheduler], float]], ...] = (
    (
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        lambda s: s.queued,
    ),
    (
        "inferd_queue_depth",
        "Requests waiting in the model's queues for an instance",
        lambda s: s.queued,
    ),
    (
        "inferd_inflight_requests",
        "Requests queued or executing",
        lambda s: s.inflight,
    ),
    (
        "inferd_instances",
        "Model instances (each executes one batch at a time)",
        lambda s: s.instances,
    ),
    (
        "inferd_instance_busy_ratio",
        "Fraction of the model's instances executing a batch right now (instantaneous: "
        "average it, or use rate(inferd_instance_busy_seconds_total) / inferd_instances)",
        lambda s: s.busy / s.instances if s.instances else 0.0,
    ),
    (
        "inferd_latency_margin_ratio",
        "Share of the latency objective the scheduler holds back as a learned safety margin",
        lambda s: s.margin.share,
    ),
)


def stats_factory(
    config: MetricsConfig, exported: bool = True
) -> Callable[[ModelConfig], ModelStats]:
    """What each model version's statistics start as: with latency summaries and the
    first-response histogram (its bounds from the model's config) when they are exported
    (`exported`: metrics are served at all); plain (no such work on the request path) when
    not."""
    summaries = exported and config.summary_latencies
    histograms = exported and config.histogram_latencies
    if not (summaries or histograms):
        return plain_stats
    quantiles = tuple(q.quantile for q in config.summary_quantiles)

    def new_stats(model: ModelConfig) -> ModelStats:
        stats = summarized_stats(quantiles) if summaries else ModelStats()
        if histograms:
            stats.first_response_ms = Histogram(model.metrics.first_response_buckets_ms)
        return stats

    return new_stats


def _busy_seconds(stats: ModelStats) -> float:
    """Instance time spent executing batches: the per-batch-size compute totals are recorded
    once per batch, so their sum is busy time (failed executions are not included)."""
    ns = 0
    for batch in stats.batches.values():
        ns += batch.compute_input.ns + batch.compute_infer.ns + batch.compute_output.ns
    return ns / 1e9


class ModelCollector:
    """Per model-version families over the versions that are ready when the scrape comes."""

    def __init__(
        self,
        versions: Callable[[], Iterable[ModelVersion]],
        config: MetricsConfig,
        response_cache: bool = False,
    ) -> None:
        """`response_cache`: the server has one (models that use it get no request summary)."""
        self._versions = versions
        self._config = config
        self._response_cache = response_cache

    def collect(self) -> Iterator[Metric]:
        versions = list(self._versions())
        # Statistics families cover ensembles too (Triton exports them for ensembles); the
        # saturation gauges are about queues and instances, which only schedulers have.
        counted = [(_labels(v), stats) for v in versions if (stats := v.stats) is not None]
        scheduled = [(_labels(v), v, s) for v in versions if (s := v.scheduler) is not None]
        if not counted:
            return
        config = self._config
        for name, doc, count in _COUNTERS:
            if config.counter_latencies or name not in LATENCY_COUNTERS:
                yield _family(name, doc, "counter", [(lb, count(s)) for lb, s in counted])
        yield _failures(counted)
        yield _objective_answers(counted)
        for name, doc, gauge in _GAUGES:
            yield _family(name, doc, "gauge", [(lb, gauge(s)) for lb, _, s in scheduled])
        yield _family(
            "nv_model_load_duration_secs",
            "Model load time in seconds",
            "gauge",
            [(_labels(v), v.load_seconds) for v in versions if v.stats is not None],
        )
        yield _first_responses(versions)
        yield _family(
            "inferd_instance_busy_seconds_total",
            "Instance time spent executing batches, in seconds",
            "counter",
            [(lb, _busy_seconds(s.stats)) for lb, _, s in scheduled],
        )
        yield _family(
            "inferd_gpu_fallback",
            "1 when the version's KIND_GPU instances run on the CPU (--gpu-fallback=cpu), else 0",
            "gauge",
            [(lb, int(v.gpu_fallback)) for lb, v, _ in scheduled],
        )
        for name, doc, histogram, divisor in _HISTOGRAMS:
            family = Metric(name, doc, "histogram")
            for labels, stats in counted:
                h = histogram(stats)
                for le, cumulative in _buckets(h, divisor):
                    family.add_sample(name + "_bucket", {**labels, "le": le}, cumulative)
                family.add_sample(name + "_count", labels, sum(h.counts))
                family.add_sample(name + "_sum", labels, h.total / divisor)
            yield family
        if config.summary_latencies:
            # Triton leaves out the request summary of models answered from the cache: its
            # hits would skew it.
            uncached = [
                (_labels(v), stats)
                for v in versions
                if (stats := v.stats) is not None and not (self._response_cache and v.caches)
            ]
            for name, doc, duration in _SUMMARIES:
                summed = uncached if name == REQUEST_SUMMARY else counted
                yield _summary(name, doc, config, [(lb, duration(s)) for lb, s in summed])


def _summary(
    name: str,
    doc: str,
    config: MetricsConfig,
    durations: list[tuple[dict[str, str], Duration]],
) -> Metric:
    """Triton's order per model version: _count, _sum, then the quantiles (NaN without
    observations in the window). Statistics made without summaries (none are, when the
    summaries are on) are left out."""
    quantiles = [_number(q.quantile) for q in config.summary_quantiles]
    family = Metric(name, doc, "summary")
    for labels, duration in durations:
        if not isinstance(duration, SummarizedDuration):
            continue
        summary = duration.summary
        family.add_sample(name + "_count", labels, summary.count)
        family.add_sample(name + "_sum", labels, summary.total)
        for quantile, value in zip(quantiles, duration.quantile_values(), strict=True):
            family.add_sample(name, {**labels, "quantile": quantile}, value)
    return family


def _labels(version: ModelVersion) -> dict[str, str]:
    """Triton's labels of a version's series, in its order (prometheus-cpp sorts them): the
    config's `metric_tags` as `_<key>`, model, its repository with --model-namespacing,
    version."""
    labels = {"model": version.name, "version": str(version.version)}
    if version.namespace:
        labels["namespace"] = version.namespace
    elif version.config is None or not version.config.metrics.tags:
        return labels
    tags = version.config.metrics.tags if version.config is not None else ()
    return dict(sorted([*tags, *labels.items()]))


def _decoupled(version: ModelVersion) -> bool:
    """It streams its responses: a decoupled model, or an ensemble with a decoupled step."""
    if version.scheduler is not None:
        return version.scheduler.streams is not None
    return version.ensemble is not None and version.ensemble.decoupled


def _first_responses(versions: list[ModelVersion]) -> Metric:
    """Triton's opt-in histogram (histogram_latencies=true) of decoupled versions, in whole
    ms, in prometheus-cpp's order: _count, _sum, then the buckets."""
    name = "nv_inference_first_response_histogram_ms"
    family = Metric(name, "Duration from request to first response in milliseconds", "histogram")
    for version in versions:
        stats = version.stats
        histogram = None if stats is None else stats.first_response_ms
        if histogram is None or not _decoupled(version):
            continue
        labels = _labels(version)
        family.add_sample(name + "_count", labels, sum(histogram.counts))
        family.add_sample(name + "_sum", labels, histogram.total)
        for le, cumulative in _buckets(histogram, 1):
            family.add_sample(name + "_bucket", {**labels, "le": le}, cumulative)
    return family


def _family(name: str, doc: str, typ: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    family = Metric(name, doc, typ)
    for labels, value in samples:
        family.add_sample(name, labels, value)
    return family


def _failures(counted: list[tuple[dict[str, str], ModelStats]]) -> Metric:
    name = "nv_inference_request_failure"
    family = Metric(name, "Number of failed inference requests, all batch sizes", "counter")
    for labels, stats in counted:
        failures = stats.failures
        for reason in (*FAILURE_REASONS, *(r for r in failures if r not in FAILURE_REASONS)):
            # Triton's label order (prometheus-cpp sorts them): tags, model, reason, version.
            ordered = dict(sorted({**labels, "reason": reason}.items()))
            family.add_sample(name, ordered, failures.get(reason, 0))
    return family


def _objective_answers(counted: list[tuple[dict[str, str], ModelStats]]) -> Metric:
    name = "inferd_latency_objective_answers_total"
    doc = "Successful requests with a latency objective, by outcome: met or missed (answered late)"
    family = Metric(name, doc, "counter")
    for labels, stats in counted:
        family.add_sample(name, {**labels, "outcome": "met"}, stats.objective_met)
        family.add_sample(name, {**labels, "outcome": "missed"}, stats.objective_missed)
    return family


def _buckets(histogram: Histogram, divisor: int) -> list[tuple[str, float]]:
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for le, count in zip(_le_labels(histogram.bounds, divisor), histogram.counts, strict=True):
        cumulative += count
        buckets.append((le, cumulative))
    return buckets


@cache
def _le_labels(bounds: tuple[float, ...], divisor: int) -> tuple[str, ...]:
    # Division, not multiplication by 1e-6: it is correctly rounded, so 100 µs is "0.0001".
    return (*(_number(bound / divisor) for bound in bounds), "+Inf")


# ---- text exposition -----------------------------------------------------------------------


def _number(value: float) -> str:
    """Plain decimal: integers without a fraction, floats without an exponent."""
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "Nan"  # as prometheus-cpp writes it, for Triton
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer():
        return str(int(value))
    # repr is the shortest text that reads back as the same float; Decimal drops its exponent.
    return format(Decimal(repr(value)), "f")


def _label_value(value: str) -> str:
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value  # the common case, and the cost of a scrape is mostly here
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4; families without samples are left out."""
    return render_families(registry.collect()).encode()


def render_families(families: Iterable[Metric]) -> str:
    out: list[str] = []
    for family in families:
        if not family.samples:
            continue
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {family.name} {doc}\n# TYPE {family.name} {family.type}\n")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sample.labels.items())
            text = f"{{{labels}}}" if labels else ""
            out.append(f"{sample.name}{text} {_number(sample.value)}\n")
    return "".join(out)


class CacheCollector:
    """The response cache's families, as Triton names them: per model (for the versions that
    use the cache), and the cache's own fill."""

    def __init__(
        self,
        cache: ResponseCache | RedisCache,
        versions: Callable[[], Iterable[ModelVersion]],
        config: MetricsConfig | None = None,
    ) -> None:
        self._cache = cache
        self._versions = versions
        self._config = config or MetricsConfig()

    def collect(self) -> Iterator[Metric]:
        counted = [(_labels(v), stats) for v in self._versions() if v.caches and (stats := v.stats)]
        config = self._config
        # Triton counts these among the latency counters: counter_latencies=false drops them.
        for name, doc, value in _CACHE_COUNTERS if config.counter_latencies else ():
            yield _family(name, doc, "counter", [(lb, value(s)) for lb, s in counted])
        cache = self._cache
        gauges: list[tuple[str, str, float]] = []
        if isinstance(cache, ResponseCache):  # Redis keeps its fill to itself
            gauges += [
                ("nv_cache_util", "Cache utilization [0.0 - 1.0]", cache.used / cache.capacity),
                (
                    "nv_cache_num_entries",
                    "Number of responses stored in response cache",
                    len(cache),
                ),
                (
                    "nv_cache_num_evictions",
                    "Number of cache evictions in response cache",
                    cache.evictions,
                ),
            ]
        lookups = cache.hits + cache.misses
        gauges += [
            ("nv_cache_num_hits", "Number of cache hits in response cache", cache.hits),
            ("nv_cache_num_misses", "Number of cache misses in response cache", cache.misses),
            ("nv_cache_num_lookups", "Number of cache lookups in response cache", lookups),
            (
                "nv_cache_lookup_duration",
                "Total cache lookup duration (hit and miss), in microseconds",
                cache.lookup_ns // 1000,
            ),
            (
                "nv_cache_insertion_duration",
                "Total cache insertion duration, in microseconds",
                cache.insertion_ns // 1000,
            ),
        ]
        for name, doc, gauge in gauges:
            yield _family(name, doc, "gauge", [({}, gauge)])
        if config.summary_latencies:
            for name, doc, duration in _CACHE_SUMMARIES:
                yield _summary(name, doc, config, [(lb, duration(s)) for lb, s in counted])


class PinnedMemoryCollector:
    """The pinned memory budget and what GPU instances hold of it, as Triton names them."""

    def __init__(self, pool: PinnedMemoryPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self._pool
        for name, doc, value in (
            (
                "nv_pinned_memory_pool_total_bytes",
                "Pinned memory pool total memory size, in bytes",
                pool.total_bytes,
            ),
            (
                "nv_pinned_memory_pool_used_bytes",
                "Pinned memory pool used memory size, in bytes",
                pool.used_bytes,
            ),
        ):
            yield _family(name, doc, "gauge", [({}, value)])


class MetricsExporter:
    """The server's own registry (never prometheus_client's global one) and its text."""

    def __init__(
        self,
        versions: Callable[[], Iterable[ModelVersion]],
        *collectors: Collector,
        config: MetricsConfig | None = None,
        response_cache: bool = False,
    ) -> None:
        """`config`: --metrics-config (None: Triton's defaults); `response_cache`: the server
        has one."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ModelCollector(versions, config or MetricsConfig(), response_cache))
        for collector in collectors:
            self.registry.register(collector)

    def render(self) -> bytes:
        return render(self.registry)

    def response(self) -> Response:
        return Response(self.render(), media_type=CONTENT_TYPE)


class MetricsApp:
    """The ASGI application of the metrics port: GET /metrics, as Triton's port 8002 (or the
    path MLServer's `metrics_endpoint` names)."""

    def __init__(self, exporter: MetricsExporter, path: str = "/metrics") -> None:
        self._exporter = exporter
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != self._path:
            response: Response = PlainTextResponse("Not Found", 404)
        elif scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse("Method Not Allowed", 405, headers={"Allow": "GET"})
        else:
            response = self._exporter.response()
        await response(scope, receive, send)
