"""`--metrics-config` with plain strings, and the latency summaries with plain numbers: exact
quantiles at Triton's ranks, the 48-60 s window, rounding, and the durations that feed them."""

from __future__ import annotations

import math

import pytest

from inferd.batching.latency_summary import (
    AGE_BUCKETS,
    FLUSH_AT,
    MAX_AGE_NS,
    LatencySummary,
    SummarizedDuration,
    summarized_stats,
)
from inferd.batching.stats import Duration, plain_stats
from inferd.repository.config import ModelConfig, parse_config_text, to_model_config
from inferd.server.errors import InferdError
from inferd.server.metrics import stats_factory
from inferd.server.metrics_config import (
    DEFAULT_QUANTILES,
    MetricsConfig,
    SummaryQuantile,
    parse_metrics_config,
    parse_quantiles,
)

S = 1_000_000_000  # ns
BUCKET = MAX_AGE_NS // AGE_BUCKETS  # 12 s

# ---- the flag ------------------------------------------------------------------------------


def test_defaults_are_tritons() -> None:
    config = parse_metrics_config([])
    assert config == MetricsConfig()
    assert (config.counter_latencies, config.summary_latencies) == (True, False)
    assert [(q.quantile, q.error) for q in config.summary_quantiles] == [
        (0.5, 0.05),
        (0.9, 0.01),
        (0.95, 0.001),
        (0.99, 0.001),
        (0.999, 0.001),
    ]
    assert config.summary_quantiles == DEFAULT_QUANTILES


def test_each_setting() -> None:
    config = parse_metrics_config(
        [
            "counter_latencies=false",
            "summary_latencies=true",
            "summary_quantiles=0.99:0.001,0.5:0.05, 0:0,1:0",
        ]
    )
    assert not config.counter_latencies
    assert config.summary_latencies
    # In the order given: it is the order of the exported series, as in Triton.
    assert config.summary_quantiles == (
        SummaryQuantile(0.99, 0.001),
        SummaryQuantile(0.5, 0.05),
        SummaryQuantile(0.0, 0.0),
        SummaryQuantile(1.0, 0.0),
    )
    explicit = parse_metrics_config(["counter_latencies=true", "summary_latencies=false"])
    assert explicit == MetricsConfig()
    # The same value twice is no conflict.
    twice = parse_metrics_config(["summary_latencies=true", "summary_latencies=true"])
    assert twice.summary_latencies


@pytest.mark.parametrize(
    ("item", "says"),
    [
        # Triton refuses these too ("option format is <setting>=<value>").
        ("summary_latencies", "expected <setting>=<value>"),
        ("summary_latencies=", "expected <setting>=<value>"),
        ("=true", "expected <setting>=<value>"),
        ("x,summary_latencies=true", "expected <setting>=<value>"),
        # Triton ignores these without a word.
        ("summary_latency=true", "known: counter_latencies, histogram_latencies, summary"),
        ("histogram_latencies=yes", "expected true or false"),
        ("summary_latencies=True", "expected true or false"),
        ("summary_latencies=1", "expected true or false"),
        ("counter_latencies=no", "expected true or false"),
        ("summary_latencies=true=x", "expected true or false"),
        ("summary_quantiles=0.5", "expected <quantile>:<error>"),
        ("summary_quantiles=0.5:0.05,", "expected <quantile>:<error>"),
        ("summary_quantiles=0.5:0.05 0.9:0.01", "the error is not a number"),
        ("summary_quantiles=0.5x:0.05", "the quantile is not a number"),
        ("summary_quantiles=1.5:0.1", "the quantile must be between 0 and 1"),
        ("summary_quantiles=-0.5:0.1", "the quantile must be between 0 and 1"),
        ("summary_quantiles=nan:0.1", "the quantile must be between 0 and 1"),
        ("summary_quantiles=0.5:-1", "the error must be between 0 and 1"),
        ("summary_quantiles=0.5:0.1,0.50:0.2", "quantile 0.5 is given twice"),
    ],
)
def test_bad_items_are_refused(item: str, says: str) -> None:
    with pytest.raises(ValueError, match="--metrics-config") as info:
        parse_metrics_config([item])
    assert says in str(info.value)


