"""Metrics without a server: the text exposition, saturation gauges over a real scheduler, CPU
readings from /proc-shaped files, GPU readings through a fake NVML, and the k8s examples."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from inferd.backends.base import ModelInstance
from inferd.batching.policy import BatchPolicy
from inferd.batching.scheduler import RequestOptions, Scheduler, SchedulerConfig
from inferd.repository.manager import ModelState, ModelVersion
from inferd.server.cli import build_parser, settings_from_args
from inferd.server.metrics import MetricsExporter
from inferd.server.system_metrics import CpuSampler, GpuSampler, SystemMetrics
from tests.conftest import REPO_ROOT
from tests.fake_pynvml import FakeGpu, FakeNvml
from tests.k8s_validation import schema_dir, validate_files

MONITORING = REPO_ROOT / "k8s" / "monitoring"
# Value column of a sample line: plain decimal only (perf_analyzer parses `\d+\.?\d*`).
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (-?\d+(?:\.\d+)?)$")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def values(text: str) -> dict[str, float]:
    """`name{labels}` -> value, checking every sample line is plain decimal on the way."""
    found: dict[str, float] = {}
    for line in lines(text):
        match = SAMPLE_LINE.match(line)
        assert match, f"not a plain-decimal sample line: {line!r}"
        found[line.rsplit(" ", 1)[0]] = float(match.group(3))
    return found


class Fixed:
    """A collector with the given families (test data for the renderer)."""

    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


# ---- text exposition -----------------------------------------------------------------------


def test_numbers_are_plain_decimal_and_parse_back_exactly() -> None:
    tricky = [1e-05, 1.5e-7, 0.1 + 0.2, 85520809984.0, 1e22, 123456789.125, 0.0, -2.5, 7]
    family = GaugeMetricFamily("g", "tricky values", labels=["i"])
    for i, value in enumerate(tricky):
        family.add_metric([str(i)], value)
    text = MetricsExporter(list, Fixed(family)).render().decode()
    assert not re.search(r"\d[eE][+-]?\d", text)
    assert 'g{i="0"} 0.00001' in text
    assert 'g{i="3"} 85520809984' in text
    assert 'g{i="4"} 10000000000000000000000' in text
    values(text)
    (parsed,) = text_string_to_metric_families(text)
    assert [s.value for s in parsed.samples] == [float(v) for v in tricky]


def test_label_values_and_help_are_escaped() -> None:
    family = Metric("m", "help with \\ and\nnewline", "gauge")
    family.add_sample("m", {"model": 'a"b\\c\nd'}, 1)
    text = MetricsExporter(list, Fixed(family), Fixed(Metric("empty", "no samples", "gauge")))
    rendered = text.render().decode()
    assert "# HELP m help with \\\\ and\\nnewline" in rendered
    assert 'm{model="a\\"b\\\\c\\nd"} 1' in rendered
    assert "empty" not in rendered  # a family without samples is left out
    (parsed,) = text_string_to_metric_families(rendered)
    assert parsed.samples[0].labels == {"model": 'a"b\\c\nd'}


def test_no_models_and_no_system_sources_render_nothing() -> None:
    assert MetricsExporter(list).render() == b""


# ---- saturation gauges over a real scheduler -----------------------------------------------


class GatedInstance(ModelInstance):
    """An identity instance whose executions wait for the test to open the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.release()
        self.gate.wait(10)
        return {"y": inputs["x"]}


