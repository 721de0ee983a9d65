"""The SageMaker front door (`--allow-sagemaker`), as Triton serves it for Amazon SageMaker
endpoints: on its own port (8080), `/ping` answers whether the server is ready (or live), and
`/invocations` runs the default model (SAGEMAKER_TRITON_DEFAULT_MODEL_NAME). A multi-model
endpoint loads, lists, invokes and unloads models under `/models` as SageMaker asks: each
model is a folder SageMaker unpacked, registered as a repository of its own.

As in Triton 2.51 (its answers were compared here): a model that fails while it runs answers
400, or 507 when the error says memory ran out (SageMaker then unloads models and retries); a
request refused before it runs keeps the HTTP port's status, except on a multi-model endpoint;
the binary tensor extension is marked by the content type
`application/vnd.sagemaker-triton.binary+json;json-header-size=N`, and nothing is compressed."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.server.errors import ErrorCode, InferdError, already_exists, invalid
from inferd.server.hosted_routes import (
    INFER_MODEL,
    INFERENCE_HEADER,
    BinaryJsonType,
    binary_request,
    error_body,
    fast_request,
    forward,
    read_body,
    refusal_status,
    reply,
    reply_error,
)
from inferd.server.http1 import Declined, FastHandler, FastRouter, HttpRequest, Reply
from inferd.server.http1 import Headers as ReplyHeaders
from inferd.server.restricted_api import Api, Restrictions, http_refusal

BINARY_TYPE = BinaryJsonType("application/vnd.sagemaker-triton.binary+json;json-header-size=")
TARGET_MODEL_HEADER = b"x-amzn-sagemaker-target-model"
UNSPECIFIED_MODEL = "unspecified_SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"
INSUFFICIENT_STORAGE = 507
_MODELS = re.compile(r"/models(?:/)?([^/]+)?(/invoke)?")
_SYSTEM_FOLDERS = ("/dev/", "/proc/", "/sys/")
_NOT_FORWARDED = (INFERENCE_HEADER, b"accept-encoding", b"content-encoding")
_ENSEMBLE = re.compile(r'platform:\s*"ensemble"')
# Words in an error that mean memory ran out: SageMaker then unloads other models and retries.
_OUT_OF_MEMORY = (
    "CUDA out of memory",
    "CUDA_OUT_OF_MEMORY",
    "Out of memory",
    "Out Of Memory",
    "out of memory",
    "MemoryError",
    "OutOfMemory",
    "OOM",
    "Dst tensor is not initialized",
    "Src tensor is not initialized",
    "CNMEM_STATUS_OUT_OF_MEMORY",
    "CUDNN_STATUS_NOT_INITIALIZED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_NOT_INITIALIZED",
    "Failed to allocate memory",
    "failed to allocate memory",
    "No space left on device",
)


@dataclass(frozen=True, slots=True)
class SageMakerSettings:
    """--allow-sagemaker, --sagemaker-port and the SAGEMAKER_TRITON_* environment."""

    port: int = 8080
    # --sagemaker-safe-port-range: the ports the server's other front doors must use.
    safe_port_range: tuple[int, int] | None = None
    default_model: str = UNSPECIFIED_MODEL  # SAGEMAKER_TRITON_DEFAULT_MODEL_NAME
    ping_mode: str = "ready"  # SAGEMAKER_TRITON_PING_MODE: ready | live


def sagemaker_settings(
    environ: Mapping[str, str], port: int, safe_port_range: tuple[int, int] | None
) -> SageMakerSettings:
    # Any value but "live" means readiness, as in Triton.
    ping_mode = "live" if environ.get("SAGEMAKER_TRITON_PING_MODE") == "live" else "ready"
    return SageMakerSettings(
        port=port,
        safe_port_range=safe_port_range,
        default_model=environ.get("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME", UNSPECIFIED_MODEL),
        ping_mode=ping_mode,
    )


class ModelControl(Protocol):
    """What a multi-model endpoint needs of the core."""

    async def register_repository(self, root: Path, names: Mapping[str, str]) -> None: ...

    async def unregister_repository(self, root: Path) -> None: ...

    async def load_model(self, name: str) -> None: ...

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None: ...

    def model_ready(self, name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A multi-model endpoint's model: the repository it was registered as, its name there."""

    root: Path
    model: str


