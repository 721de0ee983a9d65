"""From a model config to its scheduler's settings (batching, queue policies, latency objective)."""

from __future__ import annotations

from inferd.batching.policy import BatchPolicy
from inferd.batching.scheduler import SchedulerConfig
from inferd.repository.config import ModelConfig
from inferd.repository.mlserver_settings import BACKEND as MLSERVER
from inferd.server.errors import invalid

LATENCY_SLO_PARAMETER = "inferd.latency_slo_ms"
# Batches of at most this much CPU time run on the event loop (batching/worker.py); 0 = never.
INLINE_PARAMETER = "inferd.inline_execution_us"
DEFAULT_INLINE_US = 250
# How long an unload waits for a decoupled model's requests to send their final response.
DECOUPLED_UNLOAD_TIMEOUT_PARAMETER = "inferd.decoupled_unload_timeout_s"
DEFAULT_DECOUPLED_UNLOAD_TIMEOUT_S = 30.0


def scheduler_config(config: ModelConfig) -> SchedulerConfig:
    """No dynamic_batching = each request runs alone with no queue policy (Triton's default
    scheduler); with it and max_batch_size 0, each runs alone with its queue policies and
    priorities, as in Triton. The latency objective applies either way."""
    slo_ns = latency_slo_ns(config.parameters.get(LATENCY_SLO_PARAMETER, ""), config.name)
    inline_ns = _inline_us(config) * 1000
    unload_s = _unload_timeout_s(config)
    streams_optional = config.backend == MLSERVER  # MLServer's infer_stream: predict_stream()
    batching = config.dynamic_batching
    if batching is None:
        return SchedulerConfig(
            BatchPolicy(max_batch_size=0),
            latency_slo_ns=slo_ns,
            inline_max_ns=inline_ns,
            decoupled=config.decoupled,
            decoupled_unload_timeout_s=unload_s,
            streams_optional=streams_optional,
        )
    return SchedulerConfig(
        BatchPolicy(
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            max_queue_delay_ns=batching.max_queue_delay_us * 1000,
        ),
        priority_levels=batching.priority_levels,
        default_priority=batching.default_priority_level,
        default_queue_policy=batching.default_queue_policy,
        level_queue_policies=dict(batching.priority_queue_policy or {}),
        preserve_ordering=batching.preserve_ordering,
        latency_slo_ns=slo_ns,
        inline_max_ns=inline_ns,
        decoupled=config.decoupled,
        decoupled_unload_timeout_s=unload_s,
        streams_optional=streams_optional,
    )


def _unload_timeout_s(config: ModelConfig) -> float:
    raw = config.parameters.get(DECOUPLED_UNLOAD_TIMEOUT_PARAMETER, "")
    if raw == "":
        return DEFAULT_DECOUPLED_UNLOAD_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise invalid(
            f"{DECOUPLED_UNLOAD_TIMEOUT_PARAMETER} for '{config.name}' must be a number of "
            f"seconds >= 0, got '{raw}'"
        )
    return seconds


def _inline_us(config: ModelConfig) -> int:
    raw = config.parameters.get(INLINE_PARAMETER, "")
    if raw == "":
        return DEFAULT_INLINE_US
    if not raw.isdigit():
        raise invalid(
            f"{INLINE_PARAMETER} for '{config.name}' must be a whole number of µs, got '{raw}'"
        )
    return int(raw)


def latency_slo_ns(value: object, where: str) -> int:
    """A latency objective in ms (config string or request parameter) as ns; 0 = none."""
    if value in ("", None):
        return 0
    try:
        ms = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ms = -1.0
    if isinstance(value, bool) or not ms > 0:
        raise invalid(f"{LATENCY_SLO_PARAMETER} for '{where}' must be a positive number of ms")
    return int(ms * 1_000_000)
