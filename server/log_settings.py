"""Triton's logging extension (`/v2/logging`, gRPC `LogSettings`) over Python's logging: severity
switches, a verbose level, and the timestamp format, changed while the server runs.

As in Triton, the settings are the process's: they apply to every log record, through a filter
on the root logger's handlers, and the verbose level opens inferd's debug records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from inferd.server.errors import invalid, unsupported

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("default", "ISO8601")
_BOOLEANS = ("log_info", "log_warning", "log_error")


@dataclass(frozen=True, slots=True)
class LogSettings:
    log_file: str = ""  # --log-file ("": stderr); the location cannot change through the API
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    @classmethod
    def from_level(cls, level: str) -> LogSettings:
        """The settings `--log-level` (or `--log-verbose`) starts with."""
        return cls(
            log_info=level in ("debug", "info"),
            log_warning=level != "error",
            log_verbose_level=1 if level == "debug" else 0,
        )

    def admits(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return self.log_error
        if record.levelno >= logging.WARNING:
            return self.log_warning
        if record.levelno >= logging.INFO:
            return self.log_info
        return self.log_verbose_level > 0


def updated(current: LogSettings, changes: Mapping[str, Any]) -> LogSettings:
    """Check a request's changes (only the keys given change) and apply them to `current`."""
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue  # null (gRPC: a value with no type) leaves the setting as it is
        if key == "log_file":
            if value not in (None, ""):
                raise unsupported("log file location can not be updated through network protocol")
        elif key in _BOOLEANS:
            if not isinstance(value, bool):
                raise invalid(f"logging setting '{key}' must be a boolean, got {value!r}")
            values[key] = value
        elif key == "log_verbose_level":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise invalid(f"logging setting '{key}' must be an integer >= 0, got {value!r}")
            values[key] = value
        elif key == "log_format":
            if value not in LOG_FORMATS:  # Triton 2.51's words (one of: LOG_FORMATS)
                raise invalid(f"invalid argument for log_format, got: {value}")
            values[key] = value
        else:
            raise invalid(f"unknown logging setting '{key}'; known: {', '.join(asdict(current))}")
    return replace(current, **values)


class LogControl:
    """Holds the settings and applies them to the process's logging."""

    def __init__(
        self,
        initial: LogSettings,
        root: logging.Logger | None = None,
        package: logging.Logger | None = None,
    ) -> None:
        """`root`: whose handlers the settings filter; `package`: the logger the verbose level
        opens to debug records (the root logger and inferd's by default)."""
        self._root = root or logging.getLogger()
        self._package = package or logging.getLogger("inferd")
        self.settings = initial
        self._filter = _SettingsFilter(self)
        self._formats = {
            "default": logging.Formatter(DEFAULT_FORMAT),
            "ISO8601": _iso8601_formatter(),
        }
        # Handlers changed so far, with the formatter each had: close() puts them back.
        self._changed: dict[logging.Handler, logging.Formatter | None] = {}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.settings)

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the changes (all or nothing) and return every setting."""
        previous = self.settings
        self.settings = updated(previous, changes)
        self._install(self.settings.log_format != previous.log_format)
        return self.as_dict()

    def apply(self) -> None:
        """Put the settings in force now (given at start-up rather than by a request)."""
        self._install(self.settings.log_format != "default")

    def _install(self, format_changed: bool) -> None:
        for handler in self._root.handlers:
            if handler not in self._changed:
                self._changed[handler] = handler.formatter
                handler.addFilter(self._filter)
            if format_changed:
                handler.setFormatter(self._formats[self.settings.log_format])
        verbose = self.settings.log_verbose_level > 0
        self._package.setLevel(logging.DEBUG if verbose else logging.NOTSET)

    def close(self) -> None:
        """Leave the process's logging as this control found it (the server stops)."""
        for handler, formatter in self._changed.items():
            handler.removeFilter(self._filter)
            handler.setFormatter(formatter)
        self._changed.clear()
        self._package.setLevel(logging.NOTSET)


class _SettingsFilter(logging.Filter):
    def __init__(self, control: LogControl) -> None:
        super().__init__()
        self._control = control

    def filter(self, record: logging.LogRecord) -> bool:
        return self._control.settings.admits(record)


def _iso8601_formatter() -> logging.Formatter:
    formatter = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ"
    )
    formatter.converter = time.gmtime
    return formatter
