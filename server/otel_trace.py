"""The settings of Triton's OpenTelemetry trace mode (`--trace-config mode=opentelemetry` and
`--trace-config opentelemetry,<setting>=<value>`); the exporter is otel_export.py, imported
only in that mode (its packages come with the `otel` extra)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEFAULT_URL = "http://localhost:4318/v1/traces"
# Batch span processor settings: --trace-config opentelemetry,<name>=N, else the OTEL_BSP_*
# variable the SDK reads, else its default.
BSP_SETTINGS = ("bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size")


@dataclass(frozen=True, slots=True)
class OtelSettings:
    url: str = DEFAULT_URL
    resource: tuple[tuple[str, str], ...] = ()  # resource=<key>=<value>, in order
    bsp: tuple[tuple[str, int], ...] = ()  # the BSP_SETTINGS given


def parse_otel_setting(settings: OtelSettings, key: str, value: str) -> OtelSettings:
    """One `--trace-config opentelemetry,<key>=<value>`. Raises ValueError."""
    if key == "url":
        if not value:
            raise ValueError(
                "opentelemetry,url= needs a URL (e.g. http://collector:4318/v1/traces)"
            )
        url = value if "://" in value else f"http://{value}"  # Triton takes host:port/path
        return dataclasses.replace(settings, url=url)
    if key == "resource":
        name, eq, attribute = value.partition("=")
        if not eq or not name:
            raise ValueError(f"opentelemetry,resource={value}: expected <key>=<value>")
        return dataclasses.replace(settings, resource=(*settings.resource, (name, attribute)))
    if key in BSP_SETTINGS:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"opentelemetry,{key}={value}: expected a whole number") from None
        if number < 1:
            raise ValueError(f"opentelemetry,{key}={value}: expected a number >= 1")
        return dataclasses.replace(settings, bsp=(*settings.bsp, (key, number)))
    raise ValueError(
        f"unknown opentelemetry trace setting '{key}' (known: url, resource, "
        f"{', '.join(BSP_SETTINGS)})"
    )
