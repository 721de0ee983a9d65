"""Where models live: model folders under the repository roots, version folders, version policy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from inferd.repository.config import CONFIG_FILENAME, VersionPolicy
from inferd.repository.mlserver_settings import (
    SETTINGS_FILE,
    environment_model_name,
    mlserver_folders,
    served_name,
    settings_folders,
)


class ModelId(NamedTuple):
    """A model as the repository keys it. Its namespace is the repository it was found in
    with --model-namespacing, else "": then names are unique across repositories."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}::{self.name}" if self.namespace else self.name


@dataclass(frozen=True, slots=True)
class ModelLocation:
    name: str
    path: Path
    error: str = ""  # set when the model cannot be loaded from this layout (e.g. a duplicate)
    namespace: str = ""
    root: Path | None = None  # the repository it was found in (None: the folder's parent)
    # MLServer's model from the MLSERVER_MODEL_* variables, served from the repository's files.
    from_environment: bool = False

    @property
    def id(self) -> ModelId:
        return ModelId(self.namespace, self.name)

    @property
    def repository(self) -> Path:
        return self.root if self.root is not None else self.path.parent


def find_models(
    roots: Sequence[Path],
    renamed: Mapping[Path, Mapping[str, str]] | None = None,
    namespaces: Mapping[Path, str] | None = None,
) -> dict[ModelId, ModelLocation]:
    """Every sub-folder of every root is a model, named as the folder unless `renamed` (root ->
    folder -> name) names it otherwise. With `namespaces` (root -> namespace: the
    --model-namespacing kind) each root's models are apart from the others'; without, a name
    in two roots is an error for that model."""
    models: dict[ModelId, ModelLocation] = {}
    for root in roots:
        names = renamed.get(root, {}) if renamed else {}
        namespace = "" if namespaces is None else namespaces.get(root, str(root))
        if (root / SETTINGS_FILE).is_file() and not (root / CONFIG_FILENAME).is_file():
            # One MLServer model as the whole repository (`mlserver start MODEL_FOLDER`, and
            # KServe's storageUri folders): its sub-folders are its own files.
            name = served_name(root, {1: root})
            models[ModelId(namespace, name)] = ModelLocation(
                name, root, namespace=namespace, root=root
            )
            continue
        entries = [
            entry
            for entry in sorted(root.iterdir())
            # Hidden folders and Python's byte-code cache are never models.
            if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__pycache__"
        ]
        env_name = environment_model_name(root)
        if env_name is not None and not any(_declared(entry) for entry in entries):
            # No model declared here: MLServer serves the one its environment describes, and
            # the folders are its files (KServe's kserve-mlserver runtime).
            models[ModelId(namespace, env_name)] = ModelLocation(
                env_name, root, namespace=namespace, root=root, from_environment=True
            )
            continue
        for entry in entries:
            name = names.get(entry.name) or _own_name(entry)
            key = ModelId(namespace, name)
            if key in models:
                first = models[key].path.parent
                models[key] = ModelLocation(
                    name,
                    entry,
                    f"model '{name}' appears in more than one repository ({first}, {root})",
                )
            else:
                models[key] = ModelLocation(name, entry, namespace=namespace, root=root)
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


def _declared(model_dir: Path) -> bool:
    """A Triton config or MLServer settings make the folder a model."""
    return (model_dir / CONFIG_FILENAME).is_file() or bool(settings_folders(model_dir))


def _own_name(model_dir: Path) -> str:
    """The folder's name, or an MLServer model's `name` (which MLServer serves it under)."""
    folders = mlserver_folders(model_dir, model_dir / CONFIG_FILENAME)
    return served_name(model_dir, folders) if folders else model_dir.name
