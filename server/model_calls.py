"""Calls from model code to other models of the same server (Triton's business logic
scripting, BLS): a model instance's thread hands an InferRequest to the core on the event loop
and waits for the answer, which goes through the called model's scheduler like any request."""

from __future__ import annotations

import asyncio
from typing import Protocol

from inferd.server.errors import internal, unavailable
from inferd.server.types import InferRequest, InferResponse


class Infers(Protocol):
    async def infer(self, request: InferRequest) -> InferResponse: ...


class LoopModelCalls:
    """The server's end of BLS. Built before the core (backends get it at load), so the core
    is attached once it exists (`serve`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._core: Infers | None = None

    def serve(self, core: Infers) -> None:
        self._core = core

    def infer(self, request: InferRequest) -> InferResponse:
        """From an instance thread: blocks that thread until the answer is in."""
        if self._loop_thread():
            # The loop would wait for itself; python instances never run on it, so this is a bug.
            raise internal("a model called another model from the event loop's thread")
        return asyncio.run_coroutine_threadsafe(self._infer(request), self._loop).result()

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """From a coroutine on another loop (an instance's own loop, for async execute())."""
        future = asyncio.run_coroutine_threadsafe(self._infer(request), self._loop)
        return await asyncio.wrap_future(future)

    async def _infer(self, request: InferRequest) -> InferResponse:
        if self._core is None:
            raise unavailable("the server is still starting: no model can be called yet")
        return await self._core.infer(request)

    def _loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no loop runs on this thread
            return False
