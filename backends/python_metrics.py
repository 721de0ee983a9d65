"""Custom metrics of python models (Triton's `pb_utils.MetricFamily` / `Metric`): one registry
per server, exported with the server's own families by the metrics endpoint.

Models update metrics from their instance threads (and from threads of their own), scrapes read
them on the event loop, so every access takes the registry's lock: an update is a dict lookup
and an addition. As in Triton, families and metrics that several model instances create with the
same name (and the same labels) are one series; it disappears when the last instance that
created it is unloaded.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric as PrometheusFamily

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# The server's own families: a model may not shadow them.
RESERVED_PREFIXES = ("nv_", "inferd_")


class MetricKind(IntEnum):
    """Triton's numbering (pb_utils.MetricFamily.COUNTER, GAUGE, HISTOGRAM)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class MetricError(ValueError):
    """A misuse of the custom metrics API; the python API raises it as TritonModelException."""


LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Series:
    """One metric: a family's series for one set of labels."""

    kind: MetricKind
    labels: LabelKey
    buckets: tuple[float, ...] = ()
    value: float = 0.0  # counter, gauge; the sum of observations for a histogram
    counts: list[int] = field(default_factory=list)  # histogram: per bucket, then +Inf
    holders: int = 0


@dataclass(slots=True)
class Family:
    name: str
    description: str
    kind: MetricKind
    series: dict[LabelKey, Series] = field(default_factory=dict)
    holders: int = 0


class CustomMetrics:
    """The registry. Holders (model instances) take references with family()/metric() and
    give them back with release()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}

    def family(self, name: str, description: str, kind: int) -> Family:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise MetricError(f"invalid metric family name {name!r}")
        if name.startswith(RESERVED_PREFIXES):
            raise MetricError(
                f"metric family name '{name}' is reserved: names starting with "
                f"{' or '.join(RESERVED_PREFIXES)} belong to the server"
            )
        try:
            metric_kind = MetricKind(kind)
        except ValueError:
            raise MetricError(
                f"metric family '{name}': kind must be COUNTER, GAUGE or HISTOGRAM, got {kind!r}"
            ) from None
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = self._families[name] = Family(name, str(description), metric_kind)
            elif family.kind is not metric_kind:
                raise MetricError(
                    f"metric family '{name}' already exists as a {family.kind.name}, not a "
                    f"{metric_kind.name}"
                )
            family.holders += 1
            return family

    def metric(
        self,
        family: Family,
        labels: Mapping[str, str] | None,
        buckets: Sequence[float] | None = None,
    ) -> Series:
        key = _label_key(family.name, labels)
        bounds = _bounds(family, buckets)
        with self._lock:
            series = family.series.get(key)
            if series is None:
                series = Series(family.kind, key, bounds)
                if family.kind is MetricKind.HISTOGRAM:
                    series.counts = [0] * (len(bounds) + 1)
                family.series[key] = series
            elif series.buckets != bounds:
                raise MetricError(
                    f"metric family '{family.name}' already has this metric with buckets "
                    f"{list(series.buckets)}"
                )
            series.holders += 1
            return series

    def release(self, family: Family, series: Sequence[Series]) -> None:
        """A holder's references to a family and the metrics it made in it."""
        with self._lock:
            for one in series:
                one.holders -= 1
                if one.holders <= 0:
                    family.series.pop(one.labels, None)
            family.holders -= 1
            if family.holders <= 0 and self._families.get(family.name) is family:
                del self._families[family.name]

    # ---- updates, from any thread --------------------------------------------------------

    def increment(self, series: Series, value: float) -> None:
        if series.kind is MetricKind.HISTOGRAM:
            raise MetricError("increment() is not supported for a histogram; use observe()")
        if series.kind is MetricKind.COUNTER and value < 0:
            raise MetricError(f"a counter can only be incremented by >= 0, got {value}")
        with self._lock:
            series.value += value

    def set(self, series: Series, value: float) -> None:
        if series.kind is not MetricKind.GAUGE:
            raise MetricError(f"set() is only supported for a gauge, not a {series.kind.name}")
        with self._lock:
            series.value = value

    def observe(self, series: Series, value: float) -> None:
        if series.kind is not MetricKind.HISTOGRAM:
            raise MetricError(
                f"observe() is only supported for a histogram, not a {series.kind.name}"
            )
        with self._lock:
            series.counts[bisect_left(series.buckets, value)] += 1
            series.value += value

    def value(self, series: Series) -> float:
        if series.kind is MetricKind.HISTOGRAM:
            raise MetricError("value() is not supported for a histogram")
        with self._lock:
            return series.value

    # ---- the scrape ----------------------------------------------------------------------

    def collect(self) -> Iterator[PrometheusFamily]:
        # Imported here: a stub process has this registry's stand-in and never scrapes.
        from prometheus_client.metrics_core import Metric as PrometheusFamily

        with self._lock:
            snapshot = [
                (f.name, f.description, f.kind, [_copy(s) for s in f.series.values()])
                for f in self._families.values()
            ]
        for name, description, kind, series in snapshot:
            family = PrometheusFamily(name, description, kind.name.lower())
            for one in series:
                labels = dict(one.labels)
                if kind is not MetricKind.HISTOGRAM:
                    family.add_sample(name, labels, one.value)
                    continue
                cumulative = 0
                for bound, count in zip((*one.buckets, float("inf")), one.counts, strict=True):
                    cumulative += count
                    family.add_sample(f"{name}_bucket", {**labels, "le": _le(bound)}, cumulative)
                family.add_sample(f"{name}_sum", labels, one.value)
                family.add_sample(f"{name}_count", labels, cumulative)
            yield family