def test_conflicting_repeats_are_refused() -> None:
    # Triton keeps summaries on here (a `true` wins); no order-dependent guess in inferd.
    with pytest.raises(ValueError, match="'summary_latencies' is given twice"):
        parse_metrics_config(["summary_latencies=true", "summary_latencies=false"])


def test_parse_quantiles_names_the_pair() -> None:
    with pytest.raises(ValueError, match="'bad'"):
        parse_quantiles("0.5:0.05,bad,0.9:0.01")


def model(extra: str = "") -> ModelConfig:
    text = 'name: "m" input [{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }] ' + extra
    return to_model_config(parse_config_text(text, "test"), "python")


def test_statistics_have_summaries_only_when_they_are_exported() -> None:
    assert stats_factory(MetricsConfig()) is plain_stats
    on = MetricsConfig(summary_latencies=True)
    assert stats_factory(on, exported=False) is plain_stats
    stats = stats_factory(on)(model())
    for duration in (
        stats.success,
        stats.queue,
        stats.compute_input,
        stats.compute_infer,
        stats.compute_output,
    ):
        assert isinstance(duration, SummarizedDuration)
        assert duration.summary.quantiles == (0.5, 0.9, 0.95, 0.99, 0.999)
    assert type(stats.fail) is Duration  # failures have no summary, as in Triton
    assert stats.first_response_ms is None


def test_first_response_histogram_bounds_come_from_the_model_config() -> None:
    assert parse_metrics_config(["histogram_latencies=true"]).histogram_latencies
    on = MetricsConfig(histogram_latencies=True)
    assert stats_factory(on, exported=False) is plain_stats
    default = stats_factory(on)(model()).first_response_ms
    assert default is not None and default.bounds == (100, 500, 2000, 5000)  # Triton's, ms
    custom = model(
        "model_metrics { metric_control [{ metric_identifier { family: "
        '"nv_inference_first_response_histogram_ms" } histogram_options { buckets: [-1, 0, 2.5] '
        "} }] }"
    )
    histogram = stats_factory(on)(custom).first_response_ms
    assert histogram is not None and histogram.bounds == (-1, 0, 2.5)
    assert type(stats_factory(on)(custom).success) is Duration  # no summaries asked for


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('metric_tags { key: "bad-key" value: "x" }', "metric_tags key 'bad-key'"),
        (
            "model_metrics { metric_control [{ metric_identifier { family: "
            '"nv_inference_first_response_histogram_ms" } histogram_options { buckets: [2, 1] '
            "} }] }",
            "must be strictly increasing",
        ),
    ],
)
def test_model_metrics_config_errors_name_the_field(extra: str, words: str) -> None:
    with pytest.raises(InferdError, match=words):
        model(extra)


def test_metric_tags_become_underscored_labels_in_order() -> None:
    tags = model('metric_tags { key: "team" value: "a" } metric_tags { key: "app" value: "b" }')
    assert tags.metrics.tags == (("_app", "b"), ("_team", "a"))


# ---- the estimator -------------------------------------------------------------------------


def test_no_observation_gives_nan() -> None:
    summary = LatencySummary([0.5, 0.99], start_ns=0)
    assert all(math.isnan(v) for v in summary.values(5 * S))
    assert (summary.count, summary.total) == (0, 0)


def test_quantiles_are_exact_at_prometheus_cpps_ranks() -> None:
    """Rank max(1, floor(q * n)): with 100 observations 1..100 the median is 50, the 0.999
    quantile 99 (not the largest), 0 the smallest and 1 the largest."""
    summary = LatencySummary([0, 0.01, 0.5, 0.9, 0.99, 0.999, 1], start_ns=0)
    for value in (37, 100, 1, 64, *range(2, 37), *range(38, 64), *range(65, 100)):
        summary.observe(value, now_ns=S)
    assert summary.values(2 * S) == [1, 1, 50, 90, 99, 99, 100]
    assert (summary.count, summary.total) == (100, 5050)


