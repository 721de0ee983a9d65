"""The repository's table of models (id -> version -> ModelVersion) and the ids each name has:
one per repository with --model-namespacing, else at most one. Requests name a model without
its namespace; a name with several ids answers only an asker whose own namespace holds one
(an ensemble's steps), as in Triton."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from inferd.repository.layout import ModelId
from inferd.repository.versions import ModelVersion
from inferd.server.errors import invalid

Versions = dict[int, ModelVersion]


def pick(ids: Iterable[ModelId], name: str, namespace: str | None = None) -> ModelId | None:
    """The one of `ids` (all named `name`) meant: the only one, else the one in `namespace`.
    None when there is none; raises when several are left to choose from."""
    found = tuple(ids)
    if len(found) <= 1:
        return found[0] if found else None
    own = ModelId(namespace, name) if namespace is not None else None
    if own in found:
        return own
    raise invalid(  # Triton 2.51's words
        f"There are {len(found)} identifiers of model '{name}' in global map, model namespace "
        "must be provided to resolve ambiguity."
    )


class ModelTable(Mapping[ModelId, Versions]):
    def __init__(self) -> None:
        self._models: dict[ModelId, Versions] = {}
        self._ids: dict[str, tuple[ModelId, ...]] = {}

    def __getitem__(self, key: ModelId) -> Versions:
        return self._models[key]

    def __iter__(self) -> Iterator[ModelId]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def __setitem__(self, key: ModelId, versions: Versions) -> None:
        if key not in self._models:
            self._ids[key.name] = (*self._ids.get(key.name, ()), key)
        self._models[key] = versions

    def pop(self, key: ModelId) -> Versions | None:
        versions = self._models.pop(key, None)
        if versions is not None:
            left = tuple(k for k in self._ids[key.name] if k != key)
            if left:
                self._ids[key.name] = left
            else:
                del self._ids[key.name]
        return versions

    def ids(self, name: str) -> tuple[ModelId, ...]:
        return self._ids.get(name, ())

    def find(self, name: str, namespace: str | None = None) -> ModelId | None:
        """The model a request naming `name` means (see pick)."""
        ids = self._ids.get(name)
        if ids is None:
            return None
        return ids[0] if len(ids) == 1 else pick(ids, name, namespace)

    def versions(self, name: str, namespace: str | None = None) -> Versions | None:
        """The versions of the model `find` finds."""
        key = self.find(name, namespace)
        return None if key is None else self._models[key]
