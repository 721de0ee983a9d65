"""The trace extension's settings (Triton's `--trace-config` and `/v2[/models/M]/trace/setting`):
what a setting holds, and strict parsing of the flags and of the API's updates."""

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
    no count limit, traces written when the setting ends (log_frequency 0)."""

    level: TraceLevel = TraceLevel.OFF
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""

    def invalid_reason(self) -> str:
        """Why this setting traces nothing ("" when it does)."""
        if self.level == TraceLevel.OFF:
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if not self.file:
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
            "trace_mode": "triton",
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
            update[field] = _parse_number(key, value)
    return update


def grpc_trace_update(settings: Mapping[str, Sequence[str]]) -> TraceUpdate:
    """`TraceSettingRequest.settings` (each value a list of strings; an empty list clears)."""
    if "trace_file" in settings:
        raise _file_not_updatable()
    update: TraceUpdate = {}
    for key, field in _FIELDS.items():
        if key not in settings:
            continue
        values = list(settings[key])
        if not values:
            update[field] = None
        elif key == "trace_level":
            update[field] = parse_levels(values)
        elif len(values) != 1:
            raise invalid(f"'{key}' takes one value, got {values}")
        else:
            update[field] = _parse_number(key, values[0])
    return update


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


def _parse_number(key: str, text: str) -> int:
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


def parse_trace_flags(
    configs: Sequence[str],
    file: str | None = None,
    levels: Sequence[str] = (),
    rate: str | None = None,
    count: str | None = None,
    log_frequency: str | None = None,
) -> TraceSetting:
    """Triton's `--trace-config` items (`level=`, `rate=`, `count=`, `mode=`, and
    `triton,file=` / `triton,log-frequency=`), after its deprecated `--trace-file`,
    `--trace-level`, `--trace-rate`, `--trace-count` and `--trace-log-frequency`.
    Raises ValueError."""
    values: dict[str, str] = {}
    level_names = list(levels)
    for flag, value in (("rate", rate), ("count", count), ("log-frequency", log_frequency)):
        if value is not None:
            values[flag] = value
    if file is not None:
        values["file"] = file
    for item in configs:
        mode, comma, rest = item.partition(",")
        if not comma:
            mode, rest = "", item
        key, eq, value = rest.partition("=")
        if not eq or not key:
            raise ValueError(f"--trace-config={item!r}: expected [<mode>,]<setting>=<value>")
        if mode == "opentelemetry" or (key == "mode" and value == "opentelemetry"):
            raise ValueError(
                f"--trace-config={item!r}: inferd writes Triton's trace files only; "
                "the opentelemetry mode is not supported"
            )
        allowed = (
            {"file", "log-frequency"} if mode == "triton" else {"level", "rate", "count", "mode"}
        )
        if mode not in ("", "triton") or key not in allowed:
            raise ValueError(f"--trace-config={item!r}: unknown trace setting")
        if key == "level":
            level_names.append(value)
        elif key != "mode":  # mode=triton: the only mode
            values[key] = value
    try:
        setting = TraceSetting(
            level=parse_levels(level_names) if level_names else TraceLevel.OFF,
            file=values.get("file", ""),
        )
        for key, api_key in (
            ("rate", "trace_rate"),
            ("count", "trace_count"),
            ("log-frequency", "log_frequency"),
        ):
            if key in values:
                field = _FIELDS[api_key]
                setting = overlay(setting, {field: _parse_number(api_key, values[key])})
    except Exception as exc:
        raise ValueError(f"--trace-config: {getattr(exc, 'message', exc)}") from None
    return setting
