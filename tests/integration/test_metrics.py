"""Metrics of real servers after real traffic, scraped from the metrics port and from /metrics
on the HTTP port; and the dashboard's and autoscaling examples' queries against what is
exported."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from prometheus_client.parser import text_string_to_metric_families

from inferd.server.metrics import MetricsExporter
from inferd.server.system_metrics import GpuSampler, SystemMetrics
from tests.conftest import EXAMPLES, REPO_ROOT, RunningServer
from tests.fake_pynvml import FakeGpu, FakeNvml
from tests.models import identity_model, reshape_model, write_model
from tests.unit.test_metrics import values

Factory = Callable[..., RunningServer]
MONITORING = REPO_ROOT / "k8s" / "monitoring"
SIMPLE = '{model="simple",version="1"}'
TRITON_MODEL_FAMILIES = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
}
IDENTITY_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
"""


def scrape(url: str) -> str:
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert not re.search(r"\d[eE][+-]?\d", text)  # no exponent anywhere, le labels included
    list(text_string_to_metric_families(text))  # prometheus_client's parser accepts it
    return text


def metrics_port(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.app.metrics_port}/metrics"


def http_port(server: RunningServer) -> str:
    return f"http://{server.http_url}/metrics"


def families(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def infer_simple(client: httpclient.InferenceServerClient, batch: int) -> None:
    data = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    inputs = [httpclient.InferInput(n, [batch, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), data * 2)


def wait_for(url: str, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = scrape(url)
        if needle in text:
            return text
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never appeared at {url}")


def test_both_endpoints_count_real_traffic(server_factory: Factory) -> None:
    server = server_factory(model_repositories=(EXAMPLES,), metrics_interval_ms=20)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for batch in (1, 1, 1, 1, 1, 3, 3):  # one at a time: 7 requests, 7 batches, 11 items
            infer_simple(client, batch)
        stats = client.get_inference_statistics("simple")["model_stats"][0]
    finally:
        client.close()

    text = wait_for(metrics_port(server), "nv_cpu_memory_total_bytes ")
    on_http = scrape(http_port(server))
    assert families(on_http) == families(text)
    for found in (values(text), values(on_http)):
        assert found["nv_inference_request_success" + SIMPLE] == 7
        assert found["nv_inference_count" + SIMPLE] == 11
        assert found["nv_inference_exec_count" + SIMPLE] == 7
        for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
            labels = f'{{model="simple",reason="{reason}",version="1"}}'
            assert found["nv_inference_request_failure" + labels] == 0
        # Triton's µs counters are the statistics extension's ns totals.
        inference = stats["inference_stats"]
        for family, key in [
            ("nv_inference_request_duration_us", "success"),
            ("nv_inference_queue_duration_us", "queue"),
            ("nv_inference_compute_input_duration_us", "compute_input"),
            ("nv_inference_compute_infer_duration_us", "compute_infer"),
            ("nv_inference_compute_output_duration_us", "compute_output"),
        ]:
            assert found[family + SIMPLE] == int(inference[key]["ns"]) // 1000
        # Every request is in each latency histogram; batch sizes 1 x5 and 3 x2.
        for histogram in ("request", "queue", "compute"):
            name = f"inferd_{histogram}_duration_seconds"
            assert found[name + "_count" + SIMPLE] == 7
            assert found[name + '_bucket{model="simple",version="1",le="+Inf"}'] == 7
        request_seconds = found["inferd_request_duration_seconds_sum" + SIMPLE]
        assert request_seconds == pytest.approx(int(inference["success"]["ns"]) / 1e9)
        bucket = 'inferd_batch_size_bucket{model="simple",version="1",le="%s"}'
        assert (found[bucket % "1"], found[bucket % "2"], found[bucket % "4"]) == (5, 5, 7)
        assert found["inferd_batch_size_sum" + SIMPLE] == 11
        # Idle now: nothing queued, nothing executing; busy time was spent in the batches.
        assert found["nv_inference_pending_request_count" + SIMPLE] == 0
        assert found["inferd_queue_depth" + SIMPLE] == 0
        assert found["inferd_inflight_requests" + SIMPLE] == 0
        assert found["inferd_instance_busy_ratio" + SIMPLE] == 0
        assert found["inferd_instances" + SIMPLE] == 1
        assert 0 < found["inferd_instance_busy_seconds_total" + SIMPLE] <= request_seconds
        # Models without traffic are there with zeros, so rate() works from the start.
        assert found['nv_inference_request_success{model="digits",version="1"}'] == 0
        assert found["nv_cpu_memory_total_bytes"] >= found["nv_cpu_memory_used_bytes"] > 0
        # Triton's default budget; only GPU instances' staging buffers use it.
        assert found["nv_pinned_memory_pool_total_bytes"] == 268435456
        assert found["nv_pinned_memory_pool_used_bytes"] == 0
        assert 0 <= found["nv_cpu_utilization"] <= 1
    assert families(text) >= TRITON_MODEL_FAMILIES
    assert '{model="simple",version="1",le="0.0001"}' in text  # 100 µs, in seconds


def test_backend_failures_are_counted_by_reason(tmp_path: Path, server_factory: Factory) -> None:
    write_model(tmp_path, "reshape", reshape_model(), 'backend: "onnxruntime"\nmax_batch_size: 4')
    server = server_factory(model_repositories=(tmp_path,))
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 3], "FP32")  # 3 values: cannot reshape to 4
        tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
        with pytest.raises(httpclient.InferenceServerException):
            client.infer("reshape", [tensor])
    finally:
        client.close()
    found = values(scrape(metrics_port(server)))
    labels = '{model="reshape",reason="%s",version="1"}'
    assert found["nv_inference_request_failure" + labels % "BACKEND"] == 1
    assert found["nv_inference_request_failure" + labels % "REJECTED"] == 0
    assert found['nv_inference_request_success{model="reshape",version="1"}'] == 0
    assert found['inferd_request_duration_seconds_count{model="reshape",version="1"}'] == 1


def test_only_loaded_models_have_series(tmp_path: Path, server_factory: Factory) -> None:
    write_model(tmp_path, "good", identity_model(shape=("batch", "n")), IDENTITY_CONFIG)
    write_model(tmp_path, "broken", identity_model(), IDENTITY_CONFIG + "no_such_field: 1\n")
    server = server_factory(model_repositories=(tmp_path,))
    text = scrape(metrics_port(server))
    assert 'model="good"' in text
    assert 'model="broken"' not in text  # failed to load: no series, not zeros

    # Unloading every model removes their series instead of leaving them stale.
    repository = server.app._repository
    assert repository is not None
    server.call(repository.close())
    after = scrape(http_port(server))
    assert 'model="' not in after
    assert not families(after) & TRITON_MODEL_FAMILIES


def test_switches_turn_families_and_endpoints_off(server_factory: Factory) -> None:
    quiet = server_factory(
        model_repositories=(EXAMPLES,), allow_cpu_metrics=False, allow_gpu_metrics=False
    )
    names = families(scrape(metrics_port(quiet)))
    assert names >= TRITON_MODEL_FAMILIES
    assert not {n for n in names if n.startswith(("nv_cpu_", "nv_gpu_", "nv_energy"))}

    off = server_factory(model_repositories=(EXAMPLES,), allow_metrics=False)
    assert off.app.metrics_port == 0
    assert httpx.get(http_port(off)).status_code == 404


def test_the_metrics_port_serves_only_metrics(server_factory: Factory) -> None:
    server = server_factory(model_repositories=(EXAMPLES,), metrics_address="127.0.0.1")
    base = f"http://127.0.0.1:{server.app.metrics_port}"
    assert httpx.get(base + "/v2/health/ready").status_code == 404
    assert httpx.post(base + "/metrics").status_code == 405
    assert httpx.get(base + "/metrics").status_code == 200


def test_the_metrics_port_answers_on_the_path_it_is_given(server_factory: Factory) -> None:
    """MLServer's metrics_endpoint: the metrics port's one path (the HTTP port keeps /metrics)."""
    server = server_factory(model_repositories=(EXAMPLES,), metrics_path="/prometheus")
    base = f"http://127.0.0.1:{server.app.metrics_port}"
    assert "nv_inference_count" in httpx.get(base + "/prometheus").text
    assert httpx.get(base + "/metrics").status_code == 404
    assert httpx.get(http_port(server)).status_code == 200


# ---- the dashboard and the autoscaling examples --------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_KEYWORDS |= {"and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if match.group() in PROMQL_KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue  # a keyword or a function call
        names.add(match.group())
    return names


def exported_names(server: RunningServer) -> set[str]:
    """Every sample name inferd can export: a server's scrape, plus the GPU families as a
    server with GPUs (here: the fake NVML) renders them."""
    gpu = SystemMetrics(1.0, gpu=GpuSampler(FakeNvml([FakeGpu("GPU-0")])))
    gpu.sample()
    texts = [scrape(metrics_port(server)), MetricsExporter(list, gpu).render().decode()]
    return {line.split("{")[0].split(" ")[0] for t in texts for line in t.splitlines() if line}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    queries = [t["expr"] for p in panels for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["query"]["query"])
            assert match, variable["query"]
            queries.append(match.group(1))
    return queries


def autoscaling_queries() -> list[str]:
    adapter = yaml.safe_load((MONITORING / "prometheus-adapter-rules.yaml").read_text())
    queries = []
    for rule in yaml.safe_load(adapter["data"]["config.yaml"])["rules"]:
        series = rule["seriesQuery"].split("{")[0]
        query = rule["metricsQuery"].replace("<<.Series>>", series)
        queries += [rule["seriesQuery"], query.replace("<<.LabelMatchers>>", "")]
    scaled = yaml.safe_load((MONITORING / "keda-scaledobject.yaml").read_text())
    queries += [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    return [q.replace("<<.GroupBy>>", "pod") for q in queries]


def test_dashboard_and_autoscaling_queries_use_only_exported_metrics(
    examples_server: RunningServer,
) -> None:
    exported = exported_names(examples_server)
    dashboard = dashboard_queries()
    assert any("histogram_quantile" in q for q in dashboard)
    used: set[str] = set()
    for query in dashboard + autoscaling_queries():
        names = metric_names(query)
        assert names, f"no metric found in {query!r}"
        assert names <= exported, f"{query!r} uses {sorted(names - exported)}"
        used |= names
    # The dashboard shows throughput, latency, queue depth, batch size and GPU utilization.
    for name in (
        "nv_inference_request_success",
        "inferd_request_duration_seconds_bucket",
        "inferd_queue_depth",
        "inferd_batch_size_bucket",
        "nv_gpu_utilization",
    ):
        assert name in used


def test_the_name_extractor_sees_through_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (model, le) "
        '(rate(a_bucket{model=~"$m"}[$__rate_interval])))'
        " / on (pod) group_left sum without (x) (b) and c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