async def test_saturation_gauges_follow_the_scheduler() -> None:
    instances = [GatedInstance(), GatedInstance()]
    config = SchedulerConfig(BatchPolicy(max_batch_size=0))
    scheduler = Scheduler("m", config, instances, asyncio.get_running_loop())
    version = ModelVersion("m", 3, ModelState.READY, scheduler=scheduler)
    exporter = MetricsExporter(lambda: [version])
    x = np.ones((1, 1), np.float32)
    futures = [scheduler.submit({"x": x}, 1, None, time.monotonic_ns()) for _ in range(3)]
    for instance in instances:
        assert await asyncio.to_thread(instance.entered.acquire, True, 5)

    busy = values(exporter.render().decode())
    labels = '{model="m",version="3"}'
    assert busy["inferd_queue_depth" + labels] == 1
    assert busy["nv_inference_pending_request_count" + labels] == 1
    assert busy["inferd_instances" + labels] == 2
    assert busy["inferd_instance_busy_ratio" + labels] == 1
    assert busy["inferd_inflight_requests" + labels] == 3  # 1 queued + 2 executing

    for instance in instances:
        instance.gate.set()
    await asyncio.gather(*futures)
    idle = values(exporter.render().decode())
    assert idle["inferd_queue_depth" + labels] == idle["inferd_inflight_requests" + labels] == 0
    assert idle["inferd_instance_busy_ratio" + labels] == 0
    assert idle["nv_inference_request_success" + labels] == 3
    assert idle["nv_inference_exec_count" + labels] == 3
    # The busy-seconds counter covers the gated executions (each waited for the gate).
    assert idle["inferd_instance_busy_seconds_total" + labels] > 0
    await scheduler.close()


async def test_latency_objective_answers_are_counted_met_or_missed() -> None:
    instance = GatedInstance()
    config = SchedulerConfig(BatchPolicy(max_batch_size=0), latency_slo_ns=10_000_000_000)
    scheduler = Scheduler("m", config, [instance], asyncio.get_running_loop())
    version = ModelVersion("m", 1, ModelState.READY, scheduler=scheduler)
    exporter = MetricsExporter(lambda: [version])
    x = np.ones((1, 1), np.float32)
    labels = 'model="m",version="1"'
    margin = "inferd_latency_margin_ratio{" + labels + "}"
    assert values(exporter.render().decode())[margin] == 0
    late = scheduler.submit(
        {"x": x}, 1, None, time.monotonic_ns(), RequestOptions(latency_slo_ns=50_000_000)
    )
    on_time = scheduler.submit({"x": x}, 1, None, time.monotonic_ns())
    assert await asyncio.to_thread(instance.entered.acquire, True, 5)
    await asyncio.sleep(0.1)  # the first request's 50 ms objective passes while it executes
    instance.gate.set()
    await asyncio.gather(on_time, late)
    found = values(exporter.render().decode())
    answers = "inferd_latency_objective_answers_total{" + labels + ',outcome="%s"}'
    assert found[answers % "met"] == 1
    assert found[answers % "missed"] == 1
    assert found[margin] > 0  # one miss widened it
    await scheduler.close()


# ---- CPU -----------------------------------------------------------------------------------


def write_proc(proc: Path, user: int, idle: int, available_kb: int) -> None:
    proc.mkdir(exist_ok=True)
    # user nice system idle iowait irq softirq steal guest guest_nice
    (proc / "stat").write_text(
        f"cpu  {user} 0 0 {idle} 0 0 0 0 50 0\ncpu0 {user} 0 0 {idle} 0 0 0 0 50 0\nintr 1\n"
    )
    (proc / "meminfo").write_text(
        f"MemTotal:       1000 kB\nMemFree:          10 kB\nMemAvailable:   {available_kb} kB\n"
    )


def test_cpu_utilization_is_measured_between_samples(tmp_path: Path) -> None:
    write_proc(tmp_path, user=100, idle=900, available_kb=750)
    sampler = CpuSampler(tmp_path)
    first = sampler.sample()
    assert first.utilization == 0.0  # no interval yet, as in Triton
    assert (first.memory_total_bytes, first.memory_used_bytes) == (1000 * 1024, 250 * 1024)
    write_proc(tmp_path, user=400, idle=1000, available_kb=500)  # 300 busy of 400 jiffies
    second = sampler.sample()
    assert second.utilization == 0.75
    assert second.memory_used_bytes == 500 * 1024


