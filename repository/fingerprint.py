"""A model folder's state, to tell whether it changed: every file and folder under it with its
size and mtime, so a new version folder, an edited config.pbtxt or a replaced label file all
count. Hidden entries and `__pycache__` are left out: a Python model's byte-code cache is not
a change. Poll mode compares scans; explicit mode skips reloading an unchanged model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from inferd.repository.layout import ModelId, ModelLocation

Fingerprint = tuple[object, ...]


def scan(locations: Mapping[ModelId, ModelLocation]) -> dict[ModelId, Fingerprint]:
    """Every model's fingerprint (blocking: run it off the event loop)."""
    return {key: fingerprint(location) for key, location in locations.items()}


def fingerprint(location: ModelLocation) -> Fingerprint:
    """One model's (blocking)."""
    return (location.error, *_entries(location.path))


def _entries(model_dir: Path) -> list[tuple[str, int, int]]:
    entries: list[tuple[str, int, int]] = []
    for folder, dirs, files in os.walk(model_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in [*dirs, *(f for f in files if not f.startswith("."))]:
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue  # removed while scanning: the next scan sees it gone
            entries.append((os.path.relpath(path, model_dir), stat.st_size, stat.st_mtime_ns))
    entries.sort()
    return entries
