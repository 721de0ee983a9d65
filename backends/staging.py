"""An instance's host<->device data movement: one pinned host buffer and one device buffer per
tensor, reused across batches and grown only when a batch needs more. Host buffers are pinned
while the server's pinned memory budget lasts (pinned_memory.py), pageable beyond it.

Inputs go numpy -> pinned -> device, outputs device -> pinned -> a fresh array, every copy
queued on the instance's stream, and `finish()` waits once per batch. Inputs that already live
on the device (CUDA shared memory, a later feature) will skip `upload` and hand their address
straight to the framework binding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from math import prod
from typing import Any

import numpy as np

from inferd.backends.cuda import CudaRuntime, DeviceMemory
from inferd.backends.pinned_memory import PinnedMemoryPool

_MIN_BYTES = 256  # never hand out a zero-sized buffer: frameworks want a valid address


def _capacity(nbytes: int) -> int:
    """Round up to a power of two, so that growing batches reallocate a few times at most."""
    return max(_MIN_BYTES, 1 << (nbytes - 1).bit_length())


class IoStaging:
    def __init__(
        self, cuda: CudaRuntime, device: int, stream: Any, pinned: PinnedMemoryPool
    ) -> None:
        self._cuda = cuda
        self._device = device
        self._stream = stream
        self._pinned = pinned
        self._host: dict[tuple[str, str], np.ndarray] = {}
        self._pinned_bytes: dict[tuple[str, str], int] = {}  # what each host buffer holds of it
        self._memory: dict[tuple[str, str], DeviceMemory] = {}
        self._pending: dict[str, np.ndarray] = {}  # outputs of this batch, in pinned memory

    def reserve(self, name: str, nbytes: int, *, is_input: bool = False) -> int:
        """The device address of the tensor's buffer, at least `nbytes` long. A buffer never
        moves unless it must grow, so reserving the largest size up front pins its address
        (CUDA graphs replay fixed addresses)."""
        key = ("in" if is_input else "out", name)
        memory = self._memory.get(key)
        if memory is None or memory.nbytes < nbytes:
            memory = self._cuda.device_memory(self._device, _capacity(nbytes))
            self._memory[key] = memory
        return memory.ptr

    def upload(self, name: str, array: np.ndarray) -> int:
        """Queue `array`'s copy to the device; its device address."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        host = self._host_buffer(("in", name), data.nbytes)
        host[: data.nbytes] = data
        ptr = self.reserve(name, data.nbytes, is_input=True)
        self._cuda.to_device(ptr, host, data.nbytes, self._stream)
        return ptr

    def download(self, name: str, src: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        """Queue the copy of a device output back to the host; `finish()` returns it."""
        nbytes = prod(shape) * dtype.itemsize
        host = self._host_buffer(("out", name), nbytes)
        self._cuda.to_host(host, src, nbytes, self._stream)
        self._pending[name] = host[:nbytes].view(dtype).reshape(shape)

    @contextmanager
    def batch(self) -> Iterator[dict[str, np.ndarray]]:
        """One batch's transfers: the block queues uploads, the launch and downloads; on leaving
        it the yielded dict holds the outputs (`finish`). A failure anywhere discards the batch."""
        outputs: dict[str, np.ndarray] = {}
        try:
            yield outputs
            outputs.update(self.finish())
        except BaseException:
            self.discard()
            raise

    def finish(self) -> dict[str, np.ndarray]:
        """Wait for the batch, then copy the outputs out of the pinned buffers: the next batch
        reuses them while this batch's responses may still be on their way."""
        self._stream.synchronize()
        outputs = {name: view.copy() for name, view in self._pending.items()}
        self._pending.clear()
        return outputs

    def discard(self) -> None:
        """After a failed batch: let queued copies end before the buffers are reused."""
        self._pending.clear()
        self._stream.synchronize()

    def close(self) -> None:
        self._pending.clear()
        self._host.clear()
        self._memory.clear()
        self._pinned.give_back(sum(self._pinned_bytes.values()))
        self._pinned_bytes.clear()

    def _host_buffer(self, key: tuple[str, str], nbytes: int) -> np.ndarray:
        buffer = self._host.get(key)
        if buffer is None or buffer.nbytes < nbytes:
            self._host.pop(key, None)  # the old buffer goes before the new one is counted
            self._pinned.give_back(self._pinned_bytes.pop(key, 0))
            capacity = _capacity(nbytes)
            if self._pinned.take(capacity):
                buffer = self._cuda.pinned(capacity)
                self._pinned_bytes[key] = capacity
            else:
                buffer = np.empty(capacity, np.uint8)
            self._host[key] = buffer
        return buffer
