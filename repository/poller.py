"""Poll mode: rescan the repository roots every interval and hand the models whose folder
changed (see fingerprint.py) to the manager."""

from __future__ import annotations

import asyncio
import logging

from inferd.repository.fingerprint import Fingerprint, scan
from inferd.repository.layout import ModelId
from inferd.repository.manager import ModelRepository

log = logging.getLogger(__name__)


class RepositoryPoller:
    def __init__(self, repository: ModelRepository, interval_s: float) -> None:
        self._repository = repository
        self._interval_s = interval_s
        self._seen: dict[ModelId, Fingerprint] = {}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def snapshot(self) -> None:
        """Take the state the start-up load sees (call it before that load)."""
        self._seen = scan(await asyncio.to_thread(self._repository.locate))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inferd-repository-poller")

    async def stop(self) -> None:
        """Stop polling; a poll under way finishes first, so no load is cut in half."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def poll(self) -> None:
        # One scan (and one listing of remote repositories) per poll, handed to the manager.
        locations = await asyncio.to_thread(self._repository.locate)
        current = await asyncio.to_thread(scan, locations)
        changed = {key for key, fp in current.items() if self._seen.get(key) != fp}
        removed = set(self._seen) - set(current)
        self._seen = current
        if changed or removed:
            log.info(
                "repository poll: %s changed or added, %s removed",
                sorted(map(str, changed)) or "none",
                sorted(map(str, removed)) or "none",
            )
            await self._repository.apply_changes(changed, removed, locations)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)
                return  # stop() was called
            except TimeoutError:
                pass
            try:
                await self.poll()
            except Exception:
                log.exception("repository poll failed; trying again in %g s", self._interval_s)
