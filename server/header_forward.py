"""--http-header-forward-pattern / --grpc-header-forward-pattern: request headers whose names
match a regular expression reach the model as string request parameters (Triton's extension).

As in Triton the pattern is searched for anywhere in the name (`my_` matches `x-my_key`) without
regard to case, unless it starts with `(?-i)`. HTTP/1.1 and gRPC stacks hand over header names in
lower case, so a case-sensitive pattern with capitals matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from inferd.server.errors import invalid
from inferd.server.types import InferRequest

_CASE_SENSITIVE = "(?-i)"

# Parameters with a meaning to the server: a header must not set them behind the client's back.
_RESERVED = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "headers",
        "binary_data_output",
    }
)


class HeaderForward:
    """Copies matching headers into a decoded request's parameters."""

    __slots__ = ("_pattern",)

    def __init__(self, pattern: str, flag: str) -> None:
        """Raises ValueError, naming `flag`, for a pattern that is not a regular expression."""
        flags = re.IGNORECASE
        if pattern.startswith(_CASE_SENSITIVE):
            pattern, flags = pattern[len(_CASE_SENSITIVE) :], re.NOFLAG
        try:
            self._pattern = re.compile(pattern, flags)
        except re.error as exc:
            raise ValueError(f"{flag}: invalid regular expression '{pattern}': {exc}") from None

    def apply(self, request: InferRequest, headers: Iterable[tuple[str, str]]) -> None:
        """A forwarded header replaces a body parameter of the same name, as in Triton, where
        it is set after the body's; a reserved name is refused rather than forwarded."""
        for name, value in headers:
            if not self._pattern.search(name):
                continue
            if name in _RESERVED or name.startswith("triton_"):
                raise invalid(
                    f"header '{name}' matches the header forward pattern, but '{name}' is a "
                    f"request parameter reserved for Triton usage"
                )
            request.parameters[name] = value


def header_forward(pattern: str, flag: str) -> HeaderForward | None:
    """None when no pattern was given: forwarding then costs nothing per request."""
    return HeaderForward(pattern, flag) if pattern else None
