"""Server settings: one immutable object, built by the CLI from flags and INFERD_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inferd.backends.pinned_memory import DEFAULT_POOL_BYTES
from inferd.repository.remote import RemoteLocation
from inferd.server.cache_config import CacheConfig
from inferd.server.cors import CorsSettings
from inferd.server.grpc_tls import GrpcTls
from inferd.server.header_forward import HeaderForward
from inferd.server.log_settings import LogSettings
from inferd.server.metrics_config import MetricsConfig
from inferd.server.otel_trace import OtelSettings
from inferd.server.rate_limit_settings import RateLimitSettings
from inferd.server.restricted_api import Restrictions
from inferd.server.sagemaker import SageMakerSettings
from inferd.server.trace_settings import TraceSetting
from inferd.server.vertex_ai import VertexAiSettings

# What carries the gRPC port: inferd's own HTTP/2 layer, or grpc.aio (server/grpc_stacks.py).
GrpcStackName = Literal["inferd", "grpcio"]
# What carries the HTTP and metrics ports: inferd's HTTP/1.1 server (server/http1.py) or uvicorn.
HttpStackName = Literal["inferd", "uvicorn"]


@dataclass(frozen=True, slots=True)
class GrpcChannel:
    """gRPC channel arguments. Keepalive defaults are gRPC's own, as in Triton; times in ms."""

    max_message_size: int = 2**31 - 1  # send and receive: Triton's INT32_MAX, not gRPC's 4 MiB
    keepalive_time_ms: int = 7_200_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    http2_max_pings_without_data: int = 2
    http2_min_recv_ping_interval_without_data_ms: int = 300_000
    http2_max_ping_strikes: int = 2
    max_connection_age_ms: int = 0  # 0 = unlimited
    max_connection_age_grace_ms: int = 0  # 0 = unlimited
    max_concurrent_streams: int = 0  # per connection; 0 = gRPC's default
    reuse_port: bool = False  # --reuse-grpc-port: SO_REUSEPORT, to share the port

    def options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_send_message_length", self.max_message_size),
            ("grpc.max_receive_message_length", self.max_message_size),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", self.http2_max_pings_without_data),
            (
                "grpc.http2.min_recv_ping_interval_without_data_ms",
                self.http2_min_recv_ping_interval_without_data_ms,
            ),
            ("grpc.http2.max_ping_strikes", self.http2_max_ping_strikes),
            # gRPC turns SO_REUSEPORT on by default: a second server on the port would then
            # start silently instead of failing (Triton also leaves it off by default).
            ("grpc.so_reuseport", int(self.reuse_port)),
        ]
        optional = [
            ("grpc.max_connection_age_ms", self.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", self.max_connection_age_grace_ms),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
        ]
        return options + [(key, value) for key, value in optional if value > 0]


# How many bytes of a stream's responses may wait for a client that reads slowly (gRPC
# ModelStreamInfer, HTTP generate_stream): past it the stream ends and its requests are cancelled.
DEFAULT_STREAM_BUFFER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    server_id: str = "inferd"  # --id: the server metadata's name
    # Local folders and object-store locations (repository/remote.py); empty = the bundled
    # examples.
    model_repositories: tuple[Path | RemoteLocation, ...] = ()
    model_config_name: str = ""  # configs/<name>.pbtxt before config.pbtxt
    model_load_thread_count: int = 4  # models prepared at once, as in Triton
    model_load_retry_count: int = 0  # further tries after a failed load
    model_namespacing: bool = False  # each repository's models apart (Triton's namespaces)
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    reuse_http_port: bool = False  # SO_REUSEPORT on the HTTP and metrics ports
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_port: int = 8002
    metrics_address: str = ""  # empty = the HTTP address, as in Triton
    allow_gpu_metrics: bool = True
    allow_cpu_metrics: bool = True
    metrics_interval_ms: int = 2000  # CPU and GPU sampling period
    metrics_config: MetricsConfig = field(default_factory=MetricsConfig)  # --metrics-config
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    metrics_path: str = "/metrics"  # on the metrics port (MLServer's metrics_endpoint)
    model_control_mode: str = "none"  # none | poll | explicit
    repository_poll_secs: float = 15.0  # poll mode: seconds between rescans (fractions allowed)
    load_models: tuple[str, ...] = ()  # explicit mode: models to load at start ("*" = all)
    strict_readiness: bool = True
    allow_client_shm: bool = False  # as Triton since 26.04: clients may not map server memory
    response_cache: CacheConfig | None = None  # --cache-config local,... or redis,...
    pinned_memory_pool_bytes: int = DEFAULT_POOL_BYTES  # --pinned-memory-pool-byte-size
    exit_on_error: bool = False  # Triton defaults to true; see README
    exit_timeout_secs: float = 30.0
    auto_complete_config: bool = True
    default_max_batch_size: int = 4
    python_isolation: str = "thread"  # --backend-config=python,isolation=; PYTHON_ISOLATIONS
    # --backend-config=python,inline-execution-us=: python models without their own
    # inferd.inline_execution_us get this one ("" = none).
    python_inline_us: str = ""
    mlserver_isolation: str = "thread"  # --backend-config=mlserver,isolation=; the same choices
    mlserver_workers: int = 1  # instances of each MLServer model in processes (parallel_workers)
    gpu_fallback_to_cpu: bool = False
    http_max_input_size: int = 64 * 1024 * 1024
    http_stack: HttpStackName = "inferd"
    grpc_channel: GrpcChannel = field(default_factory=GrpcChannel)
    grpc_stack: GrpcStackName = "inferd"
    grpc_tls: GrpcTls | None = None  # --grpc-use-ssl / --grpc-use-ssl-mutual
    log_level: str = "info"
    log: LogSettings | None = None  # --log-info/-warning/-error/-format/-file; None: log_level's
    http_restricted_api: Restrictions = field(default_factory=dict)
    grpc_restricted_protocol: Restrictions = field(default_factory=dict)
    http_header_forward: HeaderForward | None = None  # --http-header-forward-pattern
    http_cors: CorsSettings | None = None  # MLServer's cors_settings; None: no CORS
    grpc_header_forward: HeaderForward | None = None  # --grpc-header-forward-pattern
    inert_flags: tuple[str, ...] = ()  # tritonserver flags given that inferd ignores (logged)
    trace: TraceSetting = field(default_factory=TraceSetting)  # --trace-config
    trace_otel: OtelSettings = field(default_factory=OtelSettings)  # opentelemetry,...
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)  # --rate-limit*
    backend_config: dict[str, dict[str, str]] = field(default_factory=dict)
    stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES  # --stream-buffer-byte-size
    sagemaker: SageMakerSettings | None = None  # --allow-sagemaker
    vertex_ai: VertexAiSettings | None = None  # --allow-vertex-ai


def bundled_examples() -> Path:
    """The example repository shipped inside the package (the default repository)."""
    import inferd.examples

    return Path(inferd.examples.__file__).parent
