"""Where models live: model folders under the repository roots, version folders, version policy."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from inferd.repository.config import CONFIG_FILENAME, VersionPolicy
from inferd.repository.mlserver_settings import (
    SETTINGS_FILE,
    environment_model_name,
    natural_key,
    settings_in,
    settings_name,
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
    # An MLServer model's versions: the folders of its settings (model-settings.json).
    settings: tuple[Path, ...] = ()

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
    in two roots is an error for that model.

    A sub-folder without a Triton config that holds MLServer settings (model-settings.json,
    anywhere below it) holds MLServer models instead, as MLServer finds them: each settings
    file is a model version, named by its `name` or else its folder, and settings of one name
    (across the repository) are the versions of one model."""
    models: dict[ModelId, ModelLocation] = {}

    def add(location: ModelLocation) -> None:
        key = location.id
        if key in models:
            first = models[key]
            where = (
                f"more than one repository ({first.repository}, {location.repository})"
                if first.repository != location.repository
                else f"two places of {location.repository} ({first.path}, {location.path})"
            )
            error = f"model '{location.name}' appears in {where}"
            location = ModelLocation(location.name, location.path, error)
        models[key] = location

    for root in roots:
        names = renamed.get(root, {}) if renamed else {}
        namespace = "" if namespaces is None else namespaces.get(root, str(root))
        if (root / SETTINGS_FILE).is_file() and not (root / CONFIG_FILENAME).is_file():
            # One MLServer model as the whole repository (`mlserver start MODEL_FOLDER`, and
            # KServe's storageUri folders): its sub-folders are its own files.
            name = settings_name(root)
            add(ModelLocation(name, root, namespace=namespace, root=root, settings=(root,)))
            continue
        entries = [
            entry
            for entry in sorted(root.iterdir())
            # Hidden folders and Python's byte-code cache are never models.
            if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__pycache__"
        ]
        triton = [entry for entry in entries if (entry / CONFIG_FILENAME).is_file()]
        found = {entry: settings_in(entry) for entry in entries if entry not in triton}
        env_name = environment_model_name(root)
        if env_name is not None and not triton and not any(found.values()):
            # No model declared here: MLServer serves the one its environment describes, and
            # the folders are its files (KServe's kserve-mlserver runtime).
            add(
                ModelLocation(env_name, root, namespace=namespace, root=root, from_environment=True)
            )
            continue
        versions: dict[str, list[Path]] = {}  # MLServer models: name -> settings folders
        for entry in entries:
            folders = found.get(entry)
            if not folders:  # a Triton model (or a folder that fails to load as one)
                name = names.get(entry.name, entry.name)
                add(ModelLocation(name, entry, namespace=namespace, root=root))
            elif entry.name in names:  # registered under a name: its settings are its versions
                add(_mlserver_model(names[entry.name], folders, namespace, root))
            else:
                for folder in folders:
                    versions.setdefault(settings_name(folder), []).append(folder)
        for name, folders in versions.items():
            add(_mlserver_model(name, folders, namespace, root))
    return models


def _mlserver_model(
    name: str, folders: Sequence[Path], namespace: str, root: Path
) -> ModelLocation:
    """An MLServer model, at the folder its versions' settings share, versions in order."""
    ordered = sorted(folders, key=lambda d: natural_key(d.relative_to(root).as_posix()))
    path = Path(os.path.commonpath(ordered))
    return ModelLocation(name, path, namespace=namespace, root=root, settings=tuple(ordered))


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
