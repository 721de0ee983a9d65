"""A TensorFlow, TorchScript, OpenVINO, FIL or MLServer model where its framework is not
installed: a load error that says what to install, while the rest of the repository serves.
Runs with and without the frameworks (None in sys.modules is Python's own way to block an
import)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient

from tests.conftest import RunningServer
from tests.models import identity_model, write_model

Factory = Callable[..., RunningServer]

TORCH_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
"""


def index_beside_an_onnx_model(server_factory: Factory, repo: Path) -> dict[str, Any]:
    """The repository index by model, once an ONNX model beside the others serves."""
    write_model(repo, "onnx", identity_model(), "")
    server = server_factory(model_repositories=(repo,), strict_readiness=False)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_model_ready("onnx")
        return {e["name"]: e for e in client.get_model_repository_index()}
    finally:
        client.close()


def test_a_tensorflow_model_without_tensorflow_says_what_to_install(
    tmp_path: Path, server_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    saved = tmp_path / "saved" / "1" / "model.savedmodel"
    saved.mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"")
    (tmp_path / "saved" / "config.pbtxt").write_text('platform: "tensorflow_savedmodel"')
    guessed = tmp_path / "guessed" / "1" / "model.savedmodel"  # no config: found by its file
    guessed.mkdir(parents=True)
    graph = tmp_path / "graph" / "1"
    graph.mkdir(parents=True)
    (graph / "model.graphdef").write_bytes(b"")
    (tmp_path / "graph" / "config.pbtxt").write_text('platform: "tensorflow_graphdef"')
    states = index_beside_an_onnx_model(server_factory, tmp_path)
    for name in ("saved", "guessed", "graph"):
        assert states[name]["state"] == "UNAVAILABLE"
        assert "TensorFlow is not installed" in states[name]["reason"]
        assert "inferd[tensorflow]" in states[name]["reason"]


def test_a_torchscript_model_without_torch_says_what_to_install(
    tmp_path: Path, server_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    by_backend = TORCH_CONFIG.replace('platform: "pytorch_libtorch"', 'backend: "pytorch"')
    for name, config in (("platform", TORCH_CONFIG), ("backend", by_backend)):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.pt").write_bytes(b"")
        (tmp_path / name / "config.pbtxt").write_text(config)
    states = index_beside_an_onnx_model(server_factory, tmp_path)
    for name in ("platform", "backend"):
        assert states[name]["state"] == "UNAVAILABLE"
        assert "PyTorch is not installed" in states[name]["reason"]
        assert "inferd[pytorch]" in states[name]["reason"]


def write_openvino(repo: Path) -> None:
    (repo / "ir" / "1").mkdir(parents=True)
    (repo / "ir" / "1" / "model.xml").write_text("<net/>")  # no config: found by its file


def write_forest(repo: Path) -> None:
    (repo / "forest" / "1").mkdir(parents=True)
    (repo / "forest" / "1" / "xgboost.json").write_text("{}")
    (repo / "forest" / "config.pbtxt").write_text(
        'backend: "fil"\nmax_batch_size: 8\n'
        'input [{ name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
        'output [{ name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    )


def write_mlserver(repo: Path) -> None:
    (repo / "mlmodel").mkdir()
    (repo / "mlmodel" / "model-settings.json").write_text('{"implementation": "runtime.Model"}')


@pytest.mark.parametrize(
    ("blocked", "backend_module", "write", "model", "words"),
    [
        ("openvino", "openvino", write_openvino, "ir", "backend 'openvino' is not installed"),
        ("treelite", "fil", write_forest, "forest", "inferd[fil]"),
        ("mlserver", "mlserver", write_mlserver, "mlmodel", "MLServer is not installed"),
    ],
    ids=["openvino", "fil", "mlserver"],
)
def test_a_model_without_its_framework_says_what_to_install(
    tmp_path: Path,
    server_factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
    blocked: str,
    backend_module: str,
    write: Callable[[Path], None],
    model: str,
    words: str,
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.delitem(sys.modules, f"inferd.backends.{backend_module}", raising=False)
    write(tmp_path)
    states = index_beside_an_onnx_model(server_factory, tmp_path)
    assert states[model]["state"] == "UNAVAILABLE"
    assert words in states[model]["reason"]
    assert f"inferd[{backend_module}]" in states[model]["reason"]
