"""A TorchScript model where torch is not installed: a load error that says what to install,
while the rest of the repository serves. Runs with and without torch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from tests.conftest import RunningServer
from tests.models import identity_model, write_model

CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
"""


def test_a_torchscript_model_without_torch_says_what_to_install(
    tmp_path: Path, server_factory: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as where torch is not installed
    for name, config in (
        ("platform", CONFIG),
        ("backend", CONFIG.replace('platform: "pytorch_libtorch"', 'backend: "pytorch"')),
    ):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.pt").write_bytes(b"")
        (tmp_path / name / "config.pbtxt").write_text(config)
    write_model(tmp_path, "onnx", identity_model(), "")
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        states = {e["name"]: e for e in client.get_model_repository_index()}
        assert client.is_model_ready("onnx")
    finally:
        client.close()
    for name in ("platform", "backend"):
        assert states[name]["state"] == "UNAVAILABLE"
        assert "PyTorch is not installed" in states[name]["reason"]
        assert "inferd[pytorch]" in states[name]["reason"]
