"""Which models ensembles are made of, and the order models load in: composing models first,
then the ensembles made of them (nested ensembles after the ensembles inside them). Ensembles
that contain themselves, directly or through others, are refused with the cycle."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from inferd.repository.config import read_config
from inferd.repository.ensemble_config import is_ensemble
from inferd.repository.layout import ModelId, ModelLocation
from inferd.server.errors import InferdError


class _Key(Hashable, Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Key)

# ensemble -> the models its steps run (the repository's ModelIds; names in unit tests)
Dependencies = Mapping[K, Sequence[K]]


def ensemble_steps(proto: Any) -> tuple[str, ...] | None:
    """The composing models of an ensemble config, each once; None for any other model."""
    if not is_ensemble(proto):
        return None
    return tuple(
        dict.fromkeys(s.model_name for s in proto.ensemble_scheduling.step if s.model_name)
    )


def read_dependencies(
    locations: Iterable[ModelLocation], config_name: str = ""
) -> dict[ModelId, tuple[str, ...]]:
    """The ensembles among these model folders, with the names of their steps' models
    (blocking: run it off the loop). A config that cannot be read counts as no ensemble here:
    its load says what is wrong with it."""
    found: dict[ModelId, tuple[str, ...]] = {}
    for location in locations:
        try:
            steps = ensemble_steps(read_config(location.path, config_name))
        except InferdError:
            continue
        if steps is not None:
            found[location.id] = steps
    return found


def closure(names: Iterable[K], deps: Dependencies[K]) -> set[K]:
    """`names` and every model they need, transitively."""
    result: set[K] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in result:
            result.add(name)
            todo.extend(deps.get(name, ()))
    return result


def load_waves(names: Collection[K], deps: Dependencies[K]) -> tuple[list[list[K]], dict[K, str]]:
    """`names` in waves that load one after the other (the models of a wave in parallel):
    first every model that is no ensemble, then each ensemble after the ensembles among
    `names` that it is made of. Also the ensembles on a cycle, with the reason."""
    waves = [sorted(n for n in names if n not in deps)]
    pending = {n for n in names if n in deps}
    while pending:
        wave = sorted(n for n in pending if not any(d in pending for d in deps[n]))
        if not wave:
            break
        waves.append(wave)
        pending -= set(wave)
    cyclic: dict[K, str] = {}
    for name in sorted(pending):
        path = _cycle_from(name, deps)
        if path is not None:
            cyclic[name] = "circular dependency between ensembles: " + " -> ".join(map(str, path))
    rest = sorted(pending - set(cyclic))
    if rest:  # made of an ensemble on a cycle: they load last, and fail as it is not ready
        waves.append(rest)
    return [wave for wave in waves if wave], cyclic


def _cycle_from(start: K, deps: Dependencies[K]) -> list[K] | None:
    """A path of ensembles from `start` back to itself, if there is one."""
    stack: list[tuple[K, list[K]]] = [(start, [start])]
    seen: set[K] = set()
    while stack:
        name, path = stack.pop()
        for dep in deps.get(name, ()):
            if dep == start:
                return [*path, start]
            if dep in deps and dep not in seen:
                seen.add(dep)
                stack.append((dep, [*path, dep]))
    return None
