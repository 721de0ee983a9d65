"""Triton's rate limiter (`--rate-limit=execution_count`): an instance runs a batch only once the
resources its instance group lists are free, and among the instances waiting for them the one
that has run least, weighted by its priority, goes first.

Resources are counted per device (a per-device resource exists once on every device; CPU
instances count as device 0, as in Triton) or once for the whole server (`global: true`). What
is available is the largest count any registered instance asks for, unless `--rate-limit-resource`
sets it; a model whose instances need more than that fails to load.

Pure and thread-safe: instance threads block in `acquire()`; nothing here knows asyncio.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from inferd.server.errors import invalid

# (device id, or None for a global resource; resource name)
ResourceKey = tuple[int | None, str]


@dataclass(frozen=True, slots=True)
class ExplicitResource:
    """One `--rate-limit-resource=<name>:<count>[:<device>]`."""

    name: str
    count: int
    device: int | None = None  # None: the same count on every device


@dataclass(frozen=True, slots=True)
class InstanceNeeds:
    """What one model instance needs before each batch."""

    name: str  # for logs and errors
    device: int  # the instance's device id (0 for CPU instances)
    resources: Mapping[str, tuple[int, bool]]  # resource name -> (count, global)
    priority: int = 0  # 0 counts as 1

    def keyed(self) -> dict[ResourceKey, int]:
        return {
            (None if is_global else self.device, name): count
            for name, (count, is_global) in self.resources.items()
        }


@dataclass(eq=False, slots=True)
class Ticket:
    """An instance's registration: what it needs and how often it ran. The limiter's lock
    guards every field."""

    limiter: RateLimiter
    name: str
    needs: dict[ResourceKey, int]
    priority: int
    executions: int = 0
    registered: bool = True
    granted: threading.Event = field(default_factory=threading.Event)
    holding: bool = False


class RateLimiter:
    def __init__(self, explicit: Sequence[ExplicitResource] = ()) -> None:
        self._explicit: dict[ResourceKey, int] = {}
        for resource in explicit:
            key = (resource.device, resource.name)
            # A resource given twice for the same device: the smaller count (as Triton).
            self._explicit[key] = min(resource.count, self._explicit.get(key, resource.count))
        self._lock = threading.Lock()
        self._tickets: list[Ticket] = []
        self._limits: dict[ResourceKey, int] = {}
        self._held: dict[ResourceKey, int] = {}
        # Waiting tickets: (executions x priority, arrival, ticket); the smallest goes first.
        self._waiting: list[tuple[int, int, Ticket]] = []
        self._arrivals = itertools.count()

    # ---- registration (model load and unload) -----------------------------------------------

    def register(self, instances: Sequence[InstanceNeeds]) -> list[Ticket]:
        """Register a model version's instances, all or none. Raises the load error Triton
        gives when they cannot all be scheduled with the available resources."""
        tickets = [Ticket(self, i.name, i.keyed(), max(1, i.priority)) for i in instances]
        with self._lock:
            limits = self._compute_limits([*self._tickets, *tickets])
            self._tickets.extend(tickets)
            self._limits = limits
            self._grant()  # larger limits may let a waiting instance run
        return tickets

    def deregister(self, tickets: Iterable[Ticket]) -> None:
        """Forget instances that no longer run (their threads have ended)."""
        with self._lock:
            gone = {id(t) for t in tickets}
            for ticket in self._tickets:
                if id(ticket) in gone:
                    ticket.registered = False
            self._tickets = [t for t in self._tickets if id(t) not in gone]
            # Fewer instances need no more than before: this cannot fail.
            self._limits = self._compute_limits(self._tickets)

    def limits(self) -> dict[ResourceKey, int]:
        """The available count of every resource (for logs and tests)."""
        with self._lock:
            return dict(self._limits)

    def _compute_limits(self, tickets: Sequence[Ticket]) -> dict[ResourceKey, int]:
        needed: dict[ResourceKey, int] = {}
        for ticket in tickets:
            for key, count in ticket.needs.items():
                needed[key] = max(count, needed.get(key, 0))
        global_names = {name for device, name in needed if device is None}
        for device, name in needed:
            if device is not None and name in global_names:
                raise invalid(
                    f'Resource "{name}" is present as both global and device-specific '
                    "resource in the model configuration."
                )
        if not self._explicit:
            return needed
        limits: dict[ResourceKey, int] = {}
        for key, count in needed.items():
            available = self._explicit_count(key)
            if available < count:
                raise invalid(
                    f'Resource count for "{key[1]}" is limited to {available} which will '
                    "prevent scheduling of one or more model instances, the minimum required "
                    f"count is {count}"
                )
            limits[key] = available
        return limits

    def _explicit_count(self, key: ResourceKey) -> int:
        """What the flags give a resource; 0 when they name it not (once any flag is given,
        every resource must be)."""
        device, name = key
        if device is None:  # global: the largest count given for it on any device
            counts = [c for (_, n), c in self._explicit.items() if n == name]
        else:
            # the count for this device, or for every device
            counts = [
                c for (d, n), c in self._explicit.items() if n == name and d in (None, device)
            ]
        return max(counts, default=0)

    # ---- execution (instance threads) -------------------------------------------------------

    def request(self, ticket: Ticket) -> threading.Event:
        """Queue `ticket` for its resources without blocking; the event is set once they are
        granted (at once when they are free and nobody goes before it)."""
        with self._lock:
            if ticket.holding or not ticket.registered:
                raise RuntimeError(f"rate limiter: instance {ticket.name} cannot ask now")
            self._enqueue(ticket)
        return ticket.granted

    def acquire(self, ticket: Ticket) -> None:
        """Block the calling instance thread until `ticket`'s resources are granted."""
        self.request(ticket).wait()

    def release(self, ticket: Ticket) -> None:
        """The batch ran: free the resources, count the execution, grant waiting instances."""
        with self._lock:
            self._free(ticket)
            self._grant()

    def requeue(self, ticket: Ticket) -> threading.Event:
        """The batch ran and the instance has its next one: release and ask again at once, so
        that it competes with the waiting instances by its new score (as Triton stages again
        an instance with more work before it allocates)."""
        with self._lock:
            self._free(ticket)
            self._enqueue(ticket)
        return ticket.granted

    def _enqueue(self, ticket: Ticket) -> None:
        ticket.granted.clear()
        score = ticket.executions * ticket.priority
        heapq.heappush(self._waiting, (score, next(self._arrivals), ticket))
        self._grant()

    def _free(self, ticket: Ticket) -> None:
        if not ticket.holding:
            raise RuntimeError(f"rate limiter: instance {ticket.name} holds nothing")
        ticket.holding = False
        ticket.executions += 1
        for key, count in ticket.needs.items():
            self._held[key] -= count

    def _grant(self) -> None:
        """Grant waiting tickets in order while the first one fits: like Triton, one that
        does not fit holds back those behind it, so that large needs are not starved."""
        while self._waiting:
            ticket = self._waiting[0][2]
            if not self._fits(ticket):
                return
            heapq.heappop(self._waiting)
            for key, count in ticket.needs.items():
                self._held[key] = self._held.get(key, 0) + count
            ticket.holding = True
            ticket.granted.set()

    def _fits(self, ticket: Ticket) -> bool:
        held, limits = self._held, self._limits
        return all(
            held.get(key, 0) + count <= limits.get(key, 0) for key, count in ticket.needs.items()
        )


def deregister_all(tickets: Iterable[Ticket]) -> None:
    """Deregister tickets, e.g. of instances closed without ever running."""
    for ticket in tickets:
        ticket.limiter.deregister([ticket])
