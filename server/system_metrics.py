"""Server-wide gauges (Triton's nv_cpu_* and nv_gpu_* families), sampled on a daemon thread.

CPU readings come from /proc, GPU readings from NVML (the `pynvml` module of nvidia-ml-py, an
optional dependency). A missing or failing source only removes its families: it is logged once
and never affects serving. Scrapes read the latest snapshot and never wait for a sample.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from inferd.server.settings import Settings

log = logging.getLogger(__name__)


class Nvml(Protocol):
    """The part of the pynvml module that GPU sampling uses (a fake stands in for tests)."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int: ...


def load_nvml() -> Nvml | None:
    """The pynvml module, imported only when GPU metrics are wanted; None if not installed."""
    try:
        import pynvml
    except ImportError:
        log.info("GPU metrics are off: nvidia-ml-py is not installed (pip install 'inferd[gpu]')")
        return None
    nvml: Nvml = pynvml
    return nvml


# ---- CPU -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuReading:
    utilization: float  # 0..1 across all cores, over the last sampling interval
    memory_total_bytes: int
    memory_used_bytes: int


class CpuSampler:
    """Utilization between consecutive samples (0 on the first, as in Triton) and memory."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._last: tuple[int, int] | None = None  # (busy, total) jiffies at the last sample

    def sample(self) -> CpuReading:
        busy, total = _cpu_jiffies((self._proc / "stat").read_text())
        utilization = 0.0
        if self._last is not None and total > self._last[1]:
            utilization = (busy - self._last[0]) / (total - self._last[1])
        self._last = (busy, total)
        memory_total, memory_available = _meminfo((self._proc / "meminfo").read_text())
        return CpuReading(
            min(1.0, max(0.0, utilization)), memory_total, memory_total - memory_available
        )


def _cpu_jiffies(stat: str) -> tuple[int, int]:
    """(busy, total) from the aggregate `cpu` line; iowait counts as idle, guest time is
    already part of user time (Triton's accounting)."""
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("no aggregate 'cpu' line in /proc/stat")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def _meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes; 'used' is what is not available, as in Triton."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            values[key] = int(rest.split()[0]) * 1024  # the file says kB and means KiB
    return values["MemTotal"], values["MemAvailable"]


# ---- GPU -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU's readings; a field NVML could not read this time is None (series absent)."""

    uuid: str
    utilization: float | None = None  # 0..1
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    power_usage_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None  # since the sampler first read the GPU


class GpuSampler:
    """Reads every GPU that NVML shows. NVML is initialised on the first sample (on the
    sampling thread, so start-up never waits for the driver)."""

    def __init__(self, nvml: Nvml) -> None:
        self._nvml = nvml
        self._devices: list[tuple[str, Any]] | None = None  # (uuid, handle); None = not opened
        self._energy_start: dict[str, int] = {}  # mJ at the first reading, per GPU
        self._logged: set[tuple[str, str]] = set()  # (gpu, field) failures already logged

    def sample(self) -> tuple[GpuReading, ...]:
        if self._devices is None:
            self._devices = self._open()
        return tuple(self._read(uuid, handle) for uuid, handle in self._devices)

    def close(self) -> None:
        if self._devices:
            self._shutdown()
        self._devices = None

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown failed: %s", exc)

    def _open(self) -> list[tuple[str, Any]]:
        nvml = self._nvml
        try:
            nvml.nvmlInit()
            devices = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                devices.append((_text(nvml.nvmlDeviceGetUUID(handle)), handle))
        except Exception as exc:
            log.info("GPU metrics are off: NVML is not usable (%s: %s)", type(exc).__name__, exc)
            self._shutdown()
            return []
        if not devices:
            log.info("GPU metrics are off: NVML found no GPU")
            self._shutdown()
        return devices

    def _read(self, uuid: str, handle: Any) -> GpuReading:
        nvml = self._nvml
        utilization = self._field(uuid, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._field(uuid, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        power = self._field(uuid, "power usage", nvml.nvmlDeviceGetPowerUsage, handle)
        limit = self._field(uuid, "power limit", nvml.nvmlDeviceGetPowerManagementLimit, handle)
        energy = self._field(uuid, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        if energy is not None:
            # NVML counts from driver load; Triton's counter starts with the server.
            start = self._energy_start.setdefault(uuid, energy)
            energy = (energy - start) / 1000
        return GpuReading(
            uuid=uuid,
            utilization=None if utilization is None else utilization.gpu / 100,
            memory_total_bytes=None if memory is None else int(memory.total),
            memory_used_bytes=None if memory is None else int(memory.used),
            power_usage_watts=None if power is None else power / 1000,
            power_limit_watts=None if limit is None else limit / 1000,
            energy_joules=energy,
        )

    def _field(self, uuid: str, name: str, call: Any, handle: Any) -> Any:
        try:
            return call(handle)
        except Exception as exc:  # e.g. NVMLError_NotSupported for power on some boards
            if (uuid, name) not in self._logged:
                self._logged.add((uuid, name))
                log.warning(
                    "GPU %s: cannot read %s from NVML (%s); series left out", uuid, name, exc
                )
            return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older pynvml returns bytes


# ---- sampling thread and collector ---------------------------------------------------------


class SystemMetrics:
    """A prometheus_client collector over the latest CPU and GPU readings, refreshed by a
    daemon thread every interval."""

    def __init__(
        self, interval_s: float, cpu: CpuSampler | None = None, gpu: GpuSampler | None = None
    ) -> None:
        self._interval_s = interval_s
        self._cpu_sampler = cpu
        self._gpu_sampler = gpu
        self._cpu: CpuReading | None = None
        self._gpus: tuple[GpuReading, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._cpu_sampler is None and self._gpu_sampler is None:
            return
        self._thread = threading.Thread(target=self._run, name="inferd-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Blocking (joins the thread): call it off the event loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._gpu_sampler is not None:
            self._gpu_sampler.close()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval_s):
                return

    def sample(self) -> None:
        """Take one reading of each source; the snapshot is replaced whole (no lock needed)."""
        if self._cpu_sampler is not None:
            try:
                self._cpu = self._cpu_sampler.sample()
            except (OSError, ValueError, KeyError, IndexError) as exc:
                log.info("CPU metrics are off: cannot read /proc (%s)", exc)
                self._cpu_sampler, self._cpu = None, None
        if self._gpu_sampler is not None:
            self._gpus = self._gpu_sampler.sample()

    def collect(self) -> Iterator[Metric]:
        cpu = self._cpu
        if cpu is not None:
            yield _gauge("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", cpu.utilization)
            yield _gauge(
                "nv_cpu_memory_total_bytes",
                "CPU total memory (RAM), in bytes",
                cpu.memory_total_bytes,
            )
            yield _gauge(
                "nv_cpu_memory_used_bytes",
                "CPU used memory (RAM), in bytes",
                cpu.memory_used_bytes,
            )
        gpus = self._gpus
        for name, doc, typ, attribute in _GPU_FAMILIES:
            family = Metric(name, doc, typ)
            for gpu in gpus:
                value = getattr(gpu, attribute)
                if value is not None:
                    family.add_sample(name, {"gpu_uuid": gpu.uuid}, value)
            if family.samples:
                yield family


_GPU_FAMILIES = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge", "utilization"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge", "memory_total_bytes"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge", "memory_used_bytes"),
    ("nv_gpu_power_usage", "GPU power usage in watts", "gauge", "power_usage_watts"),
    ("nv_gpu_power_limit", "GPU power management limit in watts", "gauge", "power_limit_watts"),
    (
        "nv_energy_consumption",
        "GPU energy consumption in joules since the server started",
        "counter",
        "energy_joules",
    ),
)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def system_metrics(settings: Settings) -> SystemMetrics:
    """The sources the settings allow; pynvml is imported here, only if GPU metrics are on."""
    cpu = CpuSampler() if settings.allow_cpu_metrics else None
    nvml = load_nvml() if settings.allow_gpu_metrics else None
    gpu = GpuSampler(nvml) if nvml is not None else None
    return SystemMetrics(settings.metrics_interval_ms / 1000, cpu, gpu)
