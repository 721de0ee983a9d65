"""One exception type with a protocol-neutral code; each front door maps codes through one table."""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    INVALID_ARG = "INVALID_ARG"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"
    TOO_LARGE = "TOO_LARGE"
    INTERNAL = "INTERNAL"


class InferdError(Exception):
    """Every failure a client may see. `str(error)` is the message sent on the wire."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"InferdError({self.code.name}, {self.message!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled (to and from python stub processes) as its class, code and message: the
        # default would call the class with the message alone.
        return (_rebuild, (type(self), self.code, self.message))


def _rebuild(cls: type[InferdError], code: ErrorCode, message: str) -> InferdError:
    error = Exception.__new__(cls)
    InferdError.__init__(error, code, message)
    return error


def invalid(message: str) -> InferdError:
    return InferdError(ErrorCode.INVALID_ARG, message)


def refused(request_id: str, message: str) -> InferdError:
    """A request refused as Triton words it to the client: prefixed with its id."""
    return invalid(with_request_id(request_id, message))


def no_active_instance(model: str) -> InferdError:
    """A request to a model whose instances are all passive. Triton 2.51 queues it for good;
    inferd answers at once rather than hang."""
    return unavailable(f"model '{model}' has no instance that takes requests: all are passive")


def with_request_id(request_id: str, message: str) -> str:
    """`message` prefixed with the request's id, as Triton words what it says of a request."""
    return f"[request id: {request_id or '<id_unknown>'}] {message}"


def not_found(message: str) -> InferdError:
    return InferdError(ErrorCode.NOT_FOUND, message)


def already_exists(message: str) -> InferdError:
    return InferdError(ErrorCode.ALREADY_EXISTS, message)


def unavailable(message: str) -> InferdError:
    return InferdError(ErrorCode.UNAVAILABLE, message)


def unsupported(message: str) -> InferdError:
    return InferdError(ErrorCode.UNSUPPORTED, message)


def internal(message: str) -> InferdError:
    return InferdError(ErrorCode.INTERNAL, message)


def body_too_large(limit: int) -> InferdError:
    return InferdError(
        ErrorCode.TOO_LARGE, f"request body is larger than the limit of {limit} bytes"
    )


# Triton's answer to a decoupled model over HTTP infer (the gRPC front door says it its way,
# and BLS its own).
HTTP_REFUSAL = "HTTP end point doesn't support models with decoupled transaction policy"
GRPC_REFUSAL = "ModelInfer RPC doesn't support models with decoupled transaction policy"


class ModelError(InferdError):
    """An error a model answered with itself (a python model's TritonError). A model that
    called it over BLS sees its code, where the server's own refusals read INTERNAL."""


class DecoupledRefused(InferdError):
    """A decoupled model asked for a single answer: each front door words it as Triton does."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.UNSUPPORTED, HTTP_REFUSAL)