def test_unreadable_proc_removes_cpu_families_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    system = SystemMetrics(1.0, cpu=CpuSampler(tmp_path / "missing"))
    with caplog.at_level(logging.INFO, "inferd.server.system_metrics"):
        system.sample()
        system.sample()
    assert list(system.collect()) == []
    assert len([r for r in caplog.records if "CPU metrics are off" in r.message]) == 1


# ---- GPU through the fake NVML -------------------------------------------------------------


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(
                "GPU-aaaa",
                utilization_percent=37,
                memory_total=85_520_809_984,
                memory_used=1_073_741_824,
                power_mw=123_456,
                power_limit_mw=700_000,
                energy_mj=5_000_000,
            ),
            FakeGpu("GPU-bbbb", utilization_percent=100, memory_used=0, energy_mj=10),
        ]
    )


def test_gpu_readings_have_tritons_units() -> None:
    nvml = two_gpus()
    sampler = GpuSampler(nvml)
    first, second = sampler.sample()
    assert first.uuid == "GPU-aaaa"
    assert first.utilization == 0.37
    assert (first.memory_total_bytes, first.memory_used_bytes) == (85_520_809_984, 1_073_741_824)
    assert (first.power_usage_watts, first.power_limit_watts) == (123.456, 700.0)
    assert first.energy_joules == 0  # counted from the sampler's first reading
    assert second.utilization == 1.0
    nvml.gpus[0].energy_mj += 2_500
    assert sampler.sample()[0].energy_joules == 2.5
    sampler.close()
    assert not nvml.initialised


def test_several_gpus_are_exported_with_one_gpu_uuid_label() -> None:
    system = SystemMetrics(1.0, gpu=GpuSampler(two_gpus()))
    system.sample()
    text = MetricsExporter(list, system).render().decode()
    found = values(text)
    assert found['nv_gpu_utilization{gpu_uuid="GPU-aaaa"}'] == 0.37
    assert found['nv_gpu_utilization{gpu_uuid="GPU-bbbb"}'] == 1
    assert found['nv_gpu_memory_total_bytes{gpu_uuid="GPU-aaaa"}'] == 85_520_809_984
    assert found['nv_gpu_power_usage{gpu_uuid="GPU-aaaa"}'] == 123.456
    assert found['nv_gpu_power_limit{gpu_uuid="GPU-bbbb"}'] == 700
    assert found['nv_energy_consumption{gpu_uuid="GPU-bbbb"}'] == 0
    assert "# TYPE nv_energy_consumption counter" in text
    assert "# TYPE nv_gpu_utilization gauge" in text
    # perf_analyzer's own pattern reads the whole value of each of its four families.
    perf_analyzer = re.compile(r"\{gpu_uuid\=\"([^\"]+)\"\} (\d+\.?\d*)")
    for line in lines(text):
        match = perf_analyzer.search(line)
        assert match and line.endswith(" " + match.group(2))
    assert {f.name for f in text_string_to_metric_families(text)} == {
        "nv_gpu_utilization",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
    }


def test_a_field_nvml_cannot_read_is_left_out_for_that_gpu_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = two_gpus()
    nvml.gpus[1].failing = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption"}
    system = SystemMetrics(1.0, gpu=GpuSampler(nvml))
    with caplog.at_level(logging.WARNING, "inferd.server.system_metrics"):
        system.sample()
        system.sample()
    found = values(MetricsExporter(list, system).render().decode())
    assert 'nv_gpu_power_usage{gpu_uuid="GPU-aaaa"}' in found
    assert 'nv_gpu_power_usage{gpu_uuid="GPU-bbbb"}' not in found
    assert 'nv_energy_consumption{gpu_uuid="GPU-bbbb"}' not in found
    assert found['nv_gpu_utilization{gpu_uuid="GPU-bbbb"}'] == 1
    assert len(caplog.records) == 2  # one per failing field, not one per sample


