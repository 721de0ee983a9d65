"""A fake of the parts of `cupy` and `cupyx` that inferd's CudaRuntime calls, for machines
without a GPU: "device" memory is host memory, so copies are memmoves and frameworks can be
handed its addresses. It records what the code asked of the hardware (devices, streams,
allocations, synchronizations) for tests to check."""

from __future__ import annotations

import ctypes
import importlib.machinery
import itertools
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest


@dataclass
class Record:
    """What the code did, as the fake saw it."""

    current: threading.local = field(default_factory=threading.local)
    streams: list[FakeStream] = field(default_factory=list)
    device_allocations: list[tuple[int, int]] = field(default_factory=list)  # (device, bytes)
    pinned_allocations: list[int] = field(default_factory=list)  # bytes
    copies: list[tuple[int, int]] = field(default_factory=list)  # (kind, bytes)
    # CUDA IPC: allocations "exported" by a client, by handle; handles opened, by address.
    exported: dict[bytes, tuple[int, np.ndarray]] = field(default_factory=dict)
    opened: dict[int, int] = field(default_factory=dict)  # address -> device

    def device(self) -> int:
        return getattr(self.current, "device", 0)

    def export(self, handle: bytes, device: int, nbytes: int) -> np.ndarray:
        """What a client's cudaMalloc + cudaIpcGetMemHandle would make: memory the server
        can open by `handle` on `device` (host memory here, returned for the test to fill)."""
        memory = np.zeros(nbytes, np.uint8)
        self.exported[handle] = (device, memory)
        return memory

    def address_range(self, pointer: int) -> tuple[int, int]:
        """cuMemGetAddressRange: the allocation that holds `pointer`."""
        for _, memory in self.exported.values():
            base = memory.ctypes.data
            if base <= pointer < base + memory.nbytes:
                return base, memory.nbytes
        raise RuntimeError("CUDA_ERROR_NOT_FOUND")


class FakeStream:
    _ids = itertools.count(0x7000)

    def __init__(self, device: int) -> None:
        self.ptr = next(self._ids)  # a non-zero handle, as a real stream has
        self.device = device
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


class FakeMemoryPointer:
    def __init__(self, nbytes: int) -> None:
        self.buffer = np.empty(max(1, nbytes), np.uint8)
        self.ptr = self.buffer.ctypes.data


def install(monkeypatch: pytest.MonkeyPatch, compute_capability: str = "90") -> Record:
    """Put fake `cupy` and `cupyx` modules in sys.modules for this test."""
    record = Record()

    class Device:
        def __init__(self, device: int) -> None:
            self.id = device
            self.compute_capability = compute_capability
            self._previous = 0

        def __enter__(self) -> Device:
            self._previous = record.device()
            record.current.device = self.id
            return self

        def __exit__(self, *exc: object) -> None:
            record.current.device = self._previous

    def stream(non_blocking: bool = False) -> FakeStream:
        assert non_blocking, "instances must not use blocking streams"
        created = FakeStream(record.device())
        record.streams.append(created)
        return created

    def alloc(nbytes: int) -> FakeMemoryPointer:
        record.device_allocations.append((record.device(), nbytes))
        return FakeMemoryPointer(nbytes)

    def set_device(device: int) -> None:
        record.current.device = device

    def memcpy_async(dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        assert stream != 0, "copies must go on the instance's stream"
        record.copies.append((kind, nbytes))
        ctypes.memmove(dst, src, nbytes)

    def memcpy(dst: int, src: int, nbytes: int, kind: int) -> None:
        record.copies.append((kind, nbytes))
        ctypes.memmove(dst, src, nbytes)

    def ipc_open_mem_handle(handle: bytes) -> int:
        if handle not in record.exported:
            raise RuntimeError("cudaErrorInvalidResourceHandle: invalid resource handle")
        device, memory = record.exported[handle]
        if device != record.device():
            raise RuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        record.opened[memory.ctypes.data] = device
        return memory.ctypes.data

    def ipc_close_mem_handle(pointer: int) -> None:
        del record.opened[pointer]

    def empty_pinned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        array = np.empty(shape, dtype)
        record.pinned_allocations.append(array.nbytes)
        return array

    runtime = types.SimpleNamespace(
        setDevice=set_device,
        memcpy=memcpy,
        memcpyAsync=memcpy_async,
        ipcOpenMemHandle=ipc_open_mem_handle,
        ipcCloseMemHandle=ipc_close_mem_handle,
        memcpyHostToDevice=1,
        memcpyDeviceToHost=2,
    )
    cuda = types.SimpleNamespace(
        runtime=runtime,
        Device=Device,
        Stream=stream,
        memory=types.SimpleNamespace(alloc=alloc),
    )
    cupy = _module("cupy", cuda=cuda)
    cupyx = _module("cupyx", empty_pinned=empty_pinned)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    return record


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() reads it
    for key, value in attributes.items():
        setattr(module, key, value)
    return module