def _label_key(family: str, labels: Mapping[str, str] | None) -> LabelKey:
    if labels is None:
        return ()
    if not isinstance(labels, Mapping):
        raise MetricError(f"metric of family '{family}': labels must be a dict of str to str")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL.fullmatch(key) or key == "le":
            raise MetricError(f"metric of family '{family}': invalid label name {key!r}")
        if not isinstance(value, str):
            raise MetricError(
                f"metric of family '{family}': label '{key}' must be a str, got {value!r}"
            )
    return tuple(sorted(labels.items()))


def _bounds(family: Family, buckets: Sequence[float] | None) -> tuple[float, ...]:
    if family.kind is not MetricKind.HISTOGRAM:
        if buckets is not None:
            raise MetricError(f"metric family '{family.name}': only histograms take buckets")
        return ()
    if not buckets:
        raise MetricError(f"metric family '{family.name}': a histogram metric needs buckets")
    bounds = tuple(float(b) for b in buckets)
    if any(later <= earlier for earlier, later in pairwise(bounds)):
        raise MetricError(
            f"metric family '{family.name}': buckets must increase, got {list(buckets)}"
        )
    return bounds


def _copy(series: Series) -> Series:
    return Series(series.kind, series.labels, series.buckets, series.value, list(series.counts))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class MetricsHolder:
    """The families and metrics one model instance made, given back when it unloads."""

    def __init__(self, registry: CustomMetrics) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._held: list[tuple[Family, list[Series]]] = []

    def family(self, name: str, description: str, kind: int) -> Family:
        family = self.registry.family(name, description, kind)
        with self._lock:
            self._held.append((family, []))
        return family

    def metric(
        self, family: Family, labels: Mapping[str, str] | None, buckets: Sequence[float] | None
    ) -> Series:
        series = self.registry.metric(family, labels, buckets)
        with self._lock:
            for held, made in self._held:
                if held is family:
                    made.append(series)
                    break
            else:  # a family another instance made: hold it too, for as long as the metric
                self.registry.family(family.name, family.description, family.kind)
                self._held.append((family, [series]))
        return series

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for family, series in held:
            self.registry.release(family, series)
