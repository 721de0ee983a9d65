"""The trace extension's settings (Triton's `--trace-config` and `/v2[/models/M]/trace/setting`):
what a setting holds, and strict parsing of the API's updates (the flags: flag_values.py)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inferd.server.errors import invalid, unsupported

UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
MIN_TRACE_COUNT = -1  # -1 = no limit
TRITON_MODE = "triton"  # trace files (tracing.py)
OPENTELEMETRY_MODE = "opentelemetry"  # spans over OTLP/HTTP (otel_trace.py)


class TraceLevel(enum.Flag):
    OFF = 0
    TIMESTAMPS = 1
    TENSORS = 2


LEVEL_NAMES = {
    "OFF": TraceLevel.OFF,
    "TIMESTAMPS": TraceLevel.TIMESTAMPS,
    "TENSORS": TraceLevel.TENSORS,
}


@dataclass(frozen=True, slots=True)
class TraceSetting:
    """One effective setting. Defaults are Triton's: tracing off, every 1000th request once on,
    no count limit, no numbered files (log_frequency 0: one trace file)."""

    level: TraceLevel = TraceLevel.OFF
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = TRITON_MODE  # server-wide, from the flags: TRITON_MODE or OPENTELEMETRY_MODE

    def invalid_reason(self) -> str:
        """Why this setting samples nothing ("" when it does)."""
        if self.level == TraceLevel.OFF:
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if self.mode == TRITON_MODE and not self.file:
            return "trace file name is not given"
        return ""

    def as_dict(self) -> dict[str, str | list[str]]:
        """The API's answer, in Triton's key order; every value a string or strings."""
        levels = [n for n, flag in LEVEL_NAMES.items() if flag and flag in self.level] or ["OFF"]
        return {
            "trace_level": levels,
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
            "log_frequency": str(self.log_frequency),
            "trace_file": self.file,
            "trace_mode": self.mode,
        }


# An update of one settings layer: field name -> new value, or None to clear the field (the
# layer then falls back to the one below it).
TraceUpdate = dict[str, Any]

# API key -> TraceSetting field, for the keys an update may carry.
_FIELDS = {
    "trace_level": "level",
    "trace_rate": "rate",
    "trace_count": "count",
    "log_frequency": "log_frequency",
}


def overlay(base: TraceSetting, layer: Mapping[str, Any]) -> TraceSetting:
    return dataclasses.replace(base, **layer) if layer else base


def http_trace_update(body: Mapping[str, Any]) -> TraceUpdate:
    """A POST body: `trace_level` an array of strings, the others strings; null clears a key.
    Keys that are not settings are ignored, as Triton does."""
    if "trace_file" in body:
        raise _file_not_updatable()
    update: TraceUpdate = {}
    for key, field in _FIELDS.items():
        if key not in body:
            continue
        value = body[key]
        if value is None:
            update[field] = None
        elif key == "trace_level":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise invalid(f"'trace_level' must be an array of strings, got {value!r}")
            if value:  # an empty array changes nothing (Triton)
                update[field] = parse_levels(value)
        else:
            if not isinstance(value, str):
                raise invalid(f"'{key}' must be a string, got {value!r}")
            update[field] = parse_number(key, value)
    return update


def grpc_trace_update(settings: Mapping[str, Sequence[str]]) -> TraceUpdate:
    """`TraceSettingRequest.settings` (each value a list of strings; an empty list clears),
    read as the HTTP body it stands for."""
    body: dict[str, Any] = {}
    for key in settings.keys() & {*_FIELDS, "trace_file"}:
        values = list(settings[key])
        if not values:
            body[key] = None
        elif key == "trace_level":
            body[key] = values
        elif len(values) != 1:
            raise invalid(f"expect only 1 value for '{key}'")  # Triton 2.51's words
        else:
            body[key] = values[0]
    return http_trace_update(body)


def parse_levels(names: Sequence[str]) -> TraceLevel:
    level = TraceLevel.OFF
    for name in names:
        flag = LEVEL_NAMES.get(name.strip().upper())
        if flag is None:
            raise invalid(
                f"Unable to parse 'trace_level', got: {name} (expected OFF, TIMESTAMPS or TENSORS)"
            )
        if flag == TraceLevel.OFF and len(names) > 1:
            raise invalid("Expect only one trace level 'OFF' is specified")
        level |= flag
    return level


def parse_number(key: str, text: str) -> int:
    low, high = (MIN_TRACE_COUNT, INT32_MAX) if key == "trace_count" else (0, UINT32_MAX)
    try:
        value = int(text.strip())
    except ValueError:
        raise invalid(f"Unable to parse '{key}', got: {text}") from None
    if key == "trace_count" and value < low:
        raise invalid(f"Unable to parse 'trace_count'. Expecting value >= {low}, got:{text}")
    if not low <= value <= high:
        raise invalid(
            f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {text}"
        )
    return value


def _file_not_updatable() -> Exception:
    return unsupported("trace file location can not be updated through network protocol")
