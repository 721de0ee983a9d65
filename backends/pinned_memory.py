"""The server's budget of page-locked host memory (Triton's `--pinned-memory-pool-byte-size`).

GPU instances stage their tensors through host buffers (staging.py). Each buffer is pinned while
the budget lasts, so that its copies run asynchronously at full speed; beyond it a buffer is plain
pageable memory, whose copies are slower but work, as Triton falls back when its pool runs dry.
Page-locked memory cannot be swapped, so an unbounded amount of it starves the host. The metrics
endpoint reports the budget and its use (`nv_pinned_memory_pool_*_bytes`).
"""

from __future__ import annotations

import threading

DEFAULT_POOL_BYTES = 268_435_456  # Triton's default: 256 MiB


class PinnedMemoryPool:
    """How much pinned memory instances hold, against the budget. Thread-safe: instances
    take and give back from their own threads."""

    def __init__(self, total_bytes: int = DEFAULT_POOL_BYTES) -> None:
        if total_bytes < 0:
            raise ValueError(f"the pinned memory pool size must be >= 0 bytes, not {total_bytes}")
        self.total_bytes = total_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._used

    def take(self, nbytes: int) -> bool:
        """Count `nbytes` as pinned if the budget has room; False: allocate pageable memory."""
        with self._lock:
            if self._used + nbytes > self.total_bytes:
                return False
            self._used += nbytes
            return True

    def give_back(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
