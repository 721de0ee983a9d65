"""`inferd serve ...`: Triton's flag spellings, each also settable as an INFERD_* variable."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from inferd.backends.base import PYTHON_ISOLATIONS
from inferd.repository import azure, gcs, s3
from inferd.repository.remote import RemoteLocation
from inferd.server.cache_config import parse_cache_config
from inferd.server.flag_parser import FlagParser, parse_bool
from inferd.server.flag_values import (
    parse_backend_config,
    parse_otel_flags,
    parse_trace_flags,
)
from inferd.server.grpc_tls import grpc_tls
from inferd.server.header_forward import header_forward
from inferd.server.hosted_flags import (
    add_hosted_flags,
    check_ports,
    in_vertex_ai,
    sagemaker_from_args,
    vertex_ai_from_args,
)
from inferd.server.inert_flags import add_inert_flags, inert_flags_given
from inferd.server.log_settings import DEFAULT_FORMAT, LOG_FORMATS, LogSettings
from inferd.server.metrics_config import parse_metrics_config
from inferd.server.mlserver_server_settings import MLServerServerSettings
from inferd.server.mlserver_server_settings import read as read_mlserver
from inferd.server.rate_limit_settings import parse_rate_limit
from inferd.server.restricted_api import parse_restrictions
from inferd.server.settings import GrpcChannel, Settings


def _knative_port(p: FlagParser) -> int | None:
    """The port Knative (or Cloud Run) tells the container to serve on, from $PORT: the HTTP
    port's default, below INFERD_HTTP_PORT and the flag."""
    raw = p.environ.get("PORT")
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        p.parser.error(f"PORT={raw!r}: not a port number")


