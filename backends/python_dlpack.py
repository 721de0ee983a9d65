"""DLPack exchange for `pb_utils.Tensor`, as Triton's python backend offers it: a model hands its
input tensors to PyTorch, JAX or CuPy without a copy (`to_dlpack()`, or `torch.from_dlpack(tensor)`
through `__dlpack__`), and makes output tensors from theirs (`Tensor.from_dlpack(name, x)`).

inferd's python models hold host memory (numpy arrays). A host tensor is shared both ways without a
copy; a CUDA tensor that a model hands over is copied to the host once, through cupy. numpy does the
DLPack work; ctypes only reads (and, for bfloat16, which numpy cannot exchange, retypes) the
DLTensor header of a capsule before numpy takes it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np


class DLPackError(Exception):
    """A tensor that cannot cross: pb_utils turns it into TritonModelException."""


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


# Capsule names and where the DLTensor sits in what they hold: DLManagedTensor starts with it;
# DLManagedTensorVersioned puts a version, manager_ctx, deleter and flags (8 bytes each) first.
_LEGACY = b"dltensor"
_VERSIONED = b"dltensor_versioned"
_TENSOR_OFFSET = {_LEGACY: 0, _VERSIONED: 32}
_MAX_VERSION = (1, 0)  # the DLManagedTensorVersioned layout read here

_CPU, _CUDA, _CUDA_HOST, _CUDA_MANAGED = 1, 2, 3, 13
_HOST_DEVICES = (_CPU, _CUDA_HOST, _CUDA_MANAGED)
_UINT, _BFLOAT = 1, 4

_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

CapsuleType = type(np.empty(0).__dlpack__())


def to_dlpack(array: np.ndarray, max_version: tuple[int, int] | None = None) -> Any:
    """A capsule sharing the array's memory: a plain one ("dltensor", what `to_dlpack()` gives
    and every consumer takes), or a versioned one for a consumer that asks with `max_version`
    (numpy does; it marks arrays from plain capsules read-only)."""
    if array.dtype == np.object_:
        raise DLPackError("DLPack does not have support for string tensors.")
    if max_version is None and not array.flags.writeable:
        array = array.copy()  # a plain capsule cannot say read-only
    bfloat16 = array.dtype == ml_dtypes.bfloat16
    capsule = _export(array.view(np.uint16) if bfloat16 else array, max_version)
    if bfloat16:
        _header(capsule).dtype.code = _BFLOAT  # ours until handed out: retype uint16
    return capsule


def from_dlpack(source: Any) -> np.ndarray:
    """A host array over a DLPack tensor (a capsule, or anything with `__dlpack__`): the same
    memory for a host tensor, a host copy for a CUDA one."""
    if isinstance(source, CapsuleType):
        capsule = source
    elif hasattr(source, "__dlpack__"):
        capsule = _taken(source)
    else:
        raise DLPackError(
            "Provided tensor is not supported. Tensor must be a DLPack capsule or have a "
            "`__dlpack__` attribute"
        )
    header = _header(capsule)
    device = header.device.device_type
    producer = _Producer(capsule, (device, header.device.device_id))
    if header.dtype.lanes != 1:
        raise DLPackError("DLPack tensors with vector lanes are not supported.")
    bfloat16 = header.dtype.code == _BFLOAT and header.dtype.bits == 16
    if bfloat16:
        header.dtype.code = _UINT  # numpy reads it as uint16, viewed back below
    array: np.ndarray
    if device in _HOST_DEVICES:
        array = _imported(np.from_dlpack, producer)
    elif device == _CUDA:
        array = _host_copy(producer)
    else:
        raise DLPackError(f"DLDevice type {device} is not supported by Python backend.")
    if not array.flags.c_contiguous:
        raise DLPackError(
            "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored in "
            "C-Order are supported."
        )
    return array.view(ml_dtypes.bfloat16) if bfloat16 else array


class _Producer:
    """A capsule in the shape array libraries take (`from_dlpack(x)` wants `__dlpack__`)."""

    def __init__(self, capsule: Any, device: tuple[int, int]) -> None:
        self._capsule = capsule
        self._device = device

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._device


def _taken(producer: Any) -> Any:
    """The producer's capsule: versioned where it can (it says whether the memory is read-only;
    numpy marks arrays from plain capsules read-only), plain from older producers. Stream None:
    the producer orders its work before the legacy default stream."""
    try:
        return producer.__dlpack__(stream=None, max_version=_MAX_VERSION)
    except TypeError:
        return producer.__dlpack__(stream=None)


def _export(array: np.ndarray, max_version: tuple[int, int] | None) -> Any:
    try:
        return array.__dlpack__(max_version=max_version)
    except (BufferError, TypeError) as exc:
        raise DLPackError(f"a {array.dtype} tensor cannot be converted to DLPack: {exc}") from None


def _header(capsule: Any) -> DLTensor:
    name = _capsule_name(capsule)
    if name not in _TENSOR_OFFSET:
        consumed = name in (b"used_dltensor", b"used_dltensor_versioned")
        why = "was already consumed" if consumed else f"is named {name!r}"
        raise DLPackError(f"the DLPack capsule {why}: a capsule can be taken once")
    address = _capsule_pointer(capsule, name) + _TENSOR_OFFSET[name]
    return DLTensor.from_address(address)


def _host_copy(producer: _Producer) -> np.ndarray:
    try:
        import cupy  # the gpu extra: only CUDA tensors need it
    except ImportError:
        raise DLPackError(
            "the DLPack tensor is in CUDA memory; inferd copies it to the host with cupy, "
            "which is not installed (the gpu extra)"
        ) from None
    device_array = _imported(cupy.from_dlpack, producer)
    host: np.ndarray = cupy.asnumpy(device_array)
    return host


def _imported(take: Callable[[Any], Any], producer: _Producer) -> Any:
    try:
        return take(producer)
    except (BufferError, TypeError, ValueError) as exc:
        raise DLPackError(f"the DLPack tensor cannot be read: {exc}") from None
