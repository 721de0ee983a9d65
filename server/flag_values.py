"""Flag values in Triton's formats: `[<scope>,]<setting>=<value>` lists (--backend-config,
--trace-config) made into settings. Each parser raises ValueError, which the CLI reports as a
usage error."""

from __future__ import annotations

from collections.abc import Sequence

from inferd.server.errors import InferdError
from inferd.server.otel_trace import OtelSettings, parse_otel_setting
from inferd.server.trace_settings import (
    OPENTELEMETRY_MODE,
    TRITON_MODE,
    TraceLevel,
    TraceSetting,
    overlay,
    parse_levels,
    parse_number,
)


def scoped_setting(item: str) -> tuple[str, str, str] | None:
    """A `[<scope>,]<setting>=<value>` flag value, Triton's form for --backend-config and
    --trace-config: (scope, or "" when there is none, setting, value); None if malformed."""
    scope, comma, rest = item.partition(",")
    if not comma:
        scope, rest = "", item
    key, eq, value = rest.partition("=")
    return (scope, key, value) if eq and key else None


def parse_backend_config(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """Triton's `--backend-config=BACKEND,SETTING=VALUE` (or a global `SETTING=VALUE`)."""
    config: dict[str, dict[str, str]] = {}
    for item in items:
        parsed = scoped_setting(item)
        if parsed is None:
            raise ValueError(f"--backend-config={item!r}: expected [BACKEND,]SETTING=VALUE")
        backend, key, value = parsed
        config.setdefault(backend, {})[key] = value
    return config


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
        parsed = scoped_setting(item)
        if parsed is None:
            raise ValueError(f"--trace-config={item!r}: expected [<mode>,]<setting>=<value>")
        mode, key, value = parsed
        if mode == OPENTELEMETRY_MODE:
            continue  # the exporter's own settings: parse_otel_flags
        allowed = (
            {"file", "log-frequency"} if mode == TRITON_MODE else {"level", "rate", "count", "mode"}
        )
        if mode not in ("", TRITON_MODE) or key not in allowed:
            raise ValueError(f"--trace-config={item!r}: unknown trace setting")
        if key == "mode" and value not in (TRITON_MODE, OPENTELEMETRY_MODE):
            raise ValueError(
                f"--trace-config={item!r}: the mode is {TRITON_MODE} or {OPENTELEMETRY_MODE}"
            )
        if key == "level":
            level_names.append(value)
        else:
            values[key] = value
    try:
        setting = TraceSetting(
            level=parse_levels(level_names) if level_names else TraceLevel.OFF,
            file=values.get("file", ""),
            mode=values.get("mode", TRITON_MODE),
        )
        for key, api_key, field in (
            ("rate", "trace_rate", "rate"),
            ("count", "trace_count", "count"),
            ("log-frequency", "log_frequency", "log_frequency"),
        ):
            if key in values:
                setting = overlay(setting, {field: parse_number(api_key, values[key])})
    except InferdError as exc:  # the API's own checks and words
        raise ValueError(f"--trace-config: {exc.message}") from None
    return setting


def parse_otel_flags(configs: Sequence[str]) -> OtelSettings:
    """The `--trace-config opentelemetry,<setting>=<value>` items (url, resource, bsp_*), for
    the exporter of `mode=opentelemetry`. Raises ValueError."""
    settings = OtelSettings()
    for item in configs:
        parsed = scoped_setting(item)
        if parsed is not None and parsed[0] == OPENTELEMETRY_MODE:
            try:
                settings = parse_otel_setting(settings, parsed[1], parsed[2])
            except ValueError as exc:
                raise ValueError(f"--trace-config={item!r}: {exc}") from None
    return settings
