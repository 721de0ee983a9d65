"""Triton's restricted APIs: `--http-restricted-api` and `--grpc-restricted-protocol`.

A restricted group of endpoints answers only requests that carry an agreed header and value;
others get HTTP 403 or gRPC UNAVAILABLE, with Triton's messages. On gRPC the header is the key
with Triton's `triton-grpc-protocol-` prefix. `grpc.health.v1` and `/metrics` stay open, as in
Triton: probes and scrapers cannot send extra headers.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
_MODELS = "/v2/models/"
_V1_MODELS = "/v1/models"


class Api(enum.Enum):
    HEALTH = "health"
    METADATA = "metadata"
    INFERENCE = "inference"
    SHARED_MEMORY = "shared-memory"
    MODEL_CONFIG = "model-config"
    MODEL_REPOSITORY = "model-repository"
    STATISTICS = "statistics"
    TRACE = "trace"
    LOGGING = "logging"


@dataclass(frozen=True, slots=True)
class Restriction:
    header: str  # lower case: header names are compared without case
    value: str

    def admits(self, headers: Mapping[bytes, bytes]) -> bool:
        """Whether HTTP request headers (names in lower case) carry the header and value."""
        return headers.get(self.header.encode()) == self.value.encode()


Restrictions = Mapping[Api, Restriction]


def parse_restrictions(items: Iterable[str], flag: str, noun: str) -> dict[Api, Restriction]:
    """`<api>[,<api>...]:<key>=<value>` items of `flag`; `noun` is "api" (HTTP) or "protocol"
    (gRPC), as in Triton's messages. Raises ValueError."""
    restrictions: dict[Api, Restriction] = {}
    for item in items:
        apis, colon, setting = item.partition(":")
        key, equals, value = setting.partition("=")
        if not (colon and equals and apis and key and value):
            raise ValueError(
                f"{flag} option format is '<config name>:<setting>=<value>'. Got {item}"
            )
        for name in apis.split(","):
            try:
                api = Api(name)
            except ValueError:
                raise ValueError(f"unknown restricted {noun} '{name}'") from None
            if api in restrictions:
                raise ValueError(
                    f"restricted {noun} '{name}' can not be specified in multiple config groups"
                )
            restrictions[api] = Restriction(key.lower(), value)
    return restrictions


def http_api(path: str) -> Api | None:
    """The group an HTTP path belongs to (None: not restrictable, or no such route)."""
    if path == "/v2":
        return Api.METADATA
    if path == "/":  # KServe's V1 liveness (http_v1.py)
        return Api.HEALTH
    if path.startswith(_MODELS):
        if path == "/v2/models/stats":
            return Api.STATISTICS
        rest = path[len(_MODELS) :].split("/")[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            rest = rest[2:]
        return _MODEL_ROUTES.get("/".join(rest))
    if path.startswith(_V1_MODELS):  # KServe's V1 protocol (http_v1.py)
        if path.endswith(":predict"):
            return Api.INFERENCE
        return Api.HEALTH if path.strip("/") != _V1_MODELS.strip("/") else Api.METADATA
    for prefix, api in _PREFIXES:
        if path.startswith(prefix):
            return api
    return None


def http_refusal(restriction: Restriction) -> str:
    return f"This API is restricted, expecting header '{restriction.header}'"


def grpc_header(restriction: Restriction) -> tuple[str, str]:
    """The metadata key and value a gRPC call must carry."""
    return GRPC_HEADER_PREFIX + restriction.header, restriction.value


def grpc_refusal(restriction: Restriction) -> str:
    return f"This protocol is restricted, expecting header '{grpc_header(restriction)[0]}'"


def grpc_api(method: str) -> Api | None:
    """The group of an `inference.GRPCInferenceService` method, by name."""
    return _GRPC_METHODS.get(method)


_MODEL_ROUTES = {
    "": Api.METADATA,
    "ready": Api.HEALTH,
    "config": Api.MODEL_CONFIG,
    "stats": Api.STATISTICS,
    "infer": Api.INFERENCE,
    "generate": Api.INFERENCE,
    "generate_stream": Api.INFERENCE,
    "infer_stream": Api.INFERENCE,  # MLServer's
    "trace/setting": Api.TRACE,
}
_PREFIXES = (
    ("/v2/health/", Api.HEALTH),
    ("/v2/repository/", Api.MODEL_REPOSITORY),
    ("/v2/systemsharedmemory", Api.SHARED_MEMORY),
    ("/v2/cudasharedmemory", Api.SHARED_MEMORY),
    ("/v2/trace/", Api.TRACE),
    ("/v2/logging", Api.LOGGING),
)
_GRPC_METHODS = {
    "ServerLive": Api.HEALTH,
    "ServerReady": Api.HEALTH,
    "ModelReady": Api.HEALTH,
    "ServerMetadata": Api.METADATA,
    "ModelMetadata": Api.METADATA,
    "ModelInfer": Api.INFERENCE,
    "ModelStreamInfer": Api.INFERENCE,
    "ModelConfig": Api.MODEL_CONFIG,
    "ModelStatistics": Api.STATISTICS,
    "RepositoryIndex": Api.MODEL_REPOSITORY,
    "RepositoryModelLoad": Api.MODEL_REPOSITORY,
    "RepositoryModelUnload": Api.MODEL_REPOSITORY,
    "SystemSharedMemoryStatus": Api.SHARED_MEMORY,
    "SystemSharedMemoryRegister": Api.SHARED_MEMORY,
    "SystemSharedMemoryUnregister": Api.SHARED_MEMORY,
    "CudaSharedMemoryStatus": Api.SHARED_MEMORY,
    "CudaSharedMemoryRegister": Api.SHARED_MEMORY,
    "CudaSharedMemoryUnregister": Api.SHARED_MEMORY,
    "TraceSetting": Api.TRACE,
    "LogSettings": Api.LOGGING,
}
