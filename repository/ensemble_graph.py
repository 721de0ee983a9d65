"""The dataflow of an ensemble, with no models in it: which step writes each tensor, which steps
read it, whether the steps can all run (no tensor read that nothing writes, no cycle), which
steps a request needs for the outputs it asks for, and per request which steps may run now.

Pure: plain names and step indices, unit-tested without a server.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

# A step as the graph sees it: the ensemble tensors it reads and those it writes.
StepTensors = tuple[Sequence[str], Sequence[str]]


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps one kind of request runs (those its requested outputs need)."""

    steps: tuple[int, ...]
    first: tuple[int, ...]  # needed steps that read only ensemble inputs: they start at once
    waiting: tuple[int, ...]  # per step: how many tensors it reads that steps write (0 if unused)


class EnsembleGraph:
    def __init__(
        self, steps: Sequence[StepTensors], inputs: Sequence[str], outputs: Sequence[str]
    ) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.reads = tuple(frozenset(reads) for reads, _ in steps)
        self.writes = tuple(tuple(writes) for _, writes in steps)
        self.producer: dict[str, int] = {}
        for index, writes in enumerate(self.writes):
            for tensor in writes:
                self.producer.setdefault(tensor, index)
        readers: dict[str, list[int]] = {}
        for index, reads in enumerate(self.reads):
            for tensor in sorted(reads):
                readers.setdefault(tensor, []).append(index)
        self.readers = {tensor: tuple(steps) for tensor, steps in readers.items()}

    # ---- checks at load ----------------------------------------------------------------------

    def runnable(self) -> list[int]:
        """The steps that can ever run, in an order where each comes after the steps whose
        outputs it reads."""
        available = set(self.inputs)
        waiting = [len(reads - available) for reads in self.reads]
        ready = [i for i, count in enumerate(waiting) if count == 0]
        order: list[int] = []
        while ready:
            step = ready.pop(0)
            order.append(step)
            for tensor in self.writes[step]:
                for reader in self.readers.get(tensor, ()):
                    waiting[reader] -= 1
                    if waiting[reader] == 0:
                        ready.append(reader)
        return order

    def dataflow_error(self, ensemble: str, labels: Sequence[str]) -> str:
        """Why the steps cannot serve the ensemble's outputs ("" = they can). `labels` name
        the steps in messages."""
        read = {tensor for reads in self.reads for tensor in reads}
        for name in self.inputs:
            if name not in read:
                return f"ensemble input '{name}' for ensemble '{ensemble}' is not used"
        known = set(self.inputs) | set(self.producer)
        for index, reads in enumerate(self.reads):
            for tensor in sorted(reads - known):
                return (
                    f"step {labels[index]} of ensemble '{ensemble}' reads ensemble tensor "
                    f"'{tensor}', which is neither an ensemble input nor written by any step"
                )
        order = self.runnable()
        if len(order) < len(self.reads):
            cycle = self._cycle(set(range(len(self.reads))) - set(order))
            return (
                f"circular dependency in ensemble '{ensemble}': steps "
                + " -> ".join(labels[i] for i in cycle)
                + " wait for each other's outputs"
            )
        for name in self.outputs:
            if name not in self.producer:
                return f"output '{name}' for ensemble '{ensemble}' is not written"
        outputs = set(self.outputs)
        for tensor in self.producer:
            if tensor not in read and tensor not in outputs:
                return f"ensemble tensor '{tensor}' is unused in ensemble '{ensemble}'"
        return ""

    def _cycle(self, stuck: set[int]) -> list[int]:
        """A cycle among steps that never run (each reads what a stuck step writes)."""
        step = min(stuck)
        seen: list[int] = []
        while step not in seen:
            seen.append(step)
            step = min(self.producer[t] for t in self.reads[step] if self.producer.get(t) in stuck)
        return [*seen[seen.index(step) :], step]

    # ---- at request time -------------------------------------------------------------------

    def plan(self, requested: Collection[str] | None = None) -> Plan:
        """The steps needed for the `requested` ensemble outputs (None = all of them): a step
        whose outputs nothing needed reads is left out, as Triton prunes it."""
        wanted = list(self.outputs if requested is None else requested)
        needed: set[int] = set()
        while wanted:
            step = self.producer.get(wanted.pop())
            if step is None or step in needed:
                continue
            needed.add(step)
            wanted.extend(self.reads[step])
        steps = tuple(sorted(needed))
        waiting = [0] * len(self.reads)
        for step in steps:
            waiting[step] = sum(1 for t in self.reads[step] if t in self.producer)
        first = tuple(step for step in steps if waiting[step] == 0)
        return Plan(steps, first, tuple(waiting))

    def subplan(self, steps: Collection[int]) -> Plan:
        """A plan of `steps` alone: what they read from other steps counts as there already."""
        inside = frozenset(steps)
        waiting = [0] * len(self.reads)
        for step in inside:
            waiting[step] = sum(1 for t in self.reads[step] if self.producer.get(t) in inside)
        ordered = tuple(sorted(inside))
        return Plan(ordered, tuple(s for s in ordered if waiting[s] == 0), tuple(waiting))

    def after(self, step: int) -> frozenset[int]:
        """The steps that read, directly or not, what `step` writes."""
        found: set[int] = set()
        todo = [step]
        while todo:
            for tensor in self.writes[todo.pop()]:
                for reader in self.readers.get(tensor, ()):
                    if reader not in found:
                        found.add(reader)
                        todo.append(reader)
        return frozenset(found)

    def before(self, step: int) -> frozenset[int]:
        """The steps whose outputs `step` reads, directly or not."""
        found: set[int] = set()
        todo = [step]
        while todo:
            for tensor in self.reads[todo.pop()]:
                producer = self.producer.get(tensor)
                if producer is not None and producer not in found:
                    found.add(producer)
                    todo.append(producer)
        return frozenset(found)

    def decoupled_error(self, step: int, ensemble: str, labels: Sequence[str]) -> str:
        """Why `step`, a decoupled model, cannot stream the ensemble's responses ("" = it can).
        Each of its responses runs the steps after it once, with what was there before it ran:
        so every ensemble output comes from it or from a step after it, and a step after it
        reads nothing from a step that runs beside it."""
        branch = self.after(step) | {step}
        known = self.before(step) | branch
        for name in self.outputs:
            if self.producer[name] not in branch:
                return (
                    f"in ensemble '{ensemble}', output '{name}' is written by step "
                    f"{labels[self.producer[name]]}, which does not come after decoupled step "
                    f"{labels[step]}: each response of that step makes one ensemble response"
                )
        for reader in sorted(branch - {step}):
            for tensor in sorted(self.reads[reader]):
                producer = self.producer.get(tensor)
                if producer is not None and producer not in known:
                    return (
                        f"in ensemble '{ensemble}', step {labels[reader]} after decoupled step "
                        f"{labels[step]} reads '{tensor}' from step {labels[producer]}, which "
                        "runs beside it"
                    )
        return ""


class Progress:
    """One request's way through its plan: which steps may run once a step has finished."""

    __slots__ = ("_graph", "_left", "_waiting")

    def __init__(self, graph: EnsembleGraph, plan: Plan) -> None:
        self._graph = graph
        self._waiting = list(plan.waiting)
        self._left = len(plan.steps)

    @property
    def done(self) -> bool:
        return self._left == 0

    def finished(self, step: int) -> list[int]:
        """Step `step` wrote its outputs: the steps that may run now."""
        self._left -= 1
        ready: list[int] = []
        waiting = self._waiting
        for tensor in self._graph.writes[step]:
            for reader in self._graph.readers.get(tensor, ()):
                if waiting[reader] > 0:
                    waiting[reader] -= 1
                    if waiting[reader] == 0:
                        ready.append(reader)
        return ready