def build_parser(
    environ: dict[str, str] | None = None,
    mlserver: MLServerServerSettings | None = None,
) -> argparse.ArgumentParser:
    """`mlserver`: MLServer's server settings, whose flag defaults replace inferd's."""
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
    p = FlagParser(serve, dict(os.environ if environ is None else environ))
    serve.set_defaults(environ=p.environ)  # the platform variables settings_from_args reads
    d, g = Settings(), GrpcChannel()
    vertex_ai = in_vertex_ai(p.environ)
    p.add("--id", default=d.server_id, help="the server's name in its metadata")
    p.add(
        "--model-repository",
        "--model-store",
        dest="model_repository",
        type=_repository,
        multiple=True,
        help="model repository root: a folder, s3://[host:port/]bucket/path, "
        "gs://bucket/path or as://account/container/path (repeatable); none = "
        "$AIP_STORAGE_URI, else the bundled examples",
    )
    p.add(
        "--model-config-name",
        type=_config_name,
        default=d.model_config_name,
        help="read <model>/configs/NAME.pbtxt where it exists, else config.pbtxt",
    )
    p.add(
        "--model-load-thread-count",
        type=_positive,
        default=d.model_load_thread_count,
        help="models loaded at once",
    )
    p.add(
        "--model-load-retry-count",
        type=_non_negative,
        default=d.model_load_retry_count,
        help="further tries to load a model that fails to load",
    )
    p.add(
        "--model-namespacing",
        type=parse_bool,
        default=d.model_namespacing,
        help="models of the same name may live in several repositories, each in its own "
        "(a request must name a model only one repository holds; ensembles use their own's)",
    )
    p.add("--http-address", default=d.http_address, help="HTTP bind address")
    p.add(
        "--reuse-http-port",
        type=parse_bool,
        default=d.reuse_http_port,
        help="SO_REUSEPORT on the HTTP and metrics ports: servers that all set it share them",
    )
    p.add(
        "--http-restricted-api",
        multiple=True,
        env_separator=None,
        help="API[,API...]:KEY=VALUE: those HTTP APIs (health, metadata, inference, "
        "shared-memory, model-config, model-repository, statistics, trace, logging) answer 403 "
        "unless the request has header KEY: VALUE",
    )
    p.add(
        "--http-header-forward-pattern",
        default="",
        help="headers whose names match this regular expression (searched for, without regard "
        "to case unless it starts with (?-i)) reach the model as string request parameters",
    )
    p.add(
        "--http-port",
        type=int,
        default=_knative_port(p) or d.http_port,
        help="HTTP port (0 = any free port; $PORT, which Knative sets, stands for Triton's 8000)",
    )
    p.add("--grpc-address", default=d.grpc_address, help="gRPC bind address")
    p.add("--grpc-port", type=int, default=d.grpc_port, help="gRPC port")
    p.add(
        "--reuse-grpc-port",
        type=parse_bool,
        default=g.reuse_port,
        help="SO_REUSEPORT on the gRPC port: servers that all set it share it",
    )
    p.add(
        "--grpc-restricted-protocol",
        multiple=True,
        env_separator=None,
        help="PROTOCOL[,PROTOCOL...]:KEY=VALUE: those RPC groups (as --http-restricted-api) "
        "answer UNAVAILABLE unless the call has metadata triton-grpc-protocol-KEY: VALUE",
    )
    p.add("--grpc-use-ssl", type=parse_bool, default=False, help="TLS on the gRPC port")
    p.add(
        "--grpc-use-ssl-mutual",
        type=parse_bool,
        default=False,
        help="TLS on the gRPC port, and clients must present a certificate --grpc-root-cert signed",
    )
    p.add("--grpc-server-cert", help="PEM file: the gRPC port's certificate (chain)")
    p.add("--grpc-server-key", help="PEM file: that certificate's private key")
    p.add("--grpc-root-cert", help="PEM file: the CA certificates that client certificates need")
    p.add(
        "--grpc-header-forward-pattern",
        default="",
        help="as --http-header-forward-pattern, for gRPC request metadata",
    )
    p.add(
        "--stream-buffer-byte-size",
        type=_positive,
        default=d.stream_buffer_bytes,
        help="bytes of a gRPC stream's (or a generate_stream request's) responses that may wait "
        "for a client that reads them slowly; past it the stream ends (RESOURCE_EXHAUSTED, or "
        "an error event) and its requests are cancelled",
    )
    p.add("--metrics-port", type=int, default=d.metrics_port, help="metrics port")
    p.add(
        "--allow-http",
        type=parse_bool,
        default=d.allow_http and not vertex_ai,
        help="serve HTTP (default: true, false when AIP_MODE=PREDICTION)",
    )
    p.add(
        "--allow-grpc",
        type=parse_bool,
        default=d.allow_grpc and not vertex_ai,
        help="serve gRPC (default: true, false when AIP_MODE=PREDICTION)",
    )
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
        "--metrics-config",
        multiple=True,
        env_separator=None,
        help="per-model latency metrics, Triton's spelling (repeatable): "
        "counter_latencies=true|false (the *_duration_us counters, default true), "
        "summary_latencies=true|false (*_summary_us summaries over the last minute, default "
        "false), summary_quantiles=Q:ERR,... (default 0.5:0.05,0.9:0.01,0.95:0.001,"
        "0.99:0.001,0.999:0.001)",
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
        help="response cache, Triton's spelling: local,size=BYTES, or Redis shared by replicas: "
        "redis,host=H and redis,port=P (and user, password, db, connect_timeout, socket_timeout, "
        "pool_size, wait_timeout, tls_enabled, cert, key, cacert, cacert_dir, sni); models opt "
        "in with response_cache { enable: true }",
    )
    p.add(
        "--pinned-memory-pool-byte-size",
        type=_non_negative,
        default=d.pinned_memory_pool_bytes,
        help="page-locked host memory for GPU instances' staging buffers (pageable beyond it; "
        "0 = none)",
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
        "rate=N (every Nth request), count=N (-1: no limit), mode=triton|opentelemetry, "
        "triton,file=PATH, triton,log-frequency=N (a numbered file every N traces), "
        "opentelemetry,url=URL (OTLP/HTTP), opentelemetry,resource=KEY=VALUE, "
        "opentelemetry,bsp_max_queue_size|bsp_schedule_delay|bsp_max_export_batch_size=N",
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
        help="BACKEND,SETTING=VALUE (onnxruntime,default-max-batch-size=8; "
        "python,isolation=process; python,inline-execution-us=250)",
    )
    p.add(
        "--gpu-fallback",
        choices=["none", "cpu"],
        default="none",
        help="KIND_GPU models with no usable GPU: fail to load (none) or run on the CPU",
    )
    p.add(
        "--rate-limit",
        default="off",
        help="off: instances run as soon as they are free; execution_count: an instance runs "
        "once the resources of its instance group's rate_limiter are free, least run first "
        "(weighted by priority)",
    )
    p.add(
        "--rate-limit-resource",
        multiple=True,
        help="<name>:<count>[:<device>] (repeatable): the count of a rate limiter resource, on "
        "every device or on one; default: the largest count an instance asks for",
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
    p.add(
        "--log-verbose",
        type=_verbosity,
        default=0,
        help="Triton spelling: a level or true/false; > 0 (true) means --log-level=debug",
    )
    for severity in ("info", "warning", "error"):
        p.add(
            f"--log-{severity}", type=parse_bool, help=f"log {severity} records (Triton's switch)"
        )
    p.add(
        "--log-format",
        choices=LOG_FORMATS,
        help="default: 'TIME LEVEL logger: message'; ISO8601: the time in UTC as ISO 8601",
    )
    p.add("--log-file", help="log to this file instead of stderr")
    add_hosted_flags(p)
    add_inert_flags(p)
    mlserver = mlserver or MLServerServerSettings()
    serve.set_defaults(mlserver=mlserver, **mlserver.flag_defaults)
    return parser


# Object-store repositories, by the scheme Triton spells them with.
_REMOTE_SCHEMES: dict[str, Callable[[str], RemoteLocation]] = {
    s3.SCHEME: s3.parse_s3_url,
    gcs.SCHEME: gcs.parse_gcs_url,
    azure.SCHEME: azure.parse_azure_url,
}


def _repository(text: str) -> Path | RemoteLocation:
    for scheme, parse in _REMOTE_SCHEMES.items():
        if text.startswith(scheme):
            try:
                return parse(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(text)


def _aip_storage(environ: dict[str, str]) -> list[Path | RemoteLocation]:
    """Vertex AI names the model's storage in AIP_STORAGE_URI: the repository when no flag
    names one (as in Triton)."""
    uri = environ.get("AIP_STORAGE_URI")
    try:
        return [_repository(uri)] if uri else []
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"AIP_STORAGE_URI={uri!r}: {exc}") from None


def _verbosity(text: str) -> int:
    """Triton's --log-verbose: an integer, or a boolean (its SageMaker script passes true)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return int(lowered == "true")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or true/false, got '{text}'"
        ) from None


def _config_name(text: str) -> str:
    if any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"a config name has no spaces, got {text!r}")
    return text


def _positive(text: str) -> int:
    return _at_least(1, text)


def _non_negative(text: str) -> int:
    return _at_least(0, text)


def _at_least(least: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1  # not a number: the same message
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {text}")
    return value


def _log_settings(args: argparse.Namespace, level: str) -> LogSettings | None:
    """Triton's log switches over what --log-level says; None when none is given."""
    switches = {
        "log_info": args.log_info,
        "log_warning": args.log_warning,
        "log_error": args.log_error,
        "log_format": args.log_format,
        "log_file": args.log_file,
    }
    given = {key: value for key, value in switches.items() if value is not None}
    return replace(LogSettings.from_level(level), **given) if given else None


# The --backend-config settings inferd reads: (backend or "" for every backend, setting).
BACKEND_CONFIG_USED = frozenset(
    {
        ("", "default-max-batch-size"),
        ("onnxruntime", "default-max-batch-size"),
        ("python", "isolation"),
        ("python", "inline-execution-us"),
        ("mlserver", "isolation"),
    }
)


def _unused_backend_config(config: dict[str, dict[str, str]]) -> list[str]:
    """Triton backends' settings given that inferd has no use for (logged at start)."""
    return [
        f"--backend-config={backend + ',' if backend else ''}{key} (no such setting in inferd)"
        for backend, settings in config.items()
        for key in settings
        if (backend, key) not in BACKEND_CONFIG_USED
    ]


def _isolation(backend_config: Mapping[str, Mapping[str, str]], backend: str) -> str:
    isolation = backend_config.get(backend, {}).get("isolation", "thread")
    if isolation not in PYTHON_ISOLATIONS:
        raise ValueError(
            f"{backend} isolation must be one of {', '.join(PYTHON_ISOLATIONS)}: {isolation!r}"
        )
    return isolation


def _inline_us(backend_config: Mapping[str, Mapping[str, str]]) -> str:
    raw = backend_config.get("python", {}).get("inline-execution-us", "")
    if raw and not raw.isdigit():
        raise ValueError(f"python inline-execution-us must be a whole number of µs: {raw!r}")
    return raw


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
    mlserver: MLServerServerSettings = args.mlserver
    if mlserver.mlserver_isolation and "isolation" not in backend_config.get("mlserver", {}):
        backend_config.setdefault("mlserver", {})["isolation"] = mlserver.mlserver_isolation
    python_isolation, mlserver_isolation = (
        _isolation(backend_config, backend) for backend in ("python", "mlserver")
    )
    log_level = "debug" if args.log_verbose > 0 else args.log_level
    settings = Settings(
        server_id=args.id,
        model_repositories=tuple(args.model_repository or _aip_storage(args.environ)),
        model_config_name=args.model_config_name,
        model_load_thread_count=args.model_load_thread_count,
        model_load_retry_count=args.model_load_retry_count,
        model_namespacing=args.model_namespacing,
        reuse_http_port=args.reuse_http_port,
        http_restricted_api=parse_restrictions(
            args.http_restricted_api or (), "--http-restricted-api", "api"
        ),
        grpc_restricted_protocol=parse_restrictions(
            args.grpc_restricted_protocol or (), "--grpc-restricted-protocol", "protocol"
        ),
        grpc_tls=grpc_tls(
            args.grpc_use_ssl,
            args.grpc_use_ssl_mutual,
            args.grpc_server_cert,
            args.grpc_server_key,
            args.grpc_root_cert,
        ),
        http_header_forward=header_forward(
            args.http_header_forward_pattern, "--http-header-forward-pattern"
        ),
        grpc_header_forward=header_forward(
            args.grpc_header_forward_pattern, "--grpc-header-forward-pattern"
        ),
        http_address=args.http_address,
        http_port=args.http_port,
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_http=args.allow_http,
        allow_grpc=args.allow_grpc,
        allow_metrics=args.allow_metrics,
        metrics_path=mlserver.metrics_path or "/metrics",
        metrics_address=args.metrics_address,
        allow_gpu_metrics=args.allow_gpu_metrics,
        allow_cpu_metrics=args.allow_cpu_metrics,
        metrics_interval_ms=args.metrics_interval_ms,
        metrics_config=parse_metrics_config(args.metrics_config or ()),
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        load_models=tuple(args.load_model or ()),
        strict_readiness=args.strict_readiness,
        allow_client_shm=args.allow_client_shm,
        pinned_memory_pool_bytes=args.pinned_memory_pool_byte_size,
        response_cache=parse_cache_config(
            args.cache_config or (), args.response_cache_byte_size, args.environ
        )
        or mlserver.cache,
        exit_on_error=args.exit_on_error,
        exit_timeout_secs=args.exit_timeout_secs,
        auto_complete_config=not (args.disable_auto_complete_config or args.strict_model_config),
        default_max_batch_size=max_batch,
        python_isolation=python_isolation,
        python_inline_us=_inline_us(backend_config),
        mlserver_isolation=mlserver_isolation,
        mlserver_workers=max(1, mlserver.parallel_workers or 1),
        gpu_fallback_to_cpu=args.gpu_fallback == "cpu",
        http_max_input_size=args.http_max_input_size,
        http_stack=args.http_stack,
        http_cors=mlserver.cors,
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
            reuse_port=args.reuse_grpc_port,
        ),
        grpc_stack=args.grpc_stack,
        log_level=log_level,
        log=_log_settings(args, log_level),
        inert_flags=(*inert_flags_given(args), *_unused_backend_config(backend_config)),
        trace=parse_trace_flags(
            args.trace_config or (),
            file=args.trace_file,
            levels=args.trace_level or (),
            rate=args.trace_rate,
            count=args.trace_count,
            log_frequency=args.trace_log_frequency,
        ),
        trace_otel=parse_otel_flags(args.trace_config or ()),
        backend_config=backend_config,
        rate_limit=parse_rate_limit(args.rate_limit, args.rate_limit_resource or ()),
        stream_buffer_bytes=args.stream_buffer_byte_size,
        sagemaker=sagemaker_from_args(args, args.environ),
        vertex_ai=vertex_ai_from_args(args, args.environ),
    )
    check_ports(settings)
    return settings


