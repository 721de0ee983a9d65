"""The small pieces of model lifecycle: load/unload parameter decoding, override paths, warmup
samples (their data and every way a `model_warmup` entry can be wrong)."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from inferd.repository.config import normalize, parse_config_text, to_model_config
from inferd.repository.overrides import check_file_paths, remove_override, write_override
from inferd.repository.warmup import WarmupSample, warmup_samples
from inferd.server.errors import ErrorCode, InferdError
from inferd.server.repository_codec import (
    grpc_load_parameters,
    grpc_unload_dependents,
    http_load_parameters,
    http_unload_dependents,
)


def body(parameters: object) -> bytes:
    return orjson.dumps({"parameters": parameters})


def test_http_parameters() -> None:
    encoded = base64.b64encode(b"\x00model").decode()
    config, files = http_load_parameters(
        body({"config": "{}", "file:1/model.onnx": encoded, "other": 1})
    )
    assert (config, files) == ("{}", {"1/model.onnx": b"\x00model"})
    assert http_load_parameters(b"") == (None, {})
    assert http_unload_dependents(body({"unload_dependents": True})) is True
    assert http_unload_dependents(b"{}") is False


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (body({"config": {"max_batch_size": 2}}), "'config' must be a string"),
        (body({"file:1/model.onnx": "not base64!"}), "not valid base64"),
        (body({"file:1/model.onnx": "\u00e9t\u00e9"}), "not valid base64"),
        (body({"file:1/model.onnx": 3}), "base64 string"),
        (body([1]), "'parameters' is an object"),
        (b"[]", "'parameters' is an object"),
        (b"{nope", "failed to parse"),
    ],
)
def test_http_parameter_errors(raw: bytes, words: str) -> None:
    with pytest.raises(InferdError, match=words) as error:
        http_load_parameters(raw)
    assert error.value.code is ErrorCode.INVALID_ARG


def test_grpc_parameters() -> None:
    request = pb.RepositoryModelLoadRequest(model_name="m")
    request.parameters["config"].string_param = "{}"
    request.parameters["file:1/model.onnx"].bytes_param = b"onnx"
    assert grpc_load_parameters(request.parameters) == ("{}", {"1/model.onnx": b"onnx"})
    request.parameters["file:1/model.onnx"].string_param = "onnx"
    with pytest.raises(InferdError, match="bytes_param"):
        grpc_load_parameters(request.parameters)
    unload = pb.RepositoryModelUnloadRequest(model_name="m")
    assert grpc_unload_dependents(unload.parameters) is False
    unload.parameters["unload_dependents"].bool_param = True
    assert grpc_unload_dependents(unload.parameters) is True
    unload.parameters["unload_dependents"].string_param = "yes"
    with pytest.raises(InferdError, match="bool_param"):
        grpc_unload_dependents(unload.parameters)


def test_override_folders(tmp_path: Path) -> None:
    model_dir = write_override(tmp_path, "m", {"1/model.onnx": b"a", "labels.txt": b"b"})
    assert model_dir.name == "m" and model_dir.parent.parent == tmp_path
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"a"
    remove_override(model_dir)
    assert list(tmp_path.iterdir()) == []
    for bad in ("", "..", "../x", "1/../../x", "/abs", "a\\b"):
        with pytest.raises(InferdError, match="stay inside"):
            check_file_paths({bad: b""})
    with pytest.raises(InferdError, match="model name"):
        write_override(tmp_path, "..", {"1/model.onnx": b""})
    for name, path in (("m" * 300, "1/model.onnx"), ("m", "1/" + "f" * 300)):
        with pytest.raises(InferdError, match="too long for a folder") as error:
            write_override(tmp_path, name, {path: b""})
        assert error.value.code is ErrorCode.INVALID_ARG
    assert list(tmp_path.iterdir()) == []  # nothing left behind


CONFIG = """
name: "w"
max_batch_size: 4
input [{ name: "A" data_type: TYPE_FP32 dims: [ 3 ] },
       { name: "S" data_type: TYPE_STRING dims: [ 2 ] optional: true }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [ 3 ] }]
"""


def samples(warmup: str, model_dir: Path, config: str = CONFIG) -> list[WarmupSample]:
    proto = parse_config_text(config + warmup, "test")
    normalize(proto, "w", 0)
    return warmup_samples(proto, to_model_config(proto, "onnxruntime"), model_dir)


def test_warmup_data(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "a.bin").write_bytes(np.arange(3, dtype=np.float32).tobytes())
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"c"))
    (tmp_path / "warmup" / "s.bin").write_bytes(strings)
    [zero, random, files] = samples(
        """model_warmup [
        { name: "z" batch_size: 2 inputs { key: "A" value { data_type: TYPE_FP32 dims: [3]
          zero_data: true } } },
        { name: "r" batch_size: 1 count: 5 inputs { key: "A" value { data_type: TYPE_FP32
          dims: [3] random_data: true } } },
        { name: "f" batch_size: 3 inputs [
          { key: "A" value { data_type: TYPE_FP32 dims: [3] input_data_file: "a.bin" } },
          { key: "S" value { data_type: TYPE_STRING dims: [2] input_data_file: "s.bin" } } ] }
        ]""",
        tmp_path,
    )
    assert zero.inputs["A"].tolist() == [[0, 0, 0], [0, 0, 0]] and zero.count == 1
    assert random.inputs["A"].shape == (1, 3) and random.count == 5
    assert random.inputs["A"].dtype == np.float32
    assert files.inputs["A"].tolist() == [[0, 1, 2]] * 3
    assert files.inputs["S"].tolist() == [[b"ab", b"c"]] * 3


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (
            'batch_size: 5 inputs { key: "A" value { data_type: TYPE_FP32 dims: [3] zero_data: '
            "true } }",
            "batch_size must be in 1..4",
        ),
        (
            'batch_size: 1 inputs { key: "B" value { data_type: TYPE_FP32 dims: [3] zero_data: '
            "true } }",
            "no input 'B'",
        ),
        (
            'batch_size: 1 inputs { key: "A" value { data_type: TYPE_INT32 dims: [3] zero_data: '
            "true } }",
            "differs from the model's TYPE_FP32",
        ),
        (
            'batch_size: 1 inputs { key: "A" value { data_type: TYPE_FP32 dims: [4] zero_data: '
            "true } }",
            "do not fit",
        ),
        (
            'batch_size: 1 inputs { key: "A" value { data_type: TYPE_FP32 dims: [3] } }',
            "give zero_data",
        ),
        (
            'batch_size: 1 inputs { key: "A" value { data_type: TYPE_FP32 dims: [3] '
            'input_data_file: "../../etc/passwd" } }',
            "outside the warmup folder",
        ),
        (
            'batch_size: 1 inputs { key: "A" value { data_type: TYPE_FP32 dims: [3] '
            'input_data_file: "missing.bin" } }',
            "cannot read",
        ),
        (
            'batch_size: 1 inputs { key: "S" value { data_type: TYPE_STRING dims: [2] zero_data: '
            "true } }",
            "no data for input(s) ['A']",
        ),
    ],
)
def test_warmup_errors(tmp_path: Path, entry: str, words: str) -> None:
    with pytest.raises(InferdError) as error:
        samples(f'model_warmup [{{ name: "bad" {entry} }}]', tmp_path)
    assert words in error.value.message and "warmup 'bad'" in error.value.message
