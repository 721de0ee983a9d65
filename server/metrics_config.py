"""Triton's `--metrics-config=<setting>=<value>` (repeatable): which per-model latency families
the metrics endpoint exports. Parsed strictly; the CLI reports a ValueError as a usage error.

Triton knows four settings (`histogram_latencies` in releases after 2.51) and reads them
leniently: `counter_latencies` is off only for the exact value `false`, `summary_latencies`
(and `histogram_latencies`) on only for `true`, a `true` wins over a later `false`, and
anything else, unknown settings included, is ignored without a word (a bad quantile pair is
logged and skipped; if none is left the defaults stay). Only an item without
a setting or a value is refused. inferd takes exactly the values that mean something to
Triton and refuses the rest, so that no flag line means one thing to Triton and another here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SummaryQuantile:
    """A quantile in [0, 1] and the rank error allowed for it, as a fraction of the
    observations. inferd's summaries are exact, so the error is checked but never needed."""

    quantile: float
    error: float


# Triton's defaults (metric_model_reporter.h). Its docs do not print them; the 0.999 error is
# 0.001 there, and the 2.51 library holds no 1e-6 constant that could stand for another.
DEFAULT_QUANTILES = (
    SummaryQuantile(0.5, 0.05),
    SummaryQuantile(0.9, 0.01),
    SummaryQuantile(0.95, 0.001),
    SummaryQuantile(0.99, 0.001),
    SummaryQuantile(0.999, 0.001),
)
SETTINGS = ("counter_latencies", "histogram_latencies", "summary_latencies", "summary_quantiles")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    counter_latencies: bool = True  # the five nv_inference_*_duration_us counters
    summary_latencies: bool = False  # the five nv_inference_*_summary_us summaries
    # nv_inference_first_response_histogram_ms, for decoupled models (Triton after 2.51)
    histogram_latencies: bool = False
    summary_quantiles: tuple[SummaryQuantile, ...] = DEFAULT_QUANTILES


def parse_metrics_config(items: Sequence[str]) -> MetricsConfig:
    """`--metrics-config` items in order. Raises ValueError."""
    values: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key or not value or "," in key:
            raise ValueError(f"--metrics-config={item!r}: expected <setting>=<value>")
        if key not in SETTINGS:
            raise ValueError(
                f"--metrics-config={item!r}: unknown setting '{key}' (known: {', '.join(SETTINGS)})"
            )
        if values.setdefault(key, value) != value:
            raise ValueError(
                f"--metrics-config: '{key}' is given twice, as {values[key]!r} and {value!r}"
            )
    default = MetricsConfig()
    quantiles = values.get("summary_quantiles")
    return MetricsConfig(
        counter_latencies=_boolean(values, "counter_latencies", default.counter_latencies),
        summary_latencies=_boolean(values, "summary_latencies", default.summary_latencies),
        histogram_latencies=_boolean(values, "histogram_latencies", default.histogram_latencies),
        summary_quantiles=(
            default.summary_quantiles if quantiles is None else parse_quantiles(quantiles)
        ),
    )


def _boolean(values: dict[str, str], key: str, default: bool) -> bool:
    text = values.get(key)
    if text is None:
        return default
    if text not in ("true", "false"):
        raise ValueError(f"--metrics-config={key}={text}: expected true or false")
    return text == "true"


def parse_quantiles(text: str) -> tuple[SummaryQuantile, ...]:
    """`<quantile>:<error>[,<quantile>:<error>...]`, each a number in [0, 1]; the order is kept
    (it is the order of the exported series) and a quantile may appear only once."""
    quantiles: list[SummaryQuantile] = []
    for pair in text.split(","):
        where = f"--metrics-config=summary_quantiles={text}: {pair.strip()!r}"
        quantile_text, colon, error_text = pair.partition(":")
        if not colon:
            raise ValueError(f"{where}: expected <quantile>:<error>")
        quantile = _fraction(quantile_text, where, "quantile")
        error = _fraction(error_text, where, "error")
        if any(q.quantile == quantile for q in quantiles):
            raise ValueError(f"{where}: quantile {quantile:g} is given twice")
        quantiles.append(SummaryQuantile(quantile, error))
    return tuple(quantiles)


def _fraction(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: the {what} is not a number") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{where}: the {what} must be between 0 and 1")
    return value