@pytest.mark.parametrize(
    "nvml",
    [FakeNvml([], init_error="NVML Shared Library Not Found"), FakeNvml([])],
    ids=["nvml-fails", "no-gpu"],
)
def test_unusable_nvml_means_no_gpu_families_logged_once(
    nvml: FakeNvml, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_proc(tmp_path, user=1, idle=1, available_kb=1)
    system = SystemMetrics(1.0, cpu=CpuSampler(tmp_path), gpu=GpuSampler(nvml))
    with caplog.at_level(logging.INFO, "inferd.server.system_metrics"):
        system.sample()
        system.sample()
    names = {f.name for f in system.collect()}
    assert names == {"nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"}
    assert len([r for r in caplog.records if "GPU metrics are off" in r.message]) == 1


def test_the_sampling_thread_refreshes_and_stops(tmp_path: Path) -> None:
    write_proc(tmp_path, user=100, idle=900, available_kb=750)
    nvml = two_gpus()
    system = SystemMetrics(0.01, cpu=CpuSampler(tmp_path), gpu=GpuSampler(nvml))
    system.start()
    try:
        nvml.gpus[0].utilization_percent = 80
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = MetricsExporter(list, system).render().decode()
            if 'nv_gpu_utilization{gpu_uuid="GPU-aaaa"} 0.8' in text:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the sampler did not pick up the new reading")
    finally:
        system.stop()
    assert not nvml.initialised  # NVML shut down with the sampler


# ---- settings ------------------------------------------------------------------------------


def test_metrics_flags_and_variables() -> None:
    parser = build_parser({"INFERD_ALLOW_CPU_METRICS": "false"})
    settings = settings_from_args(
        parser.parse_args(
            [
                "serve",
                "--allow-gpu-metrics=false",
                "--metrics-address=127.0.0.1",
                "--metrics-interval-ms=500",
                "--metrics-port=9102",
            ]
        )
    )
    assert settings.allow_metrics is True
    assert (settings.allow_gpu_metrics, settings.allow_cpu_metrics) == (False, False)
    assert (settings.metrics_address, settings.metrics_port) == ("127.0.0.1", 9102)
    assert settings.metrics_interval_ms == 500
    defaults = settings_from_args(build_parser({}).parse_args(["serve"]))
    assert (defaults.metrics_interval_ms, defaults.metrics_address) == (2000, "")
    assert defaults.allow_gpu_metrics and defaults.allow_cpu_metrics


# ---- k8s/monitoring ------------------------------------------------------------------------


def test_monitoring_manifests_are_valid_kubernetes_objects() -> None:
    # Every YAML file here is a Kubernetes object (README.md and the Grafana JSON are not):
    # CRD kinds against their CRD schema, built-in kinds through kubernetes-validate.
    assert schema_dir().is_dir(), f"CRD schemas not found at {schema_dir()}: set K8S_SCHEMA_DIR"
    files = sorted(MONITORING.glob("*.yaml"))
    assert {f.name for f in files} >= {"podmonitor.yaml", "keda-scaledobject.yaml", "hpa.yaml"}
    assert validate_files(files) == []


def test_hpa_targets_the_metrics_the_adapter_defines() -> None:
    hpa = yaml.safe_load((MONITORING / "hpa.yaml").read_text())
    adapter = yaml.safe_load((MONITORING / "prometheus-adapter-rules.yaml").read_text())
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    defined = {rule["name"]["as"] for rule in rules}
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    targeted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert targeted <= defined
    assert hpa["spec"]["minReplicas"] >= 1  # an HPA cannot scale to zero


def test_a_histogram_takes_one_value_for_several_requests() -> None:
    from inferd.batching.stats import Histogram

    histogram = Histogram((1.0, 10.0))
    histogram.observe(5.0, 3)  # one batch's compute time, for each of its 3 requests
    histogram.observe(0.5)
    assert histogram.counts == [1, 3, 0]
    assert histogram.total == 15.5
