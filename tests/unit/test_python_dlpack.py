"""DLPack exchange of `pb_utils.Tensor`, as python models use it to hand tensors to PyTorch, JAX
or CuPy and back. numpy stands in for those libraries: it speaks the same protocol."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from inferd.backends import python_api as pb_utils
from inferd.backends.python_dlpack import DLDataType, DLDevice, DLTensor


def test_a_tensor_and_its_capsule_share_memory_both_ways() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    capsule = pb_utils.Tensor("x", array).to_dlpack()
    back = pb_utils.Tensor.from_dlpack("y", capsule)
    assert back.name() == "y"
    assert back.shape() == [2, 3] and back.triton_dtype() == 11
    assert np.shares_memory(back.as_numpy(), array)
    # A consumer that takes the tensor itself (torch.from_dlpack(tensor)) gets the same memory.
    seen = np.from_dlpack(pb_utils.Tensor("x", array))
    assert np.shares_memory(seen, array)
    assert pb_utils.Tensor("x", array).__dlpack_device__() == (1, 0)


def test_from_dlpack_takes_any_producer_of_the_protocol() -> None:
    out = pb_utils.Tensor.from_dlpack("out", np.array([[1, 2]], np.int64) * 3)
    assert out.as_numpy().tolist() == [[3, 6]] and out.triton_dtype() == 9
    flags = pb_utils.Tensor.from_dlpack("b", np.array([True, False]))
    assert flags.as_numpy().tolist() == [True, False] and flags.triton_dtype() == 1


def test_bfloat16_crosses_both_ways() -> None:
    # numpy cannot exchange bfloat16 itself; PyTorch models hand it over all the time.
    values = np.array([1.5, -2.0, 3.25], ml_dtypes.bfloat16)
    capsule = pb_utils.Tensor("h", values).to_dlpack()
    header = _header_of(capsule)
    assert (header.dtype.code, header.dtype.bits) == (4, 16)  # kDLBfloat
    back = pb_utils.Tensor.from_dlpack("h", capsule)
    assert back.as_numpy().dtype == ml_dtypes.bfloat16
    assert back.as_numpy().tolist() == [1.5, -2.0, 3.25]
    assert back.triton_dtype() == 14


def test_a_read_only_array_crosses_as_read_only_or_as_a_copy() -> None:
    array = np.frombuffer(b"\x01\x02\x03\x04", np.uint8)
    # A consumer that asks for a versioned capsule (numpy does) learns it is read-only.
    seen = np.from_dlpack(pb_utils.Tensor("r", array))
    assert np.shares_memory(seen, array) and not seen.flags.writeable
    # A plain capsule cannot say so: it holds a copy.
    copied = pb_utils.Tensor.from_dlpack("c", pb_utils.Tensor("r", array).to_dlpack())
    assert copied.as_numpy().tolist() == [1, 2, 3, 4]
    assert not np.shares_memory(copied.as_numpy(), array)


def test_a_producers_tensor_stays_writeable() -> None:
    # Taken through `__dlpack__` with a version, the producer's flags come along.
    made = pb_utils.Tensor.from_dlpack("w", np.zeros(3, np.float32))
    made.as_numpy()[0] = 1.0
    assert made.as_numpy().tolist() == [1.0, 0.0, 0.0]


REFUSED: dict[str, tuple[Any, str]] = {
    "strings": (
        lambda: pb_utils.Tensor("s", np.array([b"a"], np.object_)).to_dlpack(),
        "DLPack does not have support for string tensors.",
    ),
    "not a DLPack producer": (
        lambda: pb_utils.Tensor.from_dlpack("x", [1, 2]),
        "Tensor must be a DLPack capsule or have a `__dlpack__` attribute",
    ),
    "empty name": (
        lambda: pb_utils.Tensor.from_dlpack("", np.zeros(2)),
        "Tensor name cannot be an empty string.",
    ),
    "not C order": (
        lambda: pb_utils.Tensor.from_dlpack("t", np.zeros((2, 3)).T),
        "Only contiguous DLPack tensors that are stored in C-Order are supported.",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_cannot_cross_raises_tritons_model_exception(case: str) -> None:
    call, message = REFUSED[case]
    with pytest.raises(pb_utils.TritonModelException) as raised:
        call()
    assert message in raised.value.message()


def test_a_capsule_is_taken_once() -> None:
    capsule = pb_utils.Tensor("x", np.zeros(2)).to_dlpack()
    pb_utils.Tensor.from_dlpack("a", capsule)
    with pytest.raises(pb_utils.TritonModelException, match="already consumed"):
        pb_utils.Tensor.from_dlpack("b", capsule)


class _Crafted:
    """A DLManagedTensor made by hand, for devices and types no library here produces."""

    class Managed(ctypes.Structure):
        _fields_ = [("tensor", DLTensor), ("ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]

    def __init__(self, device_type: int, lanes: int = 1) -> None:
        self.data = (ctypes.c_float * 4)()
        self.shape = (ctypes.c_int64 * 1)(4)
        self.managed = self.Managed()
        tensor = self.managed.tensor
        tensor.data = ctypes.addressof(self.data)
        tensor.device = DLDevice(device_type, 0)
        tensor.ndim = 1
        tensor.dtype = DLDataType(2, 32, lanes)  # float32
        tensor.shape = self.shape
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        self.capsule = new(ctypes.addressof(self.managed), b"dltensor", None)


@pytest.fixture
def no_cupy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    yield


@pytest.mark.usefixtures("no_cupy")
def test_a_cuda_tensor_without_cupy_says_what_is_missing() -> None:
    crafted = _Crafted(device_type=2)  # kDLCUDA
    with pytest.raises(pb_utils.TritonModelException, match=r"CUDA memory.*cupy"):
        pb_utils.Tensor.from_dlpack("g", crafted.capsule)


def test_other_devices_and_vector_types_are_refused() -> None:
    opencl, vector = _Crafted(device_type=4), _Crafted(device_type=1, lanes=4)
    with pytest.raises(pb_utils.TritonModelException, match="DLDevice type 4 is not supported"):
        pb_utils.Tensor.from_dlpack("o", opencl.capsule)
    with pytest.raises(pb_utils.TritonModelException, match="vector lanes"):
        pb_utils.Tensor.from_dlpack("v", vector.capsule)


def test_a_crafted_host_capsule_reads_its_memory() -> None:
    crafted = _Crafted(device_type=1)
    crafted.data[:] = [1.0, 2.0, 3.0, 4.0]
    assert pb_utils.Tensor.from_dlpack("c", crafted.capsule).as_numpy().tolist() == [1, 2, 3, 4]


def _header_of(capsule: Any) -> DLTensor:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return DLTensor.from_address(get(capsule, b"dltensor"))