class SageMakerFrontDoor:
    """The ASGI application of the SageMaker port, in front of the HTTP front door `http`."""

    def __init__(
        self,
        http: ASGIApp,
        settings: SageMakerSettings,
        models: ModelControl,
        max_input_size: int,
        http_fast_route: FastRouter | None = None,
        restricted: Restrictions | None = None,
    ) -> None:
        self._http = http
        self._models = models
        # --http-restricted-api's model-repository group covers the /models routes, as in
        # Triton (the others are the HTTP front door's to check).
        self._repository_restriction = (restricted or {}).get(Api.MODEL_REPOSITORY)
        self._ping_path = f"/v2/health/{settings.ping_mode}"
        self._default_model = settings.default_model
        # The HTTP front door's fast route for the default model's inference (inferd's HTTP/1.1
        # server takes it without an ASGI cycle; uvicorn never asks).
        self._fast_infer = (
            None
            if http_fast_route is None or "/" in settings.default_model
            else http_fast_route("POST", f"/v2/models/{settings.default_model}/infer")
        )
        self._max_input_size = max_input_size
        # The multi-model endpoint's models, by the name SageMaker gave them.
        self._loaded: dict[str, _Loaded] = {}
        self._changing: set[str] = set()  # names being loaded or unloaded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/ping":
            await forward(self._http, scope, receive, send, self._ping_path, method)
        elif path == "/invocations":
            await self._infer(scope, receive, send, self._default_model)
        elif (found := _MODELS.fullmatch(path)) is not None:
            await self._multi_model(scope, receive, send, method, found[1], found[2])
        else:
            await reply(send, 400)

    def fast_route(self, method: str, path: str) -> FastHandler | None:
        """For inferd's HTTP/1.1 server: `/invocations` on the HTTP front door's fast route."""
        if method == "POST" and path == "/invocations" and self._fast_infer is not None:
            return self._invocations
        return None

    def _invocations(
        self, http: HttpRequest, reply: Reply
    ) -> asyncio.Future[Any] | Declined | None:
        assert self._fast_infer is not None
        if not fast_request(http, BINARY_TYPE, _NOT_FORWARDED, reply):
            return None

        def answer(status: int, answer_headers: ReplyHeaders, body: bytes) -> None:
            changed = BINARY_TYPE.response_headers(answer_headers)
            reply(_answer_status(status, body, every_failure=False), changed, body)

        return self._fast_infer(http, answer)

    # ---- inference -----------------------------------------------------------------------

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, model: str, multi_model: bool = False
    ) -> None:
        """Inference on `model`. As in Triton, a failure while the model runs answers 400 (507
        for memory); a request refused before it runs keeps the HTTP port's status, except on
        a multi-model endpoint, where every failure answers 400 (or 507)."""
        # Bodies travel as they are both ways: no compression on this port, as in Triton.
        try:
            headers, receive = await binary_request(
                scope, receive, BINARY_TYPE, self._max_input_size, _NOT_FORWARDED
            )
        except InferdError as error:
            await reply_error(send, refusal_status(error), error)
            return
        # The name travels beside the path: SageMaker's may hold a '/' (an S3 key).
        path = f"/v2/models/{quote(model, safe='')}/infer"
        answer = _SageMakerAnswer(send, multi_model)
        scope = {**scope, INFER_MODEL: model}
        await forward(self._http, scope, receive, answer, path, scope["method"], headers)

    # ---- the multi-model endpoint ----------------------------------------------------------

    async def _multi_model(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        name: str | None,
        invoke: str | None,
    ) -> None:
        headers = dict(scope["headers"])
        target = headers.get(TARGET_MODEL_HEADER)
        restriction = self._repository_restriction
        manages = invoke is None or method != "POST"  # everything but an invocation
        if manages and restriction is not None and not restriction.admits(headers):
            await reply(send, 403, error_body(invalid(http_refusal(restriction))))
            return
        if method == "GET" and name is None:
            await self._list(send)
        elif method == "GET" and name is not None:  # `/invoke` too, as in Triton
            await self._describe(send, name)
        elif method == "POST" and invoke is not None and name is not None:
            loaded = self._loaded.get(name)
            if loaded is None:
                await reply(send, 404)
                return
            # The model the header names, else the one this name loaded (Triton would take
            # the name in the path, which is not the model's name when a header named it).
            model = target.decode("latin-1") if target is not None else loaded.model
            await self._infer(scope, receive, send, model, multi_model=True)
        elif method == "POST" and name is None:
            await self._load(receive, send, target)
        elif method == "DELETE":
            await self._unload(send, name or "")
        else:
            await reply(send, 400)

    async def _list(self, send: Send) -> None:
        # A model that is not ready (any more) is an empty object, as Triton lists it.
        models = [
            {"modelName": name, "modelUrl": str(loaded.root)}
            if self._models.model_ready(loaded.model)
            else {}
            for name, loaded in self._loaded.items()
        ]
        await reply(send, 200, orjson.dumps({"models": models}))

    async def _describe(self, send: Send, name: str) -> None:
        loaded = self._loaded.get(name)
        if loaded is None:
            await reply(send, 404)
            return
        await reply(send, 200, orjson.dumps({"modelName": name, "modelUrl": str(loaded.root)}))

    async def _load(self, receive: Receive, send: Send, target: bytes | None) -> None:
        try:
            request = _load_request(await read_body(receive, self._max_input_size))
        except InferdError as error:
            await reply_error(send, 400, error)
            return
        name, url = request
        folder = Path(os.path.abspath(os.path.normpath(url)))  # as given: not through links
        if str(folder).startswith(_SYSTEM_FOLDERS) or str(folder) + "/" in _SYSTEM_FOLDERS:
            await reply(send, 400)
            return
        model = target.decode("latin-1") if target is not None else name
        if name in self._loaded or name in self._changing:
            await reply_error(send, 409, already_exists(f"model '{name}' is already loaded"))
            return
        self._changing.add(name)  # loads of other models go on meanwhile
        try:
            root, subfolder = await asyncio.to_thread(_model_folder, folder)
            status, failure = await self._register_and_load(root, {subfolder: model}, model)
            if failure is None:
                self._loaded[name] = _Loaded(root, model)
        finally:
            self._changing.discard(name)
        if failure is not None:
            await reply_error(send, status, failure)
        else:
            await reply(send, 200)

    async def _register_and_load(
        self, root: Path, names: dict[str, str], model: str
    ) -> tuple[int, InferdError | None]:
        try:
            await self._models.register_repository(root, names)
        except InferdError as error:
            return (409 if error.code is ErrorCode.ALREADY_EXISTS else 400), error
        try:
            await self._models.load_model(model)
        except InferdError as error:
            # What loaded for it (an ensemble's steps) goes with the repository.
            await self._models.unregister_repository(root)
            return _status(error.message), error
        return 200, None

    async def _unload(self, send: Send, name: str) -> None:
        loaded = self._loaded.get(name)
        if loaded is None or name in self._changing:
            await reply(send, 404)
            return
        self._changing.add(name)
        try:
            # The models an ensemble loaded for itself go with it, then its repository.
            await self._models.unload_model(loaded.model, unload_dependents=True)
            await self._models.unregister_repository(loaded.root)
            del self._loaded[name]
        except InferdError as error:
            await reply_error(send, 400, error)
            return
        finally:
            self._changing.discard(name)
        await reply(send, 200)