def test_small_counts_as_triton_prints_them() -> None:
    """20 requests: the 0.95, 0.99 and 0.999 quantiles are all the 19th (Triton showed one
    slow first request in its sum but in none of its quantiles)."""
    summary = LatencySummary([0.5, 0.95, 0.99, 0.999], start_ns=0)
    summary.observe(35_000, now_ns=S)
    for value in range(1, 20):
        summary.observe(value, now_ns=S)
    assert summary.values(S) == [10, 19, 19, 19]
    assert summary.total == 35_000 + 190


def test_repeated_observations_count_as_many() -> None:
    summary = LatencySummary([0.25, 0.5, 0.75, 1], start_ns=0)
    summary.observe(7, now_ns=S, times=3)
    summary.observe(9, now_ns=S)
    assert summary.values(S) == [7, 7, 7, 9]
    assert (summary.count, summary.total) == (4, 30)


def test_many_observations_are_counted_in_batches_without_loss() -> None:
    summary = LatencySummary([0.5, 1], start_ns=0)
    n = 3 * FLUSH_AT + 17
    for i in range(n):
        summary.observe(i % 1000, now_ns=S)
    half = int(0.5 * n)  # the rank; values 0..999 each n // 1000 or one more times
    ordered = sorted(i % 1000 for i in range(n))
    assert summary.values(S) == [ordered[half - 1], 999]
    assert summary.count == n


def test_values_from_10_ms_keep_four_significant_digits() -> None:
    for value, shown in (
        (9_999, 9_999),
        (10_004, 10_000),
        (10_005, 10_010),
        (123_456, 123_500),
        (99_996, 100_000),
        (7_654_321, 7_654_000),
    ):
        summary = LatencySummary([0.5], start_ns=0)
        summary.observe(value, now_ns=S)
        assert summary.values(S) == [shown]
        assert summary.total == value  # the sum is exact


def test_the_window_keeps_48_to_60_seconds() -> None:
    """Five 12 s age buckets from the summary's start, as prometheus-cpp's: an observation
    leaves the quantiles when its bucket is five buckets old; count and sum stay."""
    start = 1000 * S
    summary = LatencySummary([0, 1], start_ns=start)
    summary.observe(5, now_ns=start + BUCKET - 1)  # the end of bucket 0
    summary.observe(8, now_ns=start + BUCKET)  # the start of bucket 1
    assert summary.values(start + 5 * BUCKET - 1) == [5, 8]  # 48 s after the 5 was seen
    assert summary.values(start + 5 * BUCKET) == [8, 8]  # bucket 0 is gone
    assert summary.values(start + 6 * BUCKET - 1) == [8, 8]  # 60 s after the 8
    assert all(math.isnan(v) for v in summary.values(start + 6 * BUCKET))
    assert (summary.count, summary.total) == (2, 13)
    summary.observe(3, now_ns=start + 100 * BUCKET)  # long idle, then traffic again
    assert summary.values(start + 100 * BUCKET) == [3, 3]


def test_observations_pending_at_a_rotation_belong_to_their_bucket() -> None:
    summary = LatencySummary([0, 1], start_ns=0)
    summary.observe(4, now_ns=1)  # pending, not counted yet
    summary.observe(6, now_ns=4 * BUCKET)  # bucket 4: the 4 goes to bucket 0 first
    assert summary.values(4 * BUCKET) == [4, 6]
    assert summary.values(5 * BUCKET) == [6, 6]


def test_a_batch_add_is_one_observation_per_request() -> None:
    """record_batch() adds a batch's compute time once for its n requests: n observations of
    the batch's time, in whole µs (rounded down, as Triton's ns / 1000)."""
    now = [10 * S]
    stats = summarized_stats([0, 1], clock=lambda: now[0])
    stats.compute_infer.add(2_500_999 * 4, 4)  # a batch of 4 that took 2500.999 µs
    stats.compute_infer.add(1_000_000)
    duration = stats.compute_infer
    assert isinstance(duration, SummarizedDuration)
    assert (duration.count, duration.ns) == (5, 2_500_999 * 4 + 1_000_000)
    assert (duration.summary.count, duration.summary.total) == (5, 4 * 2500 + 1000)
    assert duration.quantile_values() == [1000, 2500]
    duration.add(123, count=0)  # time added to observations already made
    assert duration.summary.count == 5
    now[0] += MAX_AGE_NS + BUCKET
    assert all(math.isnan(v) for v in duration.quantile_values())
