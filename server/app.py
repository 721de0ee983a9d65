"""Wiring and process lifecycle: build every component explicitly, start, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import uvloop
from prometheus_client.registry import Collector
from starlette.types import ASGIApp

from inferd.backends.base import BackendSettings
from inferd.backends.gpu import detect_gpus
from inferd.backends.mlserver_metrics import MLServerMetrics
from inferd.backends.pinned_memory import PinnedMemoryPool
from inferd.backends.python_metrics import CustomMetrics
from inferd.backends.registry import BackendRegistry
from inferd.batching.rate_limiter import RateLimiter
from inferd.repository.manager import ModelRepository, RepositorySettings
from inferd.repository.poller import RepositoryPoller
from inferd.repository.remote import RemoteLocation, RemoteRepositories
from inferd.server.cache_config import CacheConfig, LocalCacheConfig, RedisCacheConfig
from inferd.server.core import CoreSettings, InferenceCore
from inferd.server.cuda_shared_memory import CudaIpc
from inferd.server.errors import InferdError
from inferd.server.grpc_app import GrpcServer, grpc_settings, start_grpc_server
from inferd.server.grpc_tls import TlsError
from inferd.server.grpc_transport import GrpcBindError
from inferd.server.http1 import FastRouter
from inferd.server.http_app import HttpFrontDoor, HttpSettings
from inferd.server.http_stacks import HttpPort, HttpStartError, serve_http
from inferd.server.log_settings import LogControl, LogSettings
from inferd.server.metrics import (
    CacheCollector,
    MetricsApp,
    MetricsExporter,
    PinnedMemoryCollector,
    stats_factory,
)
from inferd.server.model_calls import LoopModelCalls
from inferd.server.redis_cache import RedisCache, RedisCacheError
from inferd.server.response_cache import ResponseCache
from inferd.server.sagemaker import SageMakerFrontDoor
from inferd.server.settings import Settings, bundled_examples
from inferd.server.shared_memory import SharedMemoryRegistry
from inferd.server.system_metrics import SystemMetrics, system_metrics
from inferd.server.trace_settings import OPENTELEMETRY_MODE, TraceLevel
from inferd.server.tracing import Tracer
from inferd.server.vertex_ai import VertexAiFrontDoor, default_model

if TYPE_CHECKING:
    from inferd.server.otel_export import OtelExporter

log = logging.getLogger(__name__)


async def _response_cache(config: CacheConfig | None) -> ResponseCache | RedisCache | None:
    if isinstance(config, LocalCacheConfig):
        return ResponseCache(config.size, config.entries)
    if isinstance(config, RedisCacheConfig):
        cache = RedisCache(config)
        await cache.connect()
        return cache
    return None


class StartupError(Exception):
    """The server cannot start (bad repository path, port in use, fatal model failure)."""


class ExitTimeout(Exception):
    """The models did not unload within --exit-timeout-secs of the stop."""


def _bind(address: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # --reuse-http-port: servers that all ask for it share the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {address}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class App:
    """One inferd server process: repository, core and front doors on one event loop."""

    def __init__(self, settings: Settings, registry: BackendRegistry | None = None) -> None:
        self.settings = settings
        self._registry = registry or BackendRegistry()
        self._repository: ModelRepository | None = None
        self._poller: RepositoryPoller | None = None
        self.core: InferenceCore | None = None
        self._http: HttpPort | None = None
        self._sockets: list[socket.socket] = []
        self._grpc: GrpcServer | None = None
        self.http_port = 0
        self.grpc_port = 0
        self._metrics: MetricsExporter | None = None
        self._system: SystemMetrics | None = None
        self._metrics_http: HttpPort | None = None
        self.metrics_port = 0
        self._hosted: list[HttpPort] = []  # the SageMaker and Vertex AI ports
        self.sagemaker_port = 0
        self.vertex_ai_port = 0
        self._remote = RemoteRepositories(dict(os.environ))  # object stores' local copies
        self._cache: ResponseCache | RedisCache | None = None
        # Where MLServer models in stub processes keep their own metrics (MLServerMetrics).
        self._mlserver_metrics: Path | None = None

    async def start(self) -> None:
        settings = self.settings
        roots: list[Path] = []
        namespaces: dict[Path, str] = {}  # with --model-namespacing: the repository as given
        for repository in settings.model_repositories or (bundled_examples(),):
            if isinstance(repository, RemoteLocation):
                try:
                    roots.append(self._remote.add(repository))
                except ValueError as exc:
                    raise StartupError(str(exc)) from None
            elif not repository.is_dir():
                raise StartupError(f"model repository {repository} is not a directory")
            else:
                roots.append(repository)
            namespaces[roots[-1]] = str(repository)
        try:
            await asyncio.to_thread(self._remote.sync)  # the first copy of remote repositories
        except InferdError as exc:
            self._remote.close()
            raise StartupError(exc.message) from None
        if settings.model_control_mode == "poll" and not settings.repository_poll_secs > 0:
            self._remote.close()
            raise StartupError("--repository-poll-secs must be > 0 in poll mode")
        try:  # before any model loads: a Redis that does not answer stops the start, as in Triton
            self._cache = await _response_cache(settings.response_cache)
        except RedisCacheError as exc:
            self._remote.close()
            raise StartupError(str(exc)) from None
        log_control = LogControl(settings.log or LogSettings.from_level(settings.log_level))
        if settings.log is not None:
            log_control.apply()  # Triton's log switches, from the start
        if settings.inert_flags:
            log.warning(
                "accepted for tritonserver compatibility, with no effect in inferd: %s",
                "; ".join(settings.inert_flags),
            )
        loop = asyncio.get_running_loop()
        gpus = await asyncio.to_thread(detect_gpus)
        log.info("GPUs: %s", gpus.describe())
        self._mlserver_metrics = Path(tempfile.mkdtemp(prefix="inferd-mlserver-metrics-"))
        model_calls = LoopModelCalls(loop)  # models calling models (BLS), once the core is up
        custom_metrics = CustomMetrics()  # python models' own metric families
        pinned_memory = PinnedMemoryPool(settings.pinned_memory_pool_bytes)
        self._repository = ModelRepository(
            RepositorySettings(
                roots=tuple(roots),
                namespaces=namespaces if settings.model_namespacing else None,
                refresh=self._remote.sync,
                backend=BackendSettings(
                    default_max_batch_size=settings.default_max_batch_size,
                    auto_complete=settings.auto_complete_config,
                    model_calls=model_calls,
                    custom_metrics=custom_metrics,
                    pinned_memory=pinned_memory,
                    python_isolation=settings.python_isolation,
                    python_inline_us=settings.python_inline_us,
                    mlserver_isolation=settings.mlserver_isolation,
                    mlserver_workers=settings.mlserver_workers,
                    mlserver_metrics_dir=self._mlserver_metrics,
                ),
                gpus=gpus,
                gpu_fallback_to_cpu=settings.gpu_fallback_to_cpu,
                new_stats=stats_factory(settings.metrics_config, settings.allow_metrics),
                config_name=settings.model_config_name,
                load_threads=settings.model_load_thread_count,
                load_retries=settings.model_load_retry_count,
                # One limiter for the server: its resources are shared across models.
                rate_limiter=(
                    RateLimiter(settings.rate_limit.resources)
                    if settings.rate_limit.enabled
                    else None
                ),
            ),
            self._registry,
            loop,
        )
        cache = self._cache
        self.core = InferenceCore(
            self._repository,
            CoreSettings(
                strict_readiness=settings.strict_readiness,
                model_control_mode=settings.model_control_mode,
                server_id=settings.server_id,
            ),
            SharedMemoryRegistry(
                allow_client=settings.allow_client_shm,
                cuda=CudaIpc.load if gpus.count else None,
            ),
            cache,
            log_control,
            Tracer(settings.trace, _otel_exporter(settings)),
        )
        model_calls.serve(self.core)
        if settings.allow_metrics:
            if settings.metrics_interval_ms <= 0:
                raise StartupError("--metrics-interval-ms must be a positive number of ms")
            self._system = system_metrics(settings)
            collectors: list[Collector] = [
                self._system,
                PinnedMemoryCollector(pinned_memory),
                custom_metrics,
                MLServerMetrics(self._mlserver_metrics),
            ]
            if cache is not None:
                collectors.append(
                    CacheCollector(cache, self.core.loaded_versions, settings.metrics_config)
                )
            self._metrics = MetricsExporter(
                self.core.loaded_versions,
                *collectors,
                config=settings.metrics_config,
                response_cache=cache is not None,
            )
        if settings.allow_http:
            await self._start_http(self.core)
        if self._metrics is not None:
            try:
                await self._start_metrics(self._metrics)
            except StartupError:
                await self.stop()
                raise
        if self._system is not None:
            self._system.start()
        if settings.allow_grpc:
            try:
                self._grpc = await start_grpc_server(self.core, grpc_settings(settings))
            except (GrpcBindError, TlsError) as exc:
                await self.stop()
                raise StartupError(str(exc)) from None
            self.grpc_port = self._grpc.port
        if settings.model_control_mode == "poll":
            self._poller = RepositoryPoller(self._repository, settings.repository_poll_secs)
            await self._poller.snapshot()  # before loading: a change during the load is seen
        # Front doors come up first so that liveness answers while models load.
        await self._repository.load_all(self._startup_models())
        failed = self._repository.failed_models()
        if failed and settings.exit_on_error:
            await self.stop()
            names = ", ".join(failed)
            raise StartupError(f"failed to load model(s) {names} and --exit-on-error is true")
        try:  # as in Triton, once the models are loaded: Vertex AI's default model is checked
            await self._start_hosted(self.core)
        except StartupError:
            await self.stop()
            raise
        self.core.mark_started()
        if self._poller is not None:
            self._poller.start()
        log.info(
            "inferd is ready: HTTP on port %s, gRPC on port %s, metrics on port %s%s",
            self.http_port if settings.allow_http else "off",
            self.grpc_port if settings.allow_grpc else "off",
            self.metrics_port if settings.allow_metrics else "off",
            "".join(
                f", {name} on port {port}"
                for name, port in (
                    ("SageMaker", self.sagemaker_port),
                    ("Vertex AI", self.vertex_ai_port),
                )
                if port
            ),
        )

    def _startup_models(self) -> set[str] | None:
        """None = every model; explicit mode loads only the --load-model ones."""
        if self.settings.model_control_mode != "explicit":
            return None
        names = set(self.settings.load_models)
        return None if "*" in names else names

    def _http_front_door(self, core: InferenceCore) -> HttpFrontDoor:
        settings = self.settings
        return HttpFrontDoor(
            core,
            HttpSettings(
                max_input_size=settings.http_max_input_size,
                restricted=settings.http_restricted_api,
                header_forward=settings.http_header_forward,
                stream_buffer_bytes=settings.stream_buffer_bytes,
            ),
            self._metrics,
        )

    async def _start_http(self, core: InferenceCore) -> None:
        settings = self.settings
        sock = _bind(settings.http_address, settings.http_port, settings.reuse_http_port)
        self._sockets.append(sock)
        self.http_port = sock.getsockname()[1]
        app = self._http_front_door(core)
        if settings.http_cors is not None:  # every answer through the middleware: no fast path
            self._http = await self._serve(settings.http_cors.wrap(app), sock)
        else:
            self._http = await self._serve(app, sock, app.fast_route)

    async def _start_hosted(self, core: InferenceCore) -> None:
        """The SageMaker and Vertex AI ports: their routes over an HTTP front door of their own
        (the HTTP port's restrictions and body limit apply, as in Triton)."""
        settings = self.settings
        limit = settings.http_max_input_size
        if settings.sagemaker is not None:
            http = self._http_front_door(core)
            sagemaker = SageMakerFrontDoor(
                http,
                settings.sagemaker,
                core,
                limit,
                http.fast_route,
                settings.http_restricted_api,
            )
            self.sagemaker_port = await self._serve_hosted(
                sagemaker, settings.sagemaker.port, sagemaker.fast_route
            )
        if settings.vertex_ai is not None:
            try:
                model = default_model(settings.vertex_ai, await core.repository_index(True))
            except ValueError as exc:
                raise StartupError(f"failed to start Vertex AI service: {exc}") from None
            http = self._http_front_door(core)
            vertex = VertexAiFrontDoor(http, settings.vertex_ai, model, limit, http.fast_route)
            self.vertex_ai_port = await self._serve_hosted(
                vertex, settings.vertex_ai.port, vertex.fast_route
            )

    async def _serve_hosted(
        self, app: ASGIApp, port: int, fast_route: FastRouter | None = None
    ) -> int:
        sock = _bind(self.settings.http_address, port)
        self._sockets.append(sock)
        self._hosted.append(await self._serve(app, sock, fast_route))
        return int(sock.getsockname()[1])

    async def _start_metrics(self, exporter: MetricsExporter) -> None:
        """Triton's metrics port: a second HTTP server on the same loop."""
        settings = self.settings
        sock = _bind(
            settings.metrics_address or settings.http_address,
            settings.metrics_port,
            settings.reuse_http_port,
        )
        self._sockets.append(sock)
        self.metrics_port = sock.getsockname()[1]
        self._metrics_http = await self._serve(MetricsApp(exporter, settings.metrics_path), sock)

    async def _serve(
        self, app: ASGIApp, sock: socket.socket, fast_route: FastRouter | None = None
    ) -> HttpPort:
        settings = self.settings
        try:
            return await serve_http(
                settings.http_stack, app, sock, settings.http_max_input_size, fast_route
            )
        except HttpStartError as exc:
            raise StartupError(str(exc)) from None

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, then unload every model. Both front
        doors stop accepting at once and drain together, within one --exit-timeout-secs; the
        models get what is left of it to unload, or ExitTimeout is raised."""
        deadline = time.monotonic() + self.settings.exit_timeout_secs
        doors = [door for door in (self._grpc, self._http, *self._hosted) if door is not None]
        self._grpc = self._http = None
        self._hosted.clear()
        await asyncio.gather(*(door.stop(self.settings.exit_timeout_secs) for door in doors))
        if self._poller is not None:
            await self._poller.stop()
            self._poller = None
        if self._repository is not None:
            # At least a second, for idle models' finalize(): a model whose execute() never
            # returns must not keep the server from exiting (Triton exits then too).
            left = max(deadline - time.monotonic(), 1.0)
            try:
                await asyncio.wait_for(self._repository.close(), left)
            except TimeoutError:
                raise ExitTimeout(
                    "Exit timeout expired: a model still runs requests (an execute() that does "
                    "not return?) after --exit-timeout-secs. Exiting immediately."
                ) from None
        self._remote.close()
        if self._mlserver_metrics is not None:  # the stubs are gone
            shutil.rmtree(self._mlserver_metrics, ignore_errors=True)
            self._mlserver_metrics = None
        if isinstance(self._cache, RedisCache):
            await self._cache.close()  # after the drain: its last inserts go through
        self._cache = None
        if self.core is not None:
            self.core.shared_memory.close()
            self.core.logging.close()
            self.core.tracing.close()
        # Metrics go last, so that scrapes can watch the drain.
        if self._metrics_http is not None:
            await self._metrics_http.stop(1.0)
            self._metrics_http = None
        if self._system is not None:
            await asyncio.to_thread(self._system.stop)
            self._system = None
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def serve_until_signalled(self) -> None:
        """Serve until SIGINT or SIGTERM. A signal while the models still load at start-up
        stops the server too, as it stops Triton. Loads still running once the server has
        stopped (a model's initialize() cannot be interrupted on its thread) are abandoned:
        the process exits without waiting for them."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.ensure_future(self.start())
        signalled = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a StartupError
                await signalled
                log.info("shutting down: draining in-flight requests")
            else:
                log.info("shutting down while models load at start-up")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            signalled.cancel()
            await self.stop()
        if self._repository is not None and self._repository.loading:
            log.info("a model's load still runs: abandoned")
            _exit_now(0)  # its loader thread would hold a normal exit


def run(settings: Settings) -> int:
    """Run a server until SIGINT/SIGTERM; the exit code for the CLI."""
    try:
        uvloop.run(App(settings).serve_until_signalled())
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except ExitTimeout as exc:
        log.error("%s", exc)
        _exit_now(1)  # an instance thread still in execute() would hold a normal exit
    return 0


def _exit_now(code: int) -> NoReturn:
    """Exit without waiting for threads that cannot be stopped, the log written out first."""
    logging.shutdown()
    os._exit(code)


def _otel_exporter(settings: Settings) -> OtelExporter | None:
    """The span exporter of `--trace-config mode=opentelemetry` (None in Triton's file mode)."""
    if settings.trace.mode != OPENTELEMETRY_MODE:
        return None
    if TraceLevel.TENSORS in settings.trace.level:
        log.warning("the opentelemetry trace mode records timestamps only, not TENSORS")
    try:
        from inferd.server.otel_export import OtelExporter
    except ImportError as exc:
        raise StartupError(
            "--trace-config mode=opentelemetry needs the opentelemetry packages: "
            f"pip install 'inferd[otel]' ({exc})"
        ) from None
    return OtelExporter(settings.trace_otel)
