"""Where models live: model folders under the repository roots, version folders, version policy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from inferd.repository.config import VersionPolicy


@dataclass(frozen=True, slots=True)
class ModelLocation:
    name: str
    path: Path
    error: str = ""  # set when the model cannot be loaded from this layout (e.g. a duplicate)


def find_models(
    roots: Sequence[Path], renamed: Mapping[Path, Mapping[str, str]] | None = None
) -> dict[str, ModelLocation]:
    """Every sub-folder of every root is a model, named as the folder unless `renamed` (root ->
    folder -> name) names it otherwise; a name in two roots is an error for that model."""
    models: dict[str, ModelLocation] = {}
    for root in roots:
        names = renamed.get(root, {}) if renamed else {}
        for entry in sorted(root.iterdir()):
            if not entry.is_dir() or entry.name.startswith(".") or entry.name == "__pycache__":
                continue  # hidden folders and Python's byte-code cache are never models
            name = names.get(entry.name, entry.name)
            if name in models:
                first = models[name].path.parent
                models[name] = ModelLocation(
                    name,
                    entry,
                    f"model '{name}' appears in more than one repository ({first}, {root})",
                )
            else:
                models[name] = ModelLocation(name, entry)
    return models


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numeric sub-folders not starting with 0 are versions; anything else is ignored (Triton)."""
    versions: dict[int, Path] = {}
    for entry in model_dir.iterdir():
        name = entry.name
        if entry.is_dir() and name.isdigit() and not name.startswith("0"):
            versions[int(name)] = entry
    return versions


def select_versions(available: Iterable[int], policy: VersionPolicy) -> list[int]:
    """The versions to serve, ascending."""
    versions = sorted(available)
    if policy.kind == "all":
        return versions
    if policy.kind == "specific":
        return [v for v in versions if v in policy.versions]
    return versions[-policy.num_versions :] if versions else []
