"""The Vertex AI front door (`--allow-vertex-ai`), as Triton serves it for Google's Vertex AI
prediction containers: on its own port (AIP_HTTP_PORT), the platform's health route answers
whether the server is ready, and its predict route runs the default model, or, with the header
X-Vertex-Ai-Triton-Redirect, any HTTP endpoint of the server (Vertex AI only sends POST)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.server.errors import InferdError
from inferd.server.hosted_routes import (
    INFERENCE_HEADER,
    BinaryJsonType,
    binary_request,
    fast_request,
    forward,
    refusal_status,
    reply,
    reply_error,
)
from inferd.server.http1 import DECLINED, Declined, FastHandler, FastRouter, HttpRequest, Reply
from inferd.server.types import ModelIndexEntry

REDIRECT_HEADER = b"x-vertex-ai-triton-redirect"
BINARY_TYPE = BinaryJsonType("application/vnd.vertex-ai-triton.binary+json;json-header-size=")

# The endpoints a redirect may reach, with the method each is served with: Vertex AI sends
# every request as POST, so those that read are turned into GET, as Triton does.
_MODEL = re.compile(r"/v2/models/[^/]+(?:/versions/[0-9]+)?(?:/(infer|ready|config|stats))?")
_SHARED_MEMORY = re.compile(
    r"/v2/(?:system|cuda)sharedmemory(?:/region/[^/]+)?/(status|register|unregister)"
)
_REPOSITORY = re.compile(r"/v2/repository(?:/[^/]+)?/(?:index|models/[^/]+/(?:load|unload))")
_READS = frozenset({"/metrics", "/v2/models/stats", "/v2", "/v2/health/live", "/v2/health/ready"})


@dataclass(frozen=True, slots=True)
class VertexAiSettings:
    """--allow-vertex-ai and the environment Vertex AI gives the container."""

    port: int = 8080  # --vertex-ai-port, AIP_HTTP_PORT
    default_model: str = ""  # --vertex-ai-default-model; empty: the repository's only model
    predict_route: str = ""  # AIP_PREDICT_ROUTE
    health_route: str = ""  # AIP_HEALTH_ROUTE

    def check(self) -> None:
        """Vertex AI sets both routes; without them there is nothing to serve."""
        for name, route in (
            ("AIP_PREDICT_ROUTE", self.predict_route),
            ("AIP_HEALTH_ROUTE", self.health_route),
        ):
            if not route:
                raise ValueError(f"{name} is not defined for Vertex AI endpoint")
            try:  # matched as a regular expression, as Triton matches it
                re.compile(route)
            except re.error as exc:
                raise ValueError(f"{name}={route!r} is not a valid route: {exc}") from None


def vertex_settings(
    environ: Mapping[str, str], port: int | None, default_model: str
) -> VertexAiSettings:
    return VertexAiSettings(
        port=_aip_port(environ) if port is None else port,
        default_model=default_model,
        predict_route=environ.get("AIP_PREDICT_ROUTE", ""),
        health_route=environ.get("AIP_HEALTH_ROUTE", ""),
    )


def _aip_port(environ: Mapping[str, str]) -> int:
    raw = environ.get("AIP_HTTP_PORT", "8080")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"AIP_HTTP_PORT={raw!r}: not a port number") from None


def default_model(settings: VertexAiSettings, ready: list[ModelIndexEntry]) -> str:
    """The model the predict route runs, checked once the models are loaded (Triton's
    start-up errors, word for word)."""
    names = [entry.name for entry in ready]
    if not settings.default_model:
        if len(names) != 1:
            raise ValueError(
                "Expect the model repository contains only a single model if default model "
                "is not specified"
            )
        return names[0]
    if settings.default_model not in names:
        raise ValueError(f"Expect the default model '{settings.default_model}' is loaded")
    return settings.default_model


def redirect_method(path: str) -> str | None:
    """The method a redirected request is served with; None: not an endpoint one can reach."""
    if path in _READS:
        return "GET"
    found = _MODEL.fullmatch(path)
    if found is not None:
        return "POST" if found.group(1) == "infer" else "GET"
    found = _SHARED_MEMORY.fullmatch(path)
    if found is not None:
        return "GET" if found.group(1) == "status" else "POST"
    if _REPOSITORY.fullmatch(path):
        return "POST"
    return None


class VertexAiFrontDoor:
    """The ASGI application of the Vertex AI port, in front of the HTTP front door `http`."""

    def __init__(
        self,
        http: ASGIApp,
        settings: VertexAiSettings,
        model: str,
        max_input_size: int,
        http_fast_route: FastRouter | None = None,
    ) -> None:
        self._http = http
        self._predict = re.compile(settings.predict_route)
        self._health = re.compile(settings.health_route)
        self._infer_path = f"/v2/models/{model}/infer"
        self._max_input_size = max_input_size
        # The HTTP front door's fast route for the default model (inferd's HTTP/1.1 server).
        self._fast_infer = (
            None if http_fast_route is None else http_fast_route("POST", self._infer_path)
        )

    def fast_route(self, method: str, path: str) -> FastHandler | None:
        """For inferd's HTTP/1.1 server: a predict request on the HTTP front door's fast path
        (one with a redirect header declines it, for the ASGI app)."""
        if method == "POST" and self._fast_infer is not None and self._predict.fullmatch(path):
            return self._predict_now
        return None

    def _predict_now(
        self, http: HttpRequest, reply: Reply
    ) -> asyncio.Future[Any] | Declined | None:
        assert self._fast_infer is not None
        if any(key == REDIRECT_HEADER for key, _ in http.headers):
            return DECLINED
        if not fast_request(http, BINARY_TYPE, (INFERENCE_HEADER,), reply):
            return None
        return self._fast_infer(http, reply)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if self._health.fullmatch(path):
            await forward(self._http, scope, receive, send, "/v2/health/ready", method)
            return
        if not self._predict.fullmatch(path):
            await reply(send, 400)
            return
        redirect = dict(scope["headers"]).get(REDIRECT_HEADER)
        if redirect is None:
            await self._infer(scope, receive, send, self._infer_path, method)
            return
        if method != "POST":
            await reply(send, 405)
            return
        target = "/" + redirect.decode("latin-1")
        served_with = redirect_method(target)
        if served_with is None:
            await reply(send, 400)
        elif target.endswith("/infer"):
            await self._infer(scope, receive, send, target, served_with)
        else:
            await forward(self._http, scope, receive, send, target, served_with)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> None:
        """An inference request, its binary data marked by this platform's content type; the
        answer keeps the HTTP port's form (Inference-Header-Content-Length), as in Triton."""
        try:
            headers, receive = await binary_request(
                scope, receive, BINARY_TYPE, self._max_input_size, (INFERENCE_HEADER,)
            )
        except InferdError as error:
            await reply_error(send, refusal_status(error), error)
            return
        await forward(self._http, scope, receive, send, path, method, headers)
