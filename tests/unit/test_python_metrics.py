"""Custom metrics of python models: the registry alone (sharing, kinds, histograms, release)."""

from __future__ import annotations

import pytest

from inferd.backends.python_metrics import CustomMetrics, MetricError, MetricKind, MetricsHolder
from inferd.server.metrics import render_families


def test_instances_that_make_the_same_metric_share_one_series() -> None:
    metrics = CustomMetrics()
    first = metrics.family("requests", "Requests seen", MetricKind.COUNTER)
    second = metrics.family("requests", "Requests seen", MetricKind.COUNTER)
    assert first is second
    a = metrics.metric(first, {"model": "m", "version": "1"})
    b = metrics.metric(second, {"version": "1", "model": "m"})
    metrics.increment(a, 2)
    metrics.increment(b, 3)
    assert metrics.value(a) == 5
    metrics.release(first, [a])
    assert "requests" in render_families(metrics.collect())  # the other holder keeps it
    metrics.release(second, [b])
    assert render_families(metrics.collect()) == ""


def test_kinds_allow_their_own_operations_only() -> None:
    metrics = CustomMetrics()
    counter = metrics.metric(metrics.family("c", "", MetricKind.COUNTER), {})
    gauge = metrics.metric(metrics.family("g", "", MetricKind.GAUGE), None)
    histogram = metrics.metric(metrics.family("h", "", MetricKind.HISTOGRAM), {}, [1, 10])
    metrics.set(gauge, -4.5)
    metrics.increment(gauge, 1)
    assert metrics.value(gauge) == -3.5
    for call, says in (
        (lambda: metrics.increment(counter, -1), "incremented by >= 0"),
        (lambda: metrics.set(counter, 3), "only supported for a gauge"),
        (lambda: metrics.observe(counter, 3), "only supported for a histogram"),
        (lambda: metrics.increment(histogram, 1), "use observe()"),
        (lambda: metrics.value(histogram), "not supported for a histogram"),
    ):
        with pytest.raises(MetricError, match=says):
            call()


def test_histograms_export_cumulative_buckets() -> None:
    metrics = CustomMetrics()
    family = metrics.family("latency_seconds", "Latency", MetricKind.HISTOGRAM)
    series = metrics.metric(family, {"model": "m"}, [0.1, 1.0])
    for value in (0.05, 0.5, 0.7, 3.0):
        metrics.observe(series, value)
    text = render_families(metrics.collect())
    assert "# TYPE latency_seconds histogram" in text
    assert 'latency_seconds_bucket{model="m",le="0.1"} 1' in text
    assert 'latency_seconds_bucket{model="m",le="1.0"} 3' in text
    assert 'latency_seconds_bucket{model="m",le="+Inf"} 4' in text
    assert 'latency_seconds_sum{model="m"} 4.25' in text
    assert 'latency_seconds_count{model="m"} 4' in text


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda m: m.family("bad name", "", 0), "invalid metric family name"),
        (lambda m: m.family("nv_inference_count", "", 0), "is reserved"),
        (lambda m: m.family("x", "", 7), "kind must be COUNTER, GAUGE or HISTOGRAM"),
        (lambda m: m.metric(m.family("x", "", 0), {"bad-label": "v"}), "invalid label name"),
        (lambda m: m.metric(m.family("x", "", 0), {"model": 1}), "must be a str"),
        (lambda m: m.metric(m.family("x", "", 0), {}, [1.0]), "only histograms take buckets"),
        (lambda m: m.metric(m.family("x", "", 2), {}), "needs buckets"),
        (lambda m: m.metric(m.family("x", "", 2), {}, [2, 1]), "buckets must increase"),
    ],
)
def test_misuse_is_refused_with_a_reason(make, says: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MetricError, match=says):
        make(CustomMetrics())


def test_a_name_keeps_its_kind() -> None:
    metrics = CustomMetrics()
    metrics.family("x", "", MetricKind.COUNTER)
    with pytest.raises(MetricError, match="already exists as a COUNTER, not a GAUGE"):
        metrics.family("x", "", MetricKind.GAUGE)


def test_an_unloaded_instance_gives_back_what_it_made() -> None:
    metrics = CustomMetrics()
    first, second = MetricsHolder(metrics), MetricsHolder(metrics)
    shared = first.family("calls", "Calls", MetricKind.COUNTER)
    metrics.increment(first.metric(shared, {"i": "0"}, None), 1)
    metrics.increment(second.metric(second.family("calls", "Calls", 0), {"i": "1"}, None), 1)
    # A metric made in a family object that another instance created keeps that family alive.
    metrics.increment(second.metric(shared, {"i": "2"}, None), 1)
    first.release()
    text = render_families(metrics.collect())
    assert 'calls{i="0"}' not in text
    assert 'calls{i="1"} 1' in text and 'calls{i="2"} 1' in text
    second.release()
    assert render_families(metrics.collect()) == ""
