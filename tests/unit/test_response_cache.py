"""The response cache on its own: keys, the byte budget, least-recently-used eviction."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.server.response_cache import (
    ENTRY_OVERHEAD,
    ResponseCache,
    request_key,
)

X = np.arange(4, dtype=np.float32).reshape(1, 4)


def key(inputs: dict[str, np.ndarray], parameters: dict | None = None, version: int = 1) -> bytes:  # type: ignore[type-arg]
    return request_key("m", version, inputs, parameters)


def test_keys_follow_everything_that_determines_the_answer() -> None:
    base = key({"X": X})
    assert key({"X": X.copy()}) == base
    assert key({"X": X + 1}) != base  # data
    assert key({"X": X.reshape(2, 2)}) != base  # shape
    assert key({"X": X.astype(np.float64)}) != base  # datatype
    assert key({"Y": X}) != base  # input name
    assert key({"X": X}, version=2) != base
    assert request_key("other", 1, {"X": X}, None) != base
    assert key({"X": X}, {"mode": "fast"}) != key({"X": X}, {"mode": "slow"})
    # Scheduling parameters do not change the answer; the order inputs came in does not either.
    assert key({"X": X}, {"priority": 2, "timeout": 100}) == base
    assert key({"A": X, "B": X + 1}) == key({"B": X + 1, "A": X})
    # Non-contiguous views hash as their values.
    wide = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert key({"X": wide[:, ::2]}) == key({"X": np.ascontiguousarray(wide[:, ::2])})


def test_bytes_inputs_are_keyed_by_their_items() -> None:
    one = np.array([b"ab", b"c"], dtype=object)
    other = np.array([b"a", b"bc"], dtype=object)  # same bytes run together, other items
    assert key({"S": one}) != key({"S": other})
    assert key({"S": one}) == key({"S": np.array([b"ab", b"c"], dtype=object)})


def test_entries_are_read_only_copies() -> None:
    cache = ResponseCache(1 << 20)
    source = {"Y": np.ones(4, np.float32)}
    cache.put(b"k", source)
    source["Y"][0] = 7  # the caller's array may change later; the entry does not
    stored = cache.get(b"k")
    assert stored is not None
    assert stored["Y"][0] == 1
    with pytest.raises(ValueError):
        stored["Y"][0] = 3


def test_the_least_recently_used_entries_leave_first_within_the_budget() -> None:
    entry = ENTRY_OVERHEAD + 400  # 100 float32s
    cache = ResponseCache(3 * entry)
    for name in (b"a", b"b", b"c"):
        cache.put(name, {"Y": np.zeros(100, np.float32)})
    assert len(cache) == 3 and cache.used == 3 * entry
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"d", {"Y": np.zeros(100, np.float32)})
    assert cache.get(b"b") is None  # b was the least recently used
    assert all(cache.get(k) is not None for k in (b"a", b"c", b"d"))
    assert cache.evictions == 1 and cache.used == 3 * entry
    cache.put(b"huge", {"Y": np.zeros(10_000, np.float32)})  # larger than the whole cache
    assert cache.get(b"huge") is None and len(cache) == 3


def test_an_entry_bound_keeps_at_most_that_many_answers() -> None:
    """MLServer's cache_size: answers, not bytes; the least recently used leave first."""
    cache = ResponseCache(1 << 20, max_entries=2)
    for name in (b"a", b"b"):
        cache.put(name, {"Y": np.zeros(4, np.float32)})
    assert cache.get(b"a") is not None  # b is now the least recently used
    cache.put(b"c", {"Y": np.zeros(4, np.float32)})
    assert len(cache) == 2 and cache.get(b"b") is None and cache.evictions == 1
    cache.put(b"c", {"Y": np.ones(4, np.float32)})  # a replacement evicts nothing
    assert len(cache) == 2 and cache.evictions == 1 and cache.get(b"a") is not None
