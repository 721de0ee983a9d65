"""Objects a model's instances share (a loaded module, a compiled model), made once per key
by the first instance that asks and kept until the last one lets go."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class SharedObjects:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Hashable, tuple[Any, int]] = {}

    def acquire(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            found = self._objects.get(key)
            if found is not None:
                self._objects[key] = (found[0], found[1] + 1)
                return found[0]
        made = make()  # outside the lock: other models' instances load meanwhile
        with self._lock:
            shared, users = self._objects.get(key, (made, 0))
            self._objects[key] = (shared, users + 1)
            return shared

    def release(self, key: Hashable) -> None:
        with self._lock:
            found = self._objects.pop(key, None)
            if found is not None and found[1] > 1:
                self._objects[key] = (found[0], found[1] - 1)

    def users(self) -> list[int]:
        """How many instances hold each object (tests, diagnostics)."""
        with self._lock:
            return [users for _, users in self._objects.values()]
