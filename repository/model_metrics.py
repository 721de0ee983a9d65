"""A model config's say over its metrics: `metric_tags` (extra labels `_<key>` on every
per-model family, as Triton adds them) and `model_metrics` (bucket bounds of the customizable
histograms; Triton has one, the first-response histogram)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from inferd.server.errors import invalid

log = logging.getLogger(__name__)

FIRST_RESPONSE_HISTOGRAM = "nv_inference_first_response_histogram_ms"
# Triton's bounds, in ms (metric_model_reporter.h).
FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)
# What may follow the `_` of a tag's label name (Prometheus label name characters).
_TAG_KEY = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class ModelMetricsConfig:
    tags: tuple[tuple[str, str], ...] = ()  # (label name "_<key>", value), sorted
    first_response_buckets_ms: tuple[float, ...] = FIRST_RESPONSE_BUCKETS_MS


def parse_model_metrics(config: Any, where: str) -> ModelMetricsConfig:
    """From a ModelConfig message. Raises InferdError for a tag that cannot be a label, or
    bounds that do not increase."""
    tags: list[tuple[str, str]] = []
    for key, value in config.metric_tags.items():
        if not _TAG_KEY.fullmatch(key):
            raise invalid(
                f"{where}: metric_tags key '{key}' cannot be a metric label: use letters, "
                "digits and '_' (it becomes the label '_<key>')"
            )
        tags.append((f"_{key}", value))
    buckets = FIRST_RESPONSE_BUCKETS_MS
    for control in config.model_metrics.metric_control:
        family = control.metric_identifier.family
        if family != FIRST_RESPONSE_HISTOGRAM:  # Triton's warning, and it goes on
            log.warning(
                "%s: metric family '%s' in 'metric_identifier' is not a customizable metric",
                where,
                family,
            )
            continue
        bounds = tuple(control.histogram_options.buckets)
        if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
            raise invalid(
                f"{where}: model_metrics buckets of '{family}' must be strictly increasing, "
                f"got {list(bounds)}"
            )
        buckets = bounds
    return ModelMetricsConfig(tuple(sorted(tags)), buckets)