def _load_request(body: bytes) -> tuple[str, str]:
    """`{"model_name": ..., "url": ...}` from a load request."""
    try:
        request: Any = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as exc:
        raise invalid(f"failed to parse the load request: {exc}") from None
    if not isinstance(request, dict):
        raise invalid("the load request must be a JSON object")
    name, url = request.get("model_name", ""), request.get("url", "")
    if not isinstance(name, str) or not isinstance(url, str):
        raise invalid("'model_name' and 'url' must be strings")
    if not name or not url:
        raise invalid("a load request needs 'model_name' and 'url'")
    return name, url


def _model_folder(url: Path) -> tuple[Path, str]:
    """The repository to register and the model folder in it: `url` itself when it holds a
    config.pbtxt; else the folder under it, or its ensemble when there are several (the
    other models are the ensemble's steps)."""
    if (url / "config.pbtxt").is_file():
        return url.parent, url.name
    chosen = ""
    try:
        for entry in sorted(url.iterdir()):
            if not entry.is_dir():
                continue
            if not chosen:
                chosen = entry.name
            config = entry / "config.pbtxt"
            if config.is_file() and _ENSEMBLE.search(config.read_text(errors="replace")):
                return url, entry.name
    except OSError:
        pass  # the load reports the missing folder
    return url, chosen


def _status(message: str) -> int:
    """Triton's SageMaker answer to a failure: 400, or 507 when memory ran out."""
    return INSUFFICIENT_STORAGE if any(w in message for w in _OUT_OF_MEMORY) else 400


class _SageMakerAnswer:
    """A `send` that gives the HTTP front door's answer SageMaker's form: binary data marked
    by the content type, and failures answered 400 (every one, or those of a running model:
    the HTTP port's 500), or 507 when memory ran out."""

    def __init__(self, send: Send, every_failure: bool) -> None:
        self._send = send
        self._every_failure = every_failure
        self._start: Message | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = BINARY_TYPE.response_headers(list(message.get("headers", [])))
            message = {**message, "headers": headers}
            if message["status"] >= 400:
                self._start = message  # the status waits for the error's words
                return
        elif self._start is not None and message["type"] == "http.response.body":
            start, self._start = self._start, None
            body = message.get("body", b"")
            status = _answer_status(start["status"], body, self._every_failure)
            await self._send({**start, "status": status})
        await self._send(message)


def _answer_status(status: int, body: bytes, every_failure: bool) -> int:
    """The status of the HTTP front door's answer on this port."""
    if status >= 400 and (every_failure or status == 500):
        return _status(_error_text(body))
    return status


def _error_text(body: bytes) -> str:
    try:
        error = orjson.loads(body).get("error", "")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return error if isinstance(error, str) else ""
