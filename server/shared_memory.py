"""Client shared-memory regions (Triton's system and CUDA shared-memory extensions).

A client creates a POSIX shared-memory object, registers it under a name, and then names that
region instead of sending tensor bytes: inputs are read where they lie and outputs written
there. Region names share one namespace across system and CUDA regions, as in Triton.

The registry is used from the event loop only. Inputs in system regions are read-only numpy
views of the mapping, so nothing is copied on the way in; an instance thread may still hold
such a view after the region is unregistered, and then the mapping lives on until the view is
gone. CUDA regions are in `cuda_shared_memory`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from inferd.server.cuda_shared_memory import CudaIpc, CudaRegion, CudaRegionStatus
from inferd.server.errors import ErrorCode, InferdError, invalid, not_found, unsupported
from inferd.server.tensor_codec import pack_bytes, tensor_from_bytes
from inferd.server.types import DataType, Params, SharedMemoryRef

# Where Linux keeps POSIX shared-memory objects: shm_open("/key") is this folder's "key".
POSIX_SHM_DIR = Path("/dev/shm")
DISABLED = (
    "client shared memory is disabled; start the server with --allow-client-shm=true to "
    "register shared-memory regions"
)


@dataclass(frozen=True, slots=True)
class SystemRegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


class Region(Protocol):
    """What inference needs of a registered region, whatever memory holds it."""

    byte_size: int

    def read(self, offset: int, byte_size: int) -> memoryview:
        """The bytes at [offset, offset + byte_size), as a read-only view or a host copy."""

    def write(self, offset: int, data: memoryview) -> None:
        """Place `data` at `offset`; the caller checked that it fits."""

    def close(self) -> None:
        """Release the region (a view still in use keeps its memory alive)."""


class SystemRegion:
    """`byte_size` bytes at `offset` of a POSIX shared-memory object, mapped once."""

    def __init__(self, status: SystemRegionStatus, directory: Path = POSIX_SHM_DIR) -> None:
        self.status = status
        self.byte_size = status.byte_size
        self._offset = status.offset
        self._map = _map_object(directory, status)

    def read(self, offset: int, byte_size: int) -> memoryview:
        start = self._offset + offset
        return memoryview(self._map)[start : start + byte_size].toreadonly()

    def write(self, offset: int, data: memoryview) -> None:
        start = self._offset + offset
        self._map[start : start + data.nbytes] = data

    def close(self) -> None:
        # A request still viewing it keeps it mapped until that view goes.
        with contextlib.suppress(BufferError):
            self._map.close()


def _map_object(directory: Path, status: SystemRegionStatus) -> mmap.mmap:
    key = status.key
    name = key.removeprefix("/")
    # shm_open refuses these too; here they would also escape the shared-memory folder.
    if not name or "/" in name or name in (".", ".."):
        raise invalid(f"invalid shared memory key '{key}': expected '/name' without other '/'")
    try:
        fd = os.open(directory / name, os.O_RDWR)
    except OSError as exc:
        raise invalid(f"Unable to open shared memory region: '{key}' ({exc.strerror})") from None
    try:
        size = os.fstat(fd).st_size
        end = status.offset + status.byte_size
        # Mapping past the end of the object would crash on first touch (SIGBUS): refuse it.
        if end > size:
            raise invalid(
                f"shared memory region '{status.name}' ({status.byte_size} bytes at offset "
                f"{status.offset}) does not fit in '{key}', which has {size} bytes"
            )
        return mmap.mmap(fd, end)
    finally:
        os.close(fd)  # the mapping keeps its own reference


REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
# A tensor's parameters that say where its data is, rather than what it means.
TRANSPORT_PARAMETERS = frozenset({REGION, BYTE_SIZE, OFFSET, "binary_data_size"})


def own_parameters(params: Mapping[str, object]) -> Params:
    """A tensor's parameters beyond the transport's, kept where they are plain values."""
    return {
        key: value
        for key, value in params.items()
        if key not in TRANSPORT_PARAMETERS and isinstance(value, bool | int | float | str)
    }


def shared_memory_ref(params: Mapping[str, object], what: str) -> SharedMemoryRef | None:
    """The shared-memory location a tensor's parameters name, or None when they name none."""
    region = params.get(REGION)
    byte_size = params.get(BYTE_SIZE)
    if region is None and byte_size is None:
        if OFFSET in params:
            raise invalid(f"{what}: '{OFFSET}' needs '{REGION}' and '{BYTE_SIZE}'")
        return None
    if region is None or byte_size is None:
        raise invalid(f"{what}: '{REGION}' and '{BYTE_SIZE}' must be given together")
    if not isinstance(region, str) or not region:
        raise invalid(f"{what}: '{REGION}' must be a region name")
    offset = params.get(OFFSET, 0)
    for key, value in ((BYTE_SIZE, byte_size), (OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(f"{what}: '{key}' must be a non-negative integer, got {value!r}")
    assert isinstance(byte_size, int) and isinstance(offset, int)
    return SharedMemoryRef(region, byte_size, offset)


class SharedMemoryRegistry:
    """The regions clients registered, by name.

    `cuda`: how to reach CUDA (called at the first CUDA registration), or None on a server
    without GPUs, which then refuses CUDA regions.
    """

    def __init__(
        self,
        allow_client: bool,
        directory: Path = POSIX_SHM_DIR,
        cuda: Callable[[], CudaIpc] | None = None,
    ) -> None:
        self._allow = allow_client
        self._directory = directory
        self._load_cuda = cuda
        self._cuda_ipc: CudaIpc | None = None
        self._system: dict[str, SystemRegion] = {}
        self._cuda: dict[str, CudaRegion] = {}

    @property
    def supports_cuda(self) -> bool:
        return self._load_cuda is not None

    # ---- registration --------------------------------------------------------------------

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_new(name)
        if offset < 0:
            raise invalid(f"shared memory region '{name}': offset must not be negative")
        if byte_size <= 0:
            raise invalid(f"shared memory region '{name}': byte_size must be positive")
        status = SystemRegionStatus(name, key, offset, byte_size)
        self._system[name] = SystemRegion(status, self._directory)

    def system_status(self, name: str = "") -> list[SystemRegionStatus]:
        if not name:  # by name, as Triton's std::map lists them
            return [self._system[key].status for key in sorted(self._system)]
        region = self._system.get(name)
        if region is None:
            raise not_found(f"Unable to find system shared memory region: '{name}'")
        return [region.status]

    def unregister_system(self, name: str = "") -> None:
        """Unregister one region, or every system region when `name` is empty; a name that is
        not registered is not an error (Triton's behaviour)."""
        self._require_allowed()
        for key in [name] if name else list(self._system):
            region = self._system.pop(key, None)
            if region is not None:
                region.close()

    def register_cuda(self, name: str, handle: bytes, device_id: int, byte_size: int) -> None:
        self._check_new(name)
        if device_id < 0:
            raise invalid(f"CUDA shared memory region '{name}': device_id must not be negative")
        if byte_size <= 0:
            raise invalid(f"CUDA shared memory region '{name}': byte_size must be positive")
        if self._load_cuda is None:
            raise unsupported("CUDA shared memory needs a GPU; this server has none")
        if self._cuda_ipc is None:
            self._cuda_ipc = self._load_cuda()
        status = CudaRegionStatus(name, device_id, byte_size)
        self._cuda[name] = CudaRegion(status, handle, self._cuda_ipc)

    def cuda_status(self, name: str = "") -> list[CudaRegionStatus]:
        if not name:
            return [self._cuda[key].status for key in sorted(self._cuda)]
        region = self._cuda.get(name)
        if region is None:
            raise not_found(f"Unable to find cuda shared memory region: '{name}'")
        return [region.status]

    def unregister_cuda(self, name: str = "") -> None:
        self._require_allowed()
        for key in [name] if name else list(self._cuda):
            region = self._cuda.pop(key, None)
            if region is not None:
                region.close()

    def close(self) -> None:
        for regions in (self._system, self._cuda):
            for region in regions.values():
                region.close()
            regions.clear()

    def _check_new(self, name: str) -> None:
        self._require_allowed()
        if not name:
            raise invalid("a shared memory region needs a name")
        if name in self._system or name in self._cuda:  # one namespace for both kinds
            raise InferdError(
                ErrorCode.ALREADY_EXISTS, f"shared memory region '{name}' already in manager"
            )

    def _require_allowed(self) -> None:
        if not self._allow:
            raise unsupported(DISABLED)

    # ---- tensors -------------------------------------------------------------------------

    def region(self, ref: SharedMemoryRef) -> Region:
        """The region `ref` names, after checking that `ref` lies inside it."""
        region: Region | None = self._system.get(ref.region) or self._cuda.get(ref.region)
        if region is None:
            if not self._allow:
                raise unsupported(DISABLED)
            raise not_found(f"Unable to find shared memory region: '{ref.region}'")
        if ref.offset + ref.byte_size > region.byte_size:
            raise invalid(
                f"Invalid offset + byte size for shared memory region: '{ref.region}' "
                f"({ref.offset} + {ref.byte_size} > {region.byte_size})"
            )
        return region

    def read_input(
        self, ref: SharedMemoryRef, name: str, datatype: DataType, shape: tuple[int, ...]
    ) -> np.ndarray:
        """The input tensor `ref` holds; a view of the region, without a copy."""
        data = self.region(ref).read(ref.offset, ref.byte_size)
        return tensor_from_bytes(data, name, datatype, shape)

    def write_output(
        self, ref: SharedMemoryRef, name: str, datatype: DataType, array: np.ndarray
    ) -> None:
        region = self.region(ref)
        data = _output_bytes(name, datatype, array)
        if data.nbytes > ref.byte_size:
            raise invalid(
                f"shared memory size specified with the request for output '{name}' "
                f"({ref.byte_size} bytes) should be at least {data.nbytes} bytes to hold the "
                f"results"
            )
        region.write(ref.offset, data)


def _output_bytes(name: str, datatype: DataType, array: np.ndarray) -> memoryview:
    if datatype is DataType.BYTES:
        return memoryview(pack_bytes(name, array))
    wire = np.ascontiguousarray(array, dtype=datatype.numpy)
    return wire.reshape(-1).view(np.uint8).data
