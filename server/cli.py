"""`inferd serve ...`: Triton's flag spellings, each also settable as an INFERD_* variable."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inferd.server.flag_values import parse_backend_config, parse_trace_flags
from inferd.server.response_cache import parse_cache_config
from inferd.server.settings import GrpcChannel, Settings

ENV_PREFIX = "INFERD_"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class _Parser:
    """Adds flags whose default comes from the matching INFERD_* variable."""

    def __init__(self, parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
        self.parser = parser
        self.environ = environ

    def add(
        self,
        flag: str,
        *aliases: str,
        type: Callable[[str], Any] = str,
        default: Any = None,
        help: str,
        multiple: bool = False,
        env_separator: str | None = ",",
        **kwargs: Any,
    ) -> None:
        """`env_separator` splits a `multiple` flag's variable into values (None: whitespace,
        for values that contain commas themselves)."""
        env = _env_name(flag)
        raw = self.environ.get(env)
        if raw is not None:
            try:
                values = raw.split(env_separator)
                default = [type(v) for v in values if v] if multiple else type(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                self.parser.error(f"{env}={raw!r}: {exc}")
        shown = f"{help} [env {env}; default: {default if default not in (None, []) else 'none'}]"
        if multiple:
            kwargs.setdefault("action", "append")
        if type is parse_bool:
            kwargs.setdefault("nargs", "?")
            kwargs.setdefault("const", True)
        self.parser.add_argument(flag, *aliases, type=type, default=default, help=shown, **kwargs)


def _knative_port(p: _Parser) -> int | None:
    """The port Knative (or Cloud Run) tells the container to serve on, from $PORT: the HTTP
    port's default, below INFERD_HTTP_PORT and the flag."""
    raw = p.environ.get("PORT")
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        p.parser.error(f"PORT={raw!r}: not a port number")


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferd",
        description="A GPU-optimized inference server for Triton model repositories, speaking "
        "the KServe v2 / Triton HTTP protocol.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve a model repository (default: the bundled examples)",
        description="Serve one or more Triton-layout model repositories. Flags are spelt as "
        "Triton's; booleans take true/false.",
    )
    p = _Parser(serve, dict(os.environ if environ is None else environ))
    d, g = Settings(), GrpcChannel()
    p.add(
        "--model-repository",
        "--model-store",
        dest="model_repository",
        type=Path,
        multiple=True,
        help="model repository root (repeatable); none = the bundled examples",
    )
    p.add("--http-address", default=d.http_address, help="HTTP bind address")
    p.add(
        "--http-port",
        type=int,
        default=_knative_port(p) or d.http_port,
        help="HTTP port (0 = any free port; $PORT, which Knative sets, stands for Triton's 8000)",
    )
    p.add("--grpc-address", default=d.grpc_address, help="gRPC bind address")
    p.add("--grpc-port", type=int, default=d.grpc_port, help="gRPC port")
    p.add("--metrics-port", type=int, default=d.metrics_port, help="metrics port")
    p.add("--allow-http", type=parse_bool, default=d.allow_http, help="serve HTTP")
    p.add("--allow-grpc", type=parse_bool, default=d.allow_grpc, help="serve gRPC")
    p.add(
        "--allow-metrics",
        type=parse_bool,
        default=d.allow_metrics,
        help="serve Prometheus metrics on --metrics-port and at /metrics on the HTTP port",
    )
    p.add(
        "--allow-gpu-metrics",
        type=parse_bool,
        default=d.allow_gpu_metrics,
        help="export GPU metrics read through NVML (needs nvidia-ml-py)",
    )
    p.add(
        "--allow-cpu-metrics",
        type=parse_bool,
        default=d.allow_cpu_metrics,
        help="export CPU utilization and memory metrics",
    )
    p.add(
        "--metrics-address",
        default=d.metrics_address,
        help="metrics bind address (empty: the --http-address)",
    )
    p.add(
        "--metrics-interval-ms",
        type=int,
        default=d.metrics_interval_ms,
        help="how often CPU and GPU metrics are sampled, in ms",
    )
    p.add(
        "--model-control-mode",
        choices=["none", "explicit", "poll"],
        default=d.model_control_mode,
        help="none: load every model at start; poll: also reload what changes on disk every "
        "--repository-poll-secs; explicit: load only --load-model models, then what the "
        "repository API asks",
    )
    p.add(
        "--repository-poll-secs",
        type=float,
        default=d.repository_poll_secs,
        help="poll mode: seconds between repository rescans (fractions allowed)",
    )
    p.add("--load-model", multiple=True, help="explicit mode: model to load at start ('*' = all)")
    p.add(
        "--strict-readiness",
        type=parse_bool,
        default=d.strict_readiness,
        help="ready only when every model is ready (false: ready once the server is up)",
    )
    p.add(
        "--allow-client-shm",
        type=parse_bool,
        default=d.allow_client_shm,
        help="let clients register system shared-memory regions and pass tensors through them",
    )
    p.add(
        "--cache-config",
        multiple=True,
        env_separator=None,
        help="response cache, Triton's spelling: local,size=BYTES (models opt in with "
        "response_cache { enable: true })",
    )
    p.add(
        "--response-cache-byte-size",
        type=int,
        default=0,
        help="deprecated Triton spelling of --cache-config local,size=BYTES",
    )
    p.add(
        "--trace-config",
        multiple=True,
        env_separator=None,
        help="request tracing, Triton's spelling: level=TIMESTAMPS|TENSORS|OFF (repeatable), "
        "rate=N (every Nth request), count=N (-1: no limit), triton,file=PATH, "
        "triton,log-frequency=N (a numbered file every N traces)",
    )
    for flag, what in (
        ("--trace-file", "triton,file=PATH"),
        ("--trace-rate", "rate=N"),
        ("--trace-count", "count=N"),
        ("--trace-log-frequency", "triton,log-frequency=N"),
    ):
        p.add(flag, help=f"deprecated Triton spelling of --trace-config {what}")
    p.add(
        "--trace-level",
        multiple=True,
        help="deprecated Triton spelling of --trace-config level=LEVEL",
    )
    p.add(
        "--exit-on-error",
        type=parse_bool,
        default=d.exit_on_error,
        help="exit if a model fails to load at start-up",
    )
    p.add(
        "--exit-timeout-secs",
        type=float,
        default=d.exit_timeout_secs,
        help="on shutdown, wait this long for in-flight requests",
    )
    p.add(
        "--disable-auto-complete-config",
        type=parse_bool,
        default=False,
        help="do not complete configs from the model files",
    )
    p.add(
        "--strict-model-config",
        type=parse_bool,
        default=False,
        help="deprecated spelling of --disable-auto-complete-config",
    )
    p.add(
        "--backend-config",
        multiple=True,
        env_separator=None,
        help="BACKEND,SETTING=VALUE (e.g. onnxruntime,default-max-batch-size=8)",
    )
    p.add(
        "--gpu-fallback",
        choices=["none", "cpu"],
        default="none",
        help="KIND_GPU models with no usable GPU: fail to load (none) or run on the CPU",
    )
    p.add(
        "--http-max-input-size",
        type=int,
        default=d.http_max_input_size,
        help="largest accepted HTTP request body, in bytes",
    )
    p.add(
        "--http-stack",
        choices=["inferd", "uvicorn"],
        default=d.http_stack,
        help="what carries the HTTP and metrics ports: inferd's HTTP/1.1 server (fast) or uvicorn",
    )
    p.add(
        "--grpc-max-message-size",
        type=int,
        default=g.max_message_size,
        help="largest gRPC message received or sent, in bytes",
    )
    p.add(
        "--grpc-keepalive-time",
        type=int,
        default=g.keepalive_time_ms,
        help="gRPC: ms between keepalive pings on a transport",
    )
    p.add(
        "--grpc-keepalive-timeout",
        type=int,
        default=g.keepalive_timeout_ms,
        help="gRPC: ms to wait for a keepalive ping's acknowledgement before closing",
    )
    p.add(
        "--grpc-keepalive-permit-without-calls",
        type=parse_bool,
        default=g.keepalive_permit_without_calls,
        help="gRPC: allow keepalive pings when no call is in flight",
    )
    p.add(
        "--grpc-http2-max-pings-without-data",
        type=int,
        default=g.http2_max_pings_without_data,
        help="gRPC: pings allowed without data/header frames (0 = no limit)",
    )
    p.add(
        "--grpc-http2-min-recv-ping-interval-without-data",
        type=int,
        default=g.http2_min_recv_ping_interval_without_data_ms,
        help="gRPC: shortest ms between received pings without data before a ping strike",
    )
    p.add(
        "--grpc-http2-max-ping-strikes",
        type=int,
        default=g.http2_max_ping_strikes,
        help="gRPC: bad pings tolerated before GOAWAY (0 = any number)",
    )
    p.add(
        "--grpc-max-connection-age",
        type=int,
        default=g.max_connection_age_ms,
        help="gRPC: ms a connection may live (0 = unlimited)",
    )
    p.add(
        "--grpc-max-connection-age-grace",
        type=int,
        default=g.max_connection_age_grace_ms,
        help="gRPC: ms granted to calls after the connection's max age (0 = unlimited)",
    )
    p.add(
        "--grpc-max-concurrent-streams",
        type=int,
        default=g.max_concurrent_streams,
        help="gRPC: concurrent calls per connection (0 = gRPC's default)",
    )
    p.add(
        "--grpc-stack",
        choices=["inferd", "grpcio"],
        default=d.grpc_stack,
        help="what carries the gRPC port: inferd's own HTTP/2 layer (fast) or grpc.aio",
    )
    p.add(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=d.log_level,
        help="log level",
    )
    p.add("--log-verbose", type=int, default=0, help="Triton spelling: > 0 means --log-level=debug")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Raises ValueError for values argparse cannot check on its own."""
    backend_config = parse_backend_config(args.backend_config or [])
    raw_max_batch = backend_config.get("onnxruntime", {}).get(
        "default-max-batch-size", backend_config.get("", {}).get("default-max-batch-size", "4")
    )
    if not raw_max_batch.isdigit():
        raise ValueError(
            f"default-max-batch-size must be a non-negative integer: {raw_max_batch!r}"
        )
    max_batch = int(raw_max_batch)
    return Settings(
        model_repositories=tuple(args.model_repository or ()),
        http_address=args.http_address,
        http_port=args.http_port,
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_http=args.allow_http,
        allow_grpc=args.allow_grpc,
        allow_metrics=args.allow_metrics,
        metrics_address=args.metrics_address,
        allow_gpu_metrics=args.allow_gpu_metrics,
        allow_cpu_metrics=args.allow_cpu_metrics,
        metrics_interval_ms=args.metrics_interval_ms,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        load_models=tuple(args.load_model or ()),
        strict_readiness=args.strict_readiness,
        allow_client_shm=args.allow_client_shm,
        response_cache_bytes=parse_cache_config(
            args.cache_config or (), args.response_cache_byte_size
        ).size,
        exit_on_error=args.exit_on_error,
        exit_timeout_secs=args.exit_timeout_secs,
        auto_complete_config=not (args.disable_auto_complete_config or args.strict_model_config),
        default_max_batch_size=max_batch,
        gpu_fallback_to_cpu=args.gpu_fallback == "cpu",
        http_max_input_size=args.http_max_input_size,
        http_stack=args.http_stack,
        grpc_channel=GrpcChannel(
            max_message_size=args.grpc_max_message_size,
            keepalive_time_ms=args.grpc_keepalive_time,
            keepalive_timeout_ms=args.grpc_keepalive_timeout,
            keepalive_permit_without_calls=args.grpc_keepalive_permit_without_calls,
            http2_max_pings_without_data=args.grpc_http2_max_pings_without_data,
            http2_min_recv_ping_interval_without_data_ms=(
                args.grpc_http2_min_recv_ping_interval_without_data
            ),
            http2_max_ping_strikes=args.grpc_http2_max_ping_strikes,
            max_connection_age_ms=args.grpc_max_connection_age,
            max_connection_age_grace_ms=args.grpc_max_connection_age_grace,
            max_concurrent_streams=args.grpc_max_concurrent_streams,
        ),
        grpc_stack=args.grpc_stack,
        log_level="debug" if args.log_verbose > 0 else args.log_level,
        trace=parse_trace_flags(
            args.trace_config or (),
            file=args.trace_file,
            levels=args.trace_level or (),
            rate=args.trace_rate,
            count=args.trace_count,
            log_frequency=args.trace_log_frequency,
        ),
        backend_config=backend_config,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "serve")  # `inferd --model-repository=...` as one would call tritonserver
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 2
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from inferd.server.app import run  # imported late: `--help` stays instant

    return run(settings)
