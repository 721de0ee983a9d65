"""What MLServer's dataplane adds around its models' requests and answers: an id for a request
that came without one, the request's headers (HTTP, or gRPC metadata) in what `predict()` gets,
and CloudEvents headers in binary mode (`Ce-*`, its CloudEventsMiddleware) on both, naming
the server, the model and the request. The front doors apply it to MLServer models only."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inferd.server.types import InferRequest, InferResponse

_SPECVERSION = "0.3"
_REQUEST_TYPE = "io.seldon.serving.inference.request"
_RESPONSE_TYPE = "io.seldon.serving.inference.response"
# Where a pod finds its namespace (Kubernetes mounts it with the service account).
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True, slots=True)
class MLServerEnvelope:
    server_name: str  # --id (MLServer's server_name)
    namespace: str | None = None

    @classmethod
    def here(cls, server_name: str, namespace_file: Path = NAMESPACE_FILE) -> MLServerEnvelope:
        try:
            namespace: str | None = namespace_file.read_text()
        except OSError:
            namespace = None
        return cls(server_name, namespace or None)

    def wrap_request(self, request: InferRequest, headers: Mapping[str, str]) -> None:
        """The request as MLServer hands it to its model."""
        if not request.id:
            request.id = str(uuid.uuid4())
        request.headers = {**headers, **self._events(_REQUEST_TYPE, request.model_name, request.id)}

    def answer_headers(self, response: InferResponse) -> dict[str, str]:
        """The answer's headers: the model's, then MLServer's CloudEvents ones."""
        events = self._events(_RESPONSE_TYPE, response.model_name, response.id)
        return {**(response.headers or {}), **events}

    def _events(self, kind: str, model: str, request_id: str) -> dict[str, str]:
        source = f"io.seldon.serving.deployment.{self.server_name}"
        if self.namespace:
            source = f"{source}.{self.namespace}"
        headers = {
            "Ce-Specversion": _SPECVERSION,
            "Ce-Source": source,
            "Ce-Type": kind,
            "Ce-Modelid": model,
            "Ce-Inferenceservicename": self.server_name,
            "Ce-Endpoint": model,
            "Ce-Id": request_id,
            "Ce-Requestid": request_id,
        }
        if self.namespace:
            headers["Ce-Namespace"] = self.namespace
        return headers
