"""Which GPUs this process can use, found without importing any framework.

The probe asks the CUDA driver itself (libcuda through ctypes): it honours CUDA_VISIBLE_DEVICES
as every framework will, needs no Python package, and on a machine without the NVIDIA driver
costs one failed dlopen. NVML is not used because it ignores CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

_CUDA_SUCCESS = 0
# CUdevice_attribute: CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR and _MINOR.
_CC_MAJOR, _CC_MINOR = 75, 76


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What GPU detection found: a count, or the reason there is none."""

    count: int = 0
    reason: str = "no GPU is available"  # why count is 0, for load failures and status
    driver_cuda: tuple[int, int] | None = None  # highest CUDA version the driver supports
    # Each GPU's compute capability, "major.minor" as Triton's cc_model_filenames keys it;
    # () when the driver could not tell.
    capabilities: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.count == 0:
            return self.reason
        if self.driver_cuda is None:
            return f"{self.count} GPU(s)"
        major, minor = self.driver_cuda
        return f"{self.count} GPU(s) (driver supports CUDA {major}.{minor})"


class CudaDriverError(Exception):
    """A CUDA driver call failed; the message is the driver's own error name and text."""


class CudaDriver(Protocol):
    """The driver calls detection needs (a fake stands in for tests)."""

    def driver_version(self) -> int: ...
    def init(self) -> None: ...
    def device_count(self) -> int: ...
    def compute_capability(self, index: int) -> tuple[int, int]: ...


class LibCuda:
    """The CUDA driver API through ctypes: cuDriverGetVersion, cuInit, cuDeviceGetCount."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib

    def driver_version(self) -> int:
        version = ctypes.c_int(0)
        self._check(self._lib.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
        return version.value

    def init(self) -> None:
        self._check(self._lib.cuInit(0), "cuInit")

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._check(self._lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        return count.value

    def compute_capability(self, index: int) -> tuple[int, int]:
        device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        self._check(self._lib.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
        for value, attribute in ((major, _CC_MAJOR), (minor, _CC_MINOR)):
            code = self._lib.cuDeviceGetAttribute(ctypes.byref(value), attribute, device)
            self._check(code, "cuDeviceGetAttribute")
        return major.value, minor.value

    def address_range(self, pointer: int) -> tuple[int, int]:
        """The (base, size) of the device allocation holding `pointer`, in the calling
        thread's current context."""
        base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
        code = self._lib.cuMemGetAddressRange_v2(
            ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(pointer)
        )
        self._check(code, "cuMemGetAddressRange")
        return base.value, size.value

    def _check(self, code: int, call: str) -> None:
        if code == _CUDA_SUCCESS:
            return
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        self._lib.cuGetErrorName(code, ctypes.byref(name))
        self._lib.cuGetErrorString(code, ctypes.byref(text))
        described = " ".join(
            part.decode(errors="replace") for part in (name.value, text.value) if part
        )
        raise CudaDriverError(f"{call} failed: {described or f'error {code}'}")


def open_libcuda() -> CudaDriver:
    """The installed driver; OSError when libcuda.so.1 (the NVIDIA driver) is not installed."""
    return LibCuda(ctypes.CDLL("libcuda.so.1"))


def detect_gpus(
    environ: Mapping[str, str] | None = None,
    open_driver: Callable[[], CudaDriver] = open_libcuda,
) -> GpuInfo:
    """Count the GPUs CUDA shows this process; never raises."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return GpuInfo(reason=f"no GPU is available: CUDA_VISIBLE_DEVICES is '{visible}'")
    try:
        driver = open_driver()
    except OSError:
        return GpuInfo(reason="no GPU is available: the NVIDIA driver (libcuda.so.1) is not found")
    version: tuple[int, int] | None = None
    try:
        raw = driver.driver_version()
        version = (raw // 1000, raw % 1000 // 10)
        driver.init()
        count = driver.device_count()
    except CudaDriverError as exc:
        return GpuInfo(reason=f"no GPU is available: {exc}", driver_cuda=version)
    if count == 0:
        return GpuInfo(reason="no GPU is available: the CUDA driver reports 0 devices")
    try:
        capabilities = tuple(
            "{}.{}".format(*driver.compute_capability(index)) for index in range(count)
        )
    except CudaDriverError:  # only cc_model_filenames needs them
        capabilities = ()
    return GpuInfo(count=count, reason="", driver_cuda=version, capabilities=capabilities)
