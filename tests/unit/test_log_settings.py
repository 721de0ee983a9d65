"""The logging extension's settings applied to Python logging: switches, verbose level, format."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from inferd.server.errors import ErrorCode, InferdError
from inferd.server.log_settings import LogControl, LogSettings

LOGGERS = (logging.getLogger("logtest"), logging.getLogger("logtest.child"))


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def handler() -> Iterator[Records]:
    root = logging.getLogger("logtest")
    records = Records()
    root.addHandler(records)
    yield records
    root.removeHandler(records)


def emit_all() -> None:
    child = logging.getLogger("logtest.child")
    for level in ("debug", "info", "warning", "error"):
        getattr(child, level)(level)


def test_switches_drop_their_severities(handler: Records) -> None:
    control = LogControl(LogSettings(), *LOGGERS)
    control.update({"log_info": False, "log_error": False})
    emit_all()
    assert handler.lines == ["warning"]
    handler.lines.clear()
    control.update({"log_verbose_level": 1, "log_info": True, "log_error": True})
    emit_all()
    assert handler.lines == ["debug", "info", "warning", "error"]


def test_iso8601_timestamps(handler: Records) -> None:
    control = LogControl(LogSettings(), *LOGGERS)
    control.update({"log_format": "ISO8601"})
    logging.getLogger("logtest.child").warning("stamped")
    assert handler.lines[-1].endswith("WARNING logtest.child: stamped")
    assert handler.lines[-1][10] == "T" and handler.lines[-1][19] == "Z"


def test_bad_changes_change_nothing() -> None:
    control = LogControl(LogSettings(), *LOGGERS)
    for changes, code in (
        ({"log_info": False, "log_warning": "no"}, ErrorCode.INVALID_ARG),
        ({"log_verbose_level": -1}, ErrorCode.INVALID_ARG),
        ({"log_verbose_level": True}, ErrorCode.INVALID_ARG),
        ({"log_format": "xml"}, ErrorCode.INVALID_ARG),
        ({"colour": True}, ErrorCode.INVALID_ARG),
        ({"log_file": "/var/log/x"}, ErrorCode.UNSUPPORTED),
    ):
        with pytest.raises(InferdError) as info:
            control.update(changes)
        assert info.value.code is code
    assert control.settings == LogSettings()
    assert control.update({"log_file": None, "log_info": None}) == control.as_dict()


def test_the_command_line_level_sets_the_start() -> None:
    assert LogSettings.from_level("debug").log_verbose_level == 1
    assert LogSettings.from_level("info") == LogSettings()
    warning = LogSettings.from_level("warning")
    assert (warning.log_info, warning.log_warning, warning.log_error) == (False, True, True)
    assert LogSettings.from_level("error").log_warning is False


def test_closing_leaves_logging_as_it_was(handler: Records) -> None:
    before = handler.formatter
    control = LogControl(LogSettings(), *LOGGERS)
    control.update({"log_info": False, "log_format": "ISO8601", "log_verbose_level": 1})
    control.close()
    LOGGERS[0].setLevel(logging.INFO)
    try:
        emit_all()
    finally:
        LOGGERS[0].setLevel(logging.NOTSET)
    # Info passes the handler again; debug stays below the loggers' own level.
    assert handler.lines == ["info", "warning", "error"]
    assert handler.formatter is before