def parse_args(
    argv: Sequence[str], environ: dict[str, str] | None = None
) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The command line, over INFERD_* variables, over MLServer's server settings for the
    repository it names (its settings.json, over MLSERVER_* variables)."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if args.command == "serve":
        local = [r for r in args.model_repository or () if isinstance(r, Path)]
        try:
            mlserver = read_mlserver(local[0] if local else None, args.environ)
        except ValueError as exc:
            parser.error(str(exc))
        if mlserver != args.mlserver:
            parser = build_parser(environ, mlserver)
            args = parser.parse_args(argv)
    return parser, args


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """`environ`: where INFERD_* and the platforms' variables are read (default os.environ)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "serve")  # `inferd --model-repository=...` as one would call tritonserver
    parser, args = parse_args(argv, environ)
    if args.command != "serve":
        parser.print_help()
        return 2
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    log_file = settings.log.log_file if settings.log is not None else ""
    try:
        logging.basicConfig(
            level=settings.log_level.upper(), format=DEFAULT_FORMAT, filename=log_file or None
        )
    except OSError as exc:
        parser.error(f"--log-file={log_file}: {exc.strerror or exc}")
    if args.mlserver.unused:
        logging.getLogger(__name__).warning(
            "%s: MLServer settings with no effect in inferd: %s",
            args.mlserver.source,
            ", ".join(args.mlserver.unused),
        )
    from inferd.server.app import run  # imported late: `--help` stays instant

    return run(settings)
