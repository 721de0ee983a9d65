"""MLServer's envelope around its models' requests and answers (server/mlserver_envelope.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferd.server.mlserver_envelope import MLServerEnvelope
from inferd.server.types import DataType, InferRequest, InferResponse


def test_in_a_pod_the_namespace_joins_the_cloudevents_source(tmp_path: Path) -> None:
    namespace = tmp_path / "namespace"
    namespace.write_text("models")
    envelope = MLServerEnvelope.here("srv", namespace)
    request = InferRequest("m", "", {"x": np.ones(1)}, id="r1")
    envelope.wrap_request(request, {"ce-type": "from the client", "x-a": "1"})
    assert request.id == "r1"  # kept when given
    assert request.headers is not None
    assert request.headers["x-a"] == "1"
    assert request.headers["Ce-Source"] == "io.seldon.serving.deployment.srv.models"
    assert request.headers["Ce-Namespace"] == "models"
    response = InferResponse("m", "1", [("y", DataType.FP32, np.ones(1))], "r1")
    response.headers = {"X-Model": "yes", "Ce-Type": "the model's"}
    headers = MLServerEnvelope.here("srv", tmp_path / "absent").answer_headers(response)
    assert headers["X-Model"] == "yes"
    assert headers["Ce-Type"] == "io.seldon.serving.inference.response"  # MLServer's wins
    assert headers["Ce-Source"] == "io.seldon.serving.deployment.srv"
    assert "Ce-Namespace" not in headers
