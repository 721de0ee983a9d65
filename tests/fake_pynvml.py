"""A fake of the `pynvml` module (nvidia-ml-py) for machines without a GPU: the calls GPU
metrics make, answered from FakeGpu objects held in memory, with NVML's units (percent, bytes,
milliwatts, millijoules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError(Exception):
    """Stands for pynvml.NVMLError and its subclasses (NotSupported, LibraryNotFound, ...)."""


@dataclass
class FakeGpu:
    uuid: str
    utilization_percent: int = 0
    memory_total: int = 80 * 2**30
    memory_used: int = 0
    power_mw: int = 0
    power_limit_mw: int = 700_000
    energy_mj: int = 0
    failing: set[str] = field(default_factory=set)  # NVML function names that raise


class FakeNvml:
    """Pass an instance where the pynvml module is expected."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu], init_error: str | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialised = False

    def _check(self, gpu: FakeGpu, call: str) -> None:
        if not self.initialised:
            raise NVMLError("Uninitialized")
        if call in gpu.failing:
            raise NVMLError("Not Supported")

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        if not self.initialised:
            raise NVMLError("Uninitialized")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialised:
            raise NVMLError("Uninitialized")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        gpu = self.gpus[index]
        self._check(gpu, "nvmlDeviceGetHandleByIndex")
        return gpu

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        self._check(handle, "nvmlDeviceGetUUID")
        return handle.uuid

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> SimpleNamespace:
        self._check(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=handle.utilization_percent, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:
        self._check(handle, "nvmlDeviceGetMemoryInfo")
        free = handle.memory_total - handle.memory_used
        return SimpleNamespace(total=handle.memory_total, used=handle.memory_used, free=free)

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        self._check(handle, "nvmlDeviceGetPowerUsage")
        return handle.power_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeGpu) -> int:
        self._check(handle, "nvmlDeviceGetPowerManagementLimit")
        return handle.power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        self._check(handle, "nvmlDeviceGetTotalEnergyConsumption")
        return handle.energy_mj
