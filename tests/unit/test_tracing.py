"""Trace settings, sampling and trace files, without a server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inferd.server.errors import ErrorCode, InferdError
from inferd.server.trace_settings import (
    TraceLevel,
    TraceSetting,
    grpc_trace_update,
    http_trace_update,
)
from inferd.server.tracing import TraceFile, Tracer, tensor_entry

ON = TraceSetting(TraceLevel.TIMESTAMPS, rate=1, file="unused.json")


def taken(tracer: Tracer, model: str, requests: int) -> int:
    return sum(tracer.sample(model) is not None for _ in range(requests))


def test_rate_takes_every_nth_request_and_count_stops_it() -> None:
    tracer = Tracer(TraceSetting(TraceLevel.TIMESTAMPS, rate=3, count=2, file="t.json"))
    assert tracer.enabled
    assert [tracer.sample("m") is not None for _ in range(9)] == [
        *(False, False, True),
        *(False, False, True),
        *(False, False, False),
    ]
    assert tracer.setting().count == 0  # what is left, as Triton reports it


def test_nothing_is_sampled_while_off() -> None:
    tracer = Tracer(TraceSetting(rate=1, file="t.json"))
    assert not tracer.enabled
    assert taken(tracer, "m", 5) == 0


def test_a_model_setting_overrides_the_global_one_for_that_model_only() -> None:
    tracer = Tracer(TraceSetting(rate=1, file="t.json"))
    tracer.update("a", {"level": TraceLevel.TIMESTAMPS})
    assert tracer.enabled
    assert (taken(tracer, "a", 4), taken(tracer, "b", 4)) == (4, 0)
    tracer.update("a", {"level": None})  # nothing of its own left: the global applies again
    assert not tracer.enabled
    assert tracer.setting("a") == tracer.setting()


def test_a_changed_setting_counts_afresh_and_an_unchanged_one_keeps_counting() -> None:
    tracer = Tracer(TraceSetting(TraceLevel.TIMESTAMPS, rate=2, file="t.json"))
    tracer.update("m", {"count": 5})
    assert taken(tracer, "m", 1) == 0  # request 1 of 2
    tracer.update("", {"log_frequency": 3})  # the model's effective setting changes
    assert taken(tracer, "m", 1) == 0  # counting starts again
    tracer.update("other", {"count": 1})  # not the model's: it keeps counting
    assert taken(tracer, "m", 1) == 1


def test_invalid_settings_are_refused_unless_they_turn_tracing_off() -> None:
    tracer = Tracer(TraceSetting())
    with pytest.raises(InferdError) as error:
        tracer.update("", {"level": TraceLevel.TIMESTAMPS})  # no file
    assert error.value.message.endswith(":trace file name is not given")
    assert tracer.update("", {"rate": 0}).rate == 0  # off: nothing to trace, so allowed


def test_http_and_grpc_updates_parse_alike() -> None:
    body = {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": "5", "trace_count": None}
    expected = {"level": TraceLevel.TIMESTAMPS | TraceLevel.TENSORS, "rate": 5, "count": None}
    assert http_trace_update(body) == expected
    assert (
        grpc_trace_update(
            {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": ["5"], "trace_count": []}
        )
        == expected
    )
    assert http_trace_update({"trace_level": []}) == {}  # Triton: an empty array changes nothing
    with pytest.raises(InferdError) as error:
        grpc_trace_update({"trace_rate": ["1", "2"]})
    assert error.value.code == ErrorCode.INVALID_ARG
    with pytest.raises(InferdError) as error:
        http_trace_update({"trace_file": None})
    assert error.value.code == ErrorCode.UNSUPPORTED


def test_trace_file_is_valid_json_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text("left over from an earlier run")
    file = TraceFile(str(path))
    file.append([b'{"id":1}'])
    assert json.loads(path.read_text()) == [{"id": 1}]
    file.append([b'{"id":2}', b'{"id":3}'])
    assert json.loads(path.read_text()) == [{"id": 1}, {"id": 2}, {"id": 3}]
    file.write_numbered([b'{"id":4}'])
    file.write_numbered([b'{"id":5}'])
    assert json.loads((tmp_path / "trace.json.1").read_text()) == [{"id": 5}]
    file.close()
    file.append([b'{"id":6}'])  # after shutdown: dropped, the file is not started afresh
    assert len(json.loads(path.read_text())) == 3


def test_an_unwritable_trace_file_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    TraceFile(str(tmp_path / "missing" / "trace.json")).append([b"{}"])
    assert "writing trace file" in caplog.text


def test_tensor_records_spell_values_as_triton_does() -> None:
    assert tensor_entry("b", "", np.array([[True, False]])) == {
        "name": "b",
        "data": "1,0",
        "shape": "1,2",
        "dtype": "BOOL",
    }
    assert tensor_entry("f", "FP32", np.array([0.5, 1 / 3], dtype=np.float32))["data"] == (
        "0.5,0.333333"
    )
    strings = tensor_entry("s", "BYTES", np.array([b"ab", b"c"], dtype=np.object_))
    assert strings["data"] == '"ab","c"'
