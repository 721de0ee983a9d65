"""Triton's local response cache (`--cache-config local,size=N` and `response_cache { enable:
true }`): the outputs of successful requests, keyed by a hash of what determines them, shared by all
models within one byte budget, least recently used out first.

Differences from Triton's local cache, both on the side of correct answers: the key is a 128-bit
hash (Triton's is 64-bit), and it covers the request's own parameters besides the model, version
and input tensors, since python models may read them. Entries hold the outputs the model answered
(all of them, except from python models, which answer the requested ones): a request whose
outputs are all there is a hit, whatever else it asks for (classification, other outputs).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from inferd.server.types import Params

Outputs = dict[str, np.ndarray]
# Bookkeeping per entry beyond its tensors (key, dict, array headers), so that many tiny entries
# cannot exceed the budget.
ENTRY_OVERHEAD = 256
# Parameters that steer scheduling, not the model's answer: requests differing only in these
# share entries.
SCHEDULING_PARAMETERS = frozenset({"priority", "timeout", "inferd.latency_slo_ms"})


class LookupCounters:
    """Triton's cache-wide gauges, which every cache keeps: lookups by outcome, and time spent
    looking up and inserting."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.lookup_ns = 0
        self.insertion_ns = 0

    def record_lookup(self, hit: bool, ns: int) -> None:
        """A lookup's outcome, as the caller judged it (an entry lacking a requested output is
        a miss), and how long it took."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        self.lookup_ns += ns


class ResponseCache(LookupCounters):
    """The `local` cache. Used on the event loop only: no locks."""

    def __init__(self, capacity: int, max_entries: int = 0) -> None:
        """`capacity` in bytes; `max_entries`: at most that many answers too (0: no bound
        but the bytes; MLServer bounds its cache by entries)."""
        super().__init__()
        self.capacity = capacity
        self.max_entries = max_entries
        self.used = 0
        self.evictions = 0
        self._entries: OrderedDict[bytes, tuple[Outputs, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Outputs | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> int:
        """Store copies, read-only: the answers that hits share must not change. An entry
        larger than the whole cache is not stored; one under the same key is replaced (it may
        hold fewer outputs: python models answer only the outputs a request asks for).
        Returns the nanoseconds the insertion took."""
        start = time.monotonic_ns()
        self._insert(key, outputs)
        took = time.monotonic_ns() - start
        self.insertion_ns += took
        return took

    def _insert(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> None:
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.used -= previous[1]
        stored = {name: _frozen_copy(array) for name, array in outputs.items()}
        size = ENTRY_OVERHEAD + sum(_size(array) for array in stored.values())
        if size > self.capacity:
            return
        while self._entries and (
            self.used + size > self.capacity
            or (self.max_entries and len(self._entries) >= self.max_entries)
        ):
            _, (_, freed) = self._entries.popitem(last=False)
            self.used -= freed
            self.evictions += 1
        self._entries[key] = (stored, size)
        self.used += size


def request_key(
    model: str, version: int, inputs: Mapping[str, np.ndarray], parameters: Params | None
) -> bytes:
    """What determines a model's answer: model, version, each input's name, type, shape and
    data (in name order, so that the order the client sent them in does not matter), and the
    parameters other than scheduling ones."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{model}\0{version}\0".encode())
    for name in sorted(inputs):
        array = inputs[name]
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype == object:
            for item in array.flat:
                data = item.encode() if isinstance(item, str) else bytes(item)
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
        else:
            digest.update(np.ascontiguousarray(array).data)
    if parameters:
        own = sorted((k, repr(v)) for k, v in parameters.items() if k not in SCHEDULING_PARAMETERS)
        if own:
            digest.update(repr(own).encode())
    return digest.digest()


def _frozen_copy(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, copy=True)
    copy.flags.writeable = False
    return copy


def _size(array: np.ndarray) -> int:
    if array.dtype != object:
        return array.nbytes
    # Object arrays hold references; count the bytes objects they point to.
    return array.nbytes + sum(len(item) for item in array.flat)
