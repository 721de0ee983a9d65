"""GPU detection: the CUDA driver's answers (a fake driver stands in for the hardware)."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.backends.gpu import CudaDriverError, GpuInfo, LibCuda, detect_gpus


class FakeDriver:
    def __init__(self, count: int = 2, version: int = 13000, init_error: str = "") -> None:
        self.count, self.version, self.init_error = count, version, init_error
        self.initialised = False

    def driver_version(self) -> int:
        return self.version

    def init(self) -> None:
        if self.init_error:
            raise CudaDriverError(self.init_error)
        self.initialised = True

    def device_count(self) -> int:
        assert self.initialised, "cuDeviceGetCount before cuInit"
        return self.count

    def compute_capability(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.count:
            raise CudaDriverError("cuDeviceGet failed: CUDA_ERROR_INVALID_DEVICE")
        return (8, 0) if index == 0 else (9, 0)


def test_counts_the_gpus_the_driver_shows() -> None:
    found = detect_gpus({}, lambda: FakeDriver(count=2, version=13020))
    assert found == GpuInfo(count=2, reason="", driver_cuda=(13, 2), capabilities=("8.0", "9.0"))
    assert found.describe() == "2 GPU(s) (driver supports CUDA 13.2)"


@pytest.mark.parametrize("visible", ["", "-1", " "])
def test_cuda_visible_devices_can_hide_every_gpu(visible: str) -> None:
    def never() -> FakeDriver:
        raise AssertionError("the driver must not be opened")

    found = detect_gpus({"CUDA_VISIBLE_DEVICES": visible}, never)
    assert found.count == 0
    assert "CUDA_VISIBLE_DEVICES" in found.reason and found.reason.startswith("no GPU is available")


def test_no_driver_installed() -> None:
    def missing() -> FakeDriver:
        raise OSError("libcuda.so.1: cannot open shared object file")

    found = detect_gpus({}, missing)
    assert found.count == 0 and "libcuda.so.1" in found.reason


def test_driver_failure_keeps_the_driver_version_and_the_error() -> None:
    found = detect_gpus(
        {}, lambda: FakeDriver(init_error="cuInit failed: CUDA_ERROR_NO_DEVICE no device")
    )
    assert found.count == 0 and found.driver_cuda == (13, 0)
    assert "CUDA_ERROR_NO_DEVICE" in found.reason


def test_zero_devices() -> None:
    found = detect_gpus({}, lambda: FakeDriver(count=0))
    assert found.count == 0 and "0 devices" in found.reason


def test_this_machine_has_no_driver_and_detection_says_so() -> None:
    """The real probe (libcuda through ctypes) on this GPU-less machine."""
    found = detect_gpus({})
    if found.count:
        pytest.skip("this machine has a GPU")
    assert found.reason.startswith("no GPU is available")


class FakeLibcuda:
    """Stands for the ctypes CDLL: C functions that fill their pointer arguments."""

    def __init__(self, init_code: int) -> None:
        self.init_code = init_code

    def cuDriverGetVersion(self, out: Any) -> int:
        out._obj.value = 12040
        return 0

    def cuInit(self, flags: int) -> int:
        return self.init_code

    def cuDeviceGetCount(self, out: Any) -> int:
        out._obj.value = 1
        return 0

    def cuGetErrorName(self, code: int, out: Any) -> int:
        out._obj.value = b"CUDA_ERROR_INSUFFICIENT_DRIVER"
        return 0

    def cuGetErrorString(self, code: int, out: Any) -> int:
        out._obj.value = b"CUDA driver version is insufficient for CUDA runtime version"
        return 0


def test_libcuda_reads_the_driver_and_names_its_errors() -> None:
    ok = LibCuda(FakeLibcuda(0))  # type: ignore[arg-type]
    assert ok.driver_version() == 12040
    ok.init()
    assert ok.device_count() == 1
    failing = LibCuda(FakeLibcuda(35))  # type: ignore[arg-type]
    with pytest.raises(CudaDriverError, match="cuInit failed: CUDA_ERROR_INSUFFICIENT_DRIVER"):
        failing.init()
