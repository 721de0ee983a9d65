"""`--metrics-config` on real servers: Triton's latency summaries after real tritonclient traffic
(a model and an ensemble), no latency counters with counter_latencies=false, and the flag on
the command line."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from inferd.server.cache_config import LocalCacheConfig
from inferd.server.metrics_config import MetricsConfig, SummaryQuantile, parse_metrics_config
from tests.conftest import EXAMPLES, RunningServer
from tests.decoupled_models import REPEAT, REPEAT_CONFIG
from tests.integration.test_cli import settings_for, usage_error
from tests.integration.test_decoupled import Stream
from tests.integration.test_ensembles import CHAIN, DOUBLE, write_ensemble
from tests.integration.test_metrics import infer_simple
from tests.integration.test_response_cache import calls, write_repository
from tests.models import double_model, write_model
from tests.python_models import write_python_model

Factory = Callable[..., RunningServer]
LATENCIES = ("request", "queue", "compute_input", "compute_infer", "compute_output")
SUMMARIES = [f"nv_inference_{name}_summary_us" for name in LATENCIES]
COUNTERS = [f"nv_inference_{name}_duration_us" for name in LATENCIES]
STATISTICS_KEYS = dict(zip(LATENCIES, ("success", *LATENCIES[1:]), strict=True))


def scrape(server: RunningServer) -> str:
    response = httpx.get(f"http://127.0.0.1:{server.app.metrics_port}/metrics")
    assert response.status_code == 200, response.text
    return response.text


def summaries(text: str, model: str) -> dict[str, tuple[float, float, dict[str, float]]]:
    """family -> (_count, _sum, quantile label -> value) for one model's version 1, through
    prometheus_client's parser (which also checks the text)."""
    found: dict[str, tuple[float, float, dict[str, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "summary":
            continue
        samples = [s for s in family.samples if s.labels["model"] == model]
        if not samples:
            continue
        assert all(s.labels["version"] == "1" for s in samples)
        by_name = {s.name: s.value for s in samples if "quantile" not in s.labels}
        quantiles = {s.labels["quantile"]: s.value for s in samples if "quantile" in s.labels}
        found[family.name] = (
            by_name[family.name + "_count"],
            by_name[family.name + "_sum"],
            quantiles,
        )
    return found


def test_summaries_after_real_traffic(tmp_path: Path, server_factory: Factory) -> None:
    write_model(tmp_path, "double", double_model(), DOUBLE)
    write_ensemble(tmp_path, "chain", CHAIN)
    config = parse_metrics_config(["summary_latencies=true", "counter_latencies=false"])
    server = server_factory(model_repositories=(EXAMPLES, tmp_path), metrics_config=config)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for batch in (1, 1, 1, 1, 1, 3, 3):  # one at a time: 7 requests
            infer_simple(client, batch)
        x = httpclient.InferInput("X", [2, 4], "FP32")
        x.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
        np.testing.assert_array_equal(client.infer("chain", [x]).as_numpy("Y"), np.full((2, 4), 4))
        statistics = client.get_inference_statistics("simple")["model_stats"][0]
    finally:
        client.close()
    text = scrape(server)

    # counter_latencies=false: no latency counters, the other counters as ever.
    for name in COUNTERS:
        assert f"# TYPE {name} " not in text
    assert 'nv_inference_request_success{model="simple",version="1"} 7' in text

    simple = summaries(text, "simple")
    assert sorted(simple) == sorted(SUMMARIES)
    inference = statistics["inference_stats"]
    for latency in LATENCIES:
        count, total, quantiles = simple[f"nv_inference_{latency}_summary_us"]
        assert count == 7  # one observation per request, a batch's compute time included
        # The sum is of whole µs per request: the statistics' ns total, less under 1 µs each.
        ns = int(inference[STATISTICS_KEYS[latency]]["ns"])
        assert ns // 1000 - 7 <= total <= ns // 1000
        assert list(quantiles) == ["0.5", "0.9", "0.95", "0.99", "0.999"]  # Triton's order
        values = list(quantiles.values())
        assert values == sorted(values)
        assert all(v == int(v) for v in values)  # whole µs
        assert values[-1] <= total  # one of the observations

    # The ensemble has its own summaries; its composing model counts two steps per request.
    chain = summaries(text, "chain")
    assert chain["nv_inference_request_summary_us"][0] == 1
    assert summaries(text, "double")["nv_inference_compute_infer_summary_us"][0] == 2

    # A model without traffic: zero count and sum, and Triton's Nan for every quantile.
    assert summaries(text, "digits")["nv_inference_queue_summary_us"][:2] == (0, 0)
    for quantile in ("0.5", "0.9", "0.95", "0.99", "0.999"):
        line = f'nv_inference_queue_summary_us{{model="digits",version="1",quantile="{quantile}"}}'
        assert f"{line} Nan\n" in text


def test_custom_quantiles_bound_the_mean(server_factory: Factory) -> None:
    config = parse_metrics_config(["summary_latencies=true", "summary_quantiles=1:0,0:0"])
    server = server_factory(model_repositories=(EXAMPLES,), metrics_config=config)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for batch in (1, 2, 1, 4):
            infer_simple(client, batch)
    finally:
        client.close()
    text = scrape(server)
    assert "nv_inference_request_duration_us{" in text  # counters stay by default
    for name, (count, total, quantiles) in summaries(text, "simple").items():
        assert list(quantiles) == ["1", "0"], name  # the order given
        assert count == 4
        assert quantiles["0"] <= total / count <= quantiles["1"], name  # min <= mean <= max


def test_cached_models(tmp_path: Path, server_factory: Factory) -> None:
    """As Triton 2.51 showed it: counter_latencies=false drops the per-model cache counters
    (Triton's latency group) but not the cache summaries; answers from the cache are in the
    queue summary, not in the compute ones; a model using the cache has no request summary."""
    config = parse_metrics_config(["summary_latencies=true", "counter_latencies=false"])
    server = server_factory(
        model_repositories=(write_repository(tmp_path),),
        response_cache=LocalCacheConfig(1 << 20),
        metrics_config=config,
    )
    x = np.array([[1.0, 2.0]], np.float32)
    assert [calls(server, "http", "cached", x) for _ in range(3)] == [1, 1, 1]  # 1 miss, 2 hits
    calls(server, "http", "uncached", x)
    text = scrape(server)
    assert "# TYPE nv_cache_num_hits_per_model counter" not in text
    for gauge, value in [("entries", 1), ("hits", 2), ("misses", 1), ("lookups", 3)]:
        assert f"nv_cache_num_{gauge} {value}\n" in text  # the cache's own gauges stay
    cached = summaries(text, "cached")
    assert "nv_inference_request_summary_us" not in cached
    assert cached["nv_inference_queue_summary_us"][0] == 3
    assert cached["nv_inference_compute_infer_summary_us"][0] == 1
    hits, hit_total, hit_quantiles = cached["nv_cache_hit_summary_per_model"]
    misses, miss_total, _ = cached["nv_cache_miss_summary_per_model"]
    assert (hits, misses) == (2, 1)
    assert hit_quantiles["0.5"] <= hit_total  # whole microseconds, possibly 0
    assert miss_total >= 0
    assert summaries(text, "uncached")["nv_inference_request_summary_us"][0] == 1
    assert "nv_cache_hit_summary_per_model" not in summaries(text, "uncached")


def test_no_summaries_by_default(examples_server: RunningServer) -> None:
    text = scrape(examples_server)
    assert not re.search(r"^# TYPE \S+ summary", text, re.MULTILINE)
    for name in COUNTERS:
        assert f"# TYPE {name} counter" in text


# ---- the command line ----------------------------------------------------------------------


def test_first_response_histogram_load_time_and_tags(
    tmp_path: Path, server_factory: Factory
) -> None:
    """histogram_latencies=true: decoupled models get Triton's first-response histogram
    (bounds from their model_metrics), others none; every version its load time; metric_tags
    become `_<key>` labels; an unloaded model's series go."""
    buckets = (
        "model_metrics { metric_control [{ metric_identifier { family: "
        '"nv_inference_first_response_histogram_ms" } histogram_options { buckets: [ -1, 10, '
        "50000 ] } }] }\n"
    )
    write_python_model(tmp_path, "repeat", REPEAT, REPEAT_CONFIG + buckets)
    tags = 'metric_tags { key: "team" value: "search" }\n'
    write_model(tmp_path, "double", double_model(), DOUBLE + tags)
    server = server_factory(
        model_repositories=(tmp_path,),
        model_control_mode="explicit",
        load_models=("*",),
        metrics_config=parse_metrics_config(["histogram_latencies=true"]),
    )
    stream = Stream(server)
    try:
        stream.send("repeat", [1, 2], 7, "r")  # the first response after 10 + 50 ms
        assert [a.out for a in stream.take(2)] == [[1], [2]]
    finally:
        stream.close()
    text = scrape(server)
    family = "nv_inference_first_response_histogram_ms"
    series = [line for line in text.splitlines() if line.startswith(family + "_")]
    assert series[:2] == [
        f'{family}_count{{model="repeat",version="1"}} 1',
        series[1],  # the sum: whole ms, at least 60
    ]
    assert int(series[1].rsplit(" ", 1)[1]) >= 60
    assert series[2:] == [
        f'{family}_bucket{{model="repeat",version="1",le="{le}"}} {count}'
        for le, count in (("-1", 0), ("10", 0), ("50000", 1), ("+Inf", 1))
    ]
    load_times = {
        labels: float(value)
        for labels, value in re.findall(r"nv_model_load_duration_secs\{(.*)\} (\S+)", text)
    }
    assert set(load_times) == {
        '_team="search",model="double",version="1"',
        'model="repeat",version="1"',
    }
    assert all(seconds > 0 for seconds in load_times.values())
    assert 'nv_inference_count{_team="search",model="double",version="1"} 0' in text
    assert (
        'nv_inference_request_failure{_team="search",model="double",reason="OTHER",version="1"} 0'
        in text
    )
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.unload_model("repeat")
    finally:
        client.close()
    after = scrape(server)
    assert family not in after
    assert 'nv_model_load_duration_secs{model="repeat"' not in after


def test_the_flag_and_its_variable() -> None:
    assert settings_for(["serve"]).metrics_config == MetricsConfig()
    flags = [
        "serve",
        "--metrics-config=summary_latencies=true",
        "--metrics-config",
        "summary_quantiles=0.5:0.05,0.99:0.001",
        "--metrics-config=counter_latencies=false",
    ]
    expected = MetricsConfig(
        counter_latencies=False,
        summary_latencies=True,
        summary_quantiles=(SummaryQuantile(0.5, 0.05), SummaryQuantile(0.99, 0.001)),
    )
    assert settings_for(flags).metrics_config == expected
    # The variable's items are split at whitespace: quantile lists hold commas.
    env = {
        "INFERD_METRICS_CONFIG": "summary_latencies=true summary_quantiles=0.5:0.05,0.99:0.001 "
        "counter_latencies=false"
    }
    assert settings_for(["serve"], env).metrics_config == expected


def test_bad_metrics_configs_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, says in (
        ("--metrics-config=summary_latencies", "expected <setting>=<value>"),
        ("--metrics-config=summary_latencies=yes", "expected true or false"),
        ("--metrics-config=latencies=true", "unknown setting 'latencies'"),
        ("--metrics-config=summary_quantiles=0.5", "expected <quantile>:<error>"),
        ("--metrics-config=summary_quantiles=2:0.1", "must be between 0 and 1"),
    ):
        assert says in usage_error(bad, capsys)
