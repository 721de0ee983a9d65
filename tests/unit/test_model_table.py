"""How a model name resolves when several repositories hold it (--model-namespacing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.repository.layout import ModelId, find_models
from inferd.repository.model_table import ModelTable
from inferd.repository.versions import ModelState, ModelVersion
from inferd.server.errors import InferdError

A, B = ModelId("a", "m"), ModelId("b", "m")


def table(*keys: ModelId) -> ModelTable:
    models = ModelTable()
    for key in keys:
        models[key] = {1: ModelVersion(key.name, 1, ModelState.READY, namespace=key.namespace)}
    return models


def test_a_name_one_repository_holds_is_found_from_anywhere() -> None:
    models = table(A)
    assert models.find("m") == A
    assert models.find("m", "b") == A  # an ensemble in b whose step b lacks
    assert models.find("x") is None


def test_a_name_several_hold_needs_the_askers_own() -> None:
    models = table(A, B)
    assert models.find("m", "b") == B
    assert models.ids("m") == (A, B)
    with pytest.raises(InferdError, match="There are 2 identifiers of model 'm'"):
        models.find("m")
    with pytest.raises(InferdError, match="model namespace must be provided"):
        models.find("m", "c")


def test_forgetting_one_leaves_the_other_unambiguous() -> None:
    models = table(A, B)
    models.pop(B)
    assert models.find("m") == A
    assert models.pop(B) is None
    models.pop(A)
    assert models.ids("m") == () and len(models) == 0


def test_repositories_keep_their_models_apart_only_with_namespaces(tmp_path: Path) -> None:
    for repo in ("a", "b"):
        (tmp_path / repo / "m").mkdir(parents=True)
    roots = (tmp_path / "a", tmp_path / "b")
    [duplicate] = find_models(roots).values()
    assert "appears in more than one repository" in duplicate.error
    apart = find_models(roots, namespaces={roots[0]: "a", roots[1]: "b"})
    assert set(apart) == {A, B}
    assert all(not location.error for location in apart.values())
