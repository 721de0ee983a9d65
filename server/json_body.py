"""Request bodies that are JSON objects (repository, shared-memory, logging and generate calls)."""

from __future__ import annotations

from typing import Any

import orjson

from inferd.server.errors import invalid


def json_object(body: bytes, not_object: str) -> dict[str, Any]:
    """The body as a dict; an empty body is an empty object. `not_object`: the error for JSON
    that is not an object."""
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"failed to parse the request JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid(not_object)
    return doc
