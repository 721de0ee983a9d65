"""The stacks that carry the gRPC port: inferd's own HTTP/2 layer, or grpc.aio.

Both run the same handlers (`grpc_calls`). The own stack is the default: on small requests
grpc.aio costs about twice Triton's CPU per call (benchmarks/README.md); grpc.aio stays
available (`--grpc-stack=grpcio`) for what only it has, such as its ping-abuse policing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc

from inferd.server.grpc_calls import MethodKind, RpcError, RpcMethod
from inferd.server.grpc_tls import GrpcTls
from inferd.server.grpc_transport import GrpcBindError, Http2GrpcServer
from inferd.server.settings import GrpcChannel, GrpcStackName


class GrpcStack(Protocol):
    port: int

    async def stop(self, grace: float) -> None:
        """Refuse new calls, give in-flight ones `grace` seconds, then cancel them."""


async def start_stack(
    name: GrpcStackName,
    methods: Mapping[str, RpcMethod],
    address: str,
    port: int,
    channel: GrpcChannel,
    tls: GrpcTls | None = None,
) -> GrpcStack:
    if name == "grpcio":
        return await _start_grpcio(methods, address, port, channel, tls)
    server = Http2GrpcServer(methods, channel)
    context = tls.ssl_context() if tls is not None else None
    return _Http2Stack(server, await server.start(address, port, context))


class _Http2Stack:
    def __init__(self, server: Http2GrpcServer, port: int) -> None:
        self._server = server
        self.port = port

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)


# ---- grpc.aio -------------------------------------------------------------------------------


class _AioCall:
    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    async def write(self, message: Any) -> None:
        await self._context.write(message)

    def metadata(self) -> list[tuple[str, str]]:
        pairs = self._context.invocation_metadata() or ()
        return [(key, value) for key, value in pairs if isinstance(value, str)]

    def set_trailing_metadata(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._context.set_trailing_metadata(tuple(pairs))


def _aio_handler(method: RpcMethod) -> grpc.RpcMethodHandler:
    handler = method.handler
    required = method.required_header

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if required is not None and required not in (context.invocation_metadata() or ()):
            await context.abort(grpc.StatusCode.UNAVAILABLE, method.refusal)
        try:
            return await handler(request, _AioCall(context))
        except RpcError as error:
            await context.abort(error.code, error.details)

    factories: dict[MethodKind, Callable[..., grpc.RpcMethodHandler]] = {
        MethodKind.UNARY_UNARY: grpc.unary_unary_rpc_method_handler,
        MethodKind.UNARY_STREAM: grpc.unary_stream_rpc_method_handler,
        MethodKind.STREAM_STREAM: grpc.stream_stream_rpc_method_handler,
    }
    return factories[method.kind](run, method.parse, method.serialize)


class _AioStack:
    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self._server = server
        self.port = port

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)


async def _start_grpcio(
    methods: Mapping[str, RpcMethod],
    address: str,
    port: int,
    channel: GrpcChannel,
    tls: GrpcTls | None,
) -> GrpcStack:
    server = grpc.aio.server(options=channel.options())
    services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, method in methods.items():
        service, _, name = path[1:].rpartition("/")
        services.setdefault(service, {})[name] = _aio_handler(method)
    for service, handlers in services.items():
        # Registered methods are matched by path in gRPC core, without the generic lookup.
        server.add_registered_method_handlers(service, handlers)
    try:
        target = f"{address}:{port}"
        if tls is None:
            bound = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, tls.credentials())
    except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
        raise GrpcBindError(f"cannot bind gRPC to {address}:{port}: {exc}") from None
    await server.start()
    return _AioStack(server, bound)
