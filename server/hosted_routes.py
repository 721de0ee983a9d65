"""What the hosted platforms' front doors (Vertex AI, SageMaker) share: each serves a few
routes of its platform's own on a port of its own, and answers them by passing a rewritten
request to the HTTP front door, so that inference and every other endpoint behave there as
on the HTTP port (the same core, restrictions and body limit, as in Triton)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.server.errors import ErrorCode, InferdError, body_too_large, invalid
from inferd.server.http1 import HttpRequest, Reply

# A scope key naming the model of an inference request forwarded to the HTTP front door (a
# SageMaker model's name may hold a '/', which no path can carry).
INFER_MODEL = "inferd.infer_model"
INFERENCE_HEADER = b"inference-header-content-length"
CONTENT_TYPE = b"content-type"
JSON = b"application/json"

Headers = list[tuple[bytes, bytes]]


class BinaryJsonType:
    """A platform's content type for the binary tensor data extension, `<prefix>N` where N is
    the length of the JSON header before the binary data (what Triton's own HTTP port reads
    from Inference-Header-Content-Length, which these ports ignore)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()

    def marks(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether the request's content type is this type (else all its body is JSON)."""
        content_type = _content_type(headers)
        return content_type is not None and self.prefix in content_type

    def request_headers(
        self, headers: Sequence[tuple[bytes, bytes]], dropped: Collection[bytes], body_length: int
    ) -> Headers:
        """The request's headers for the HTTP front door: those in `dropped` left out, and N
        given as Inference-Header-Content-Length. InferdError for a malformed N."""
        kept = [(key, value) for key, value in headers if key not in dropped]
        content_type = _content_type(kept)
        if content_type is None or self.prefix not in content_type:
            return kept
        text = content_type.decode("latin-1")
        if not content_type.startswith(self.prefix):
            raise invalid(
                f"expect MIME type for binary data starts with '{self.prefix.decode()}', "
                f"got: {text}"
            )
        raw = text[len(self.prefix) :]
        length = _leading_int(raw)  # as C's atoi: digits up to the first other character
        if length < 0 or length > body_length:
            raise invalid(
                f"inference header size should be in range (0, {body_length}), got: {raw}"
            )
        kept.append((INFERENCE_HEADER, b"%d" % length))
        return kept

    def response_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> Headers:
        """The HTTP front door's answer headers with its binary marker in this type."""
        length = next((value for key, value in headers if key == INFERENCE_HEADER), None)
        if length is None:
            return list(headers)
        kept = [(k, v) for k, v in headers if k not in (INFERENCE_HEADER, CONTENT_TYPE)]
        return [(CONTENT_TYPE, self.prefix + length), *kept]


def fast_request(
    http: HttpRequest, binary: BinaryJsonType, dropped: Collection[bytes], reply: Reply
) -> bool:
    """For a fast route: rewrite the request's headers for the HTTP front door's fast path (see
    `request_headers`); False when it was refused instead (answered through `reply`)."""
    try:
        http.headers = binary.request_headers(http.headers, dropped, len(http.body))
    except InferdError as error:
        reply(refusal_status(error), [(CONTENT_TYPE, JSON)], error_body(error))
        return False
    return True


def error_body(error: InferdError) -> bytes:
    return orjson.dumps({"error": error.message})


def _content_type(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    return next((value for key, value in headers if key == CONTENT_TYPE), None)


async def binary_request(
    scope: Scope, receive: Receive, binary: BinaryJsonType, limit: int, dropped: Collection[bytes]
) -> tuple[Headers, Receive]:
    """An inference request's headers for the HTTP front door (see `request_headers`), and
    where its body is read from: a body this type marks is read first, for its length."""
    if not binary.marks(scope["headers"]):
        return [(key, value) for key, value in scope["headers"] if key not in dropped], receive
    body = await read_body(receive, limit)
    return binary.request_headers(scope["headers"], dropped, len(body)), replay(body)


def _leading_int(text: str) -> int:
    text = text.strip()
    end = 1 if text[:1] in ("-", "+") else 0
    while end < len(text) and text[end].isdigit():
        end += 1
    try:
        return int(text[:end])
    except ValueError:
        return 0


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes) -> Receive:
    """A `receive` that hands on a body already read."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def forward(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    path: str,
    method: str,
    headers: Headers | None = None,
) -> None:
    """Serve the request as `method path` on `app` (the HTTP front door)."""
    rewritten = dict(scope)
    rewritten.update(path=path, raw_path=path.encode(), method=method, query_string=b"")
    if headers is not None:
        rewritten["headers"] = headers
    await app(rewritten, receive, send)


async def reply(send: Send, status: int, body: bytes = b"", content_type: bytes = JSON) -> None:
    headers = [(b"content-length", b"%d" % len(body))]
    if body:
        headers.append((CONTENT_TYPE, content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def reply_error(send: Send, status: int, error: InferdError) -> None:
    await reply(send, status, error_body(error))


def refusal_status(error: InferdError) -> int:
    """The status of a request refused before it reached the HTTP front door."""
    return 413 if error.code is ErrorCode.TOO_LARGE else 400
