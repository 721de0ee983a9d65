"""A TensorFlow model where TensorFlow is not installed: a load error that says what to
install, while the rest of the repository serves. Runs with and without TensorFlow."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from tests.conftest import RunningServer
from tests.models import identity_model, write_model


@pytest.fixture
def without_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where TensorFlow is installed, make `import tensorflow` fail as it does where it is not
    (None in sys.modules is Python's own way to block an import); elsewhere this changes
    nothing."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)


@pytest.mark.usefixtures("without_tensorflow")
def test_a_tensorflow_model_without_tensorflow_says_what_to_install(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
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
    write_model(tmp_path, "onnx", identity_model(), "")
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        states = {e["name"]: e for e in client.get_model_repository_index()}
        assert client.is_model_ready("onnx")
    finally:
        client.close()
    for name in ("saved", "guessed", "graph"):
        assert states[name]["state"] == "UNAVAILABLE"
        assert "TensorFlow is not installed" in states[name]["reason"]
        assert "inferd[tensorflow]" in states[name]["reason"]
