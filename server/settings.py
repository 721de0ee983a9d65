"""Server settings: one immutable object, built by the CLI from flags and INFERD_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    model_repositories: tuple[Path, ...] = ()  # empty = the bundled examples
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    model_control_mode: str = "none"  # none | explicit (poll: later)
    load_models: tuple[str, ...] = ()  # explicit mode: models to load at start ("*" = all)
    strict_readiness: bool = True
    exit_on_error: bool = False  # Triton defaults to true; see README
    exit_timeout_secs: float = 30.0
    auto_complete_config: bool = True
    default_max_batch_size: int = 4
    gpu_fallback_to_cpu: bool = False
    http_max_input_size: int = 64 * 1024 * 1024
    log_level: str = "info"
    backend_config: dict[str, dict[str, str]] = field(default_factory=dict)


def bundled_examples() -> Path:
    """The example repository shipped inside the package (the default repository)."""
    import inferd.examples

    return Path(inferd.examples.__file__).parent
