"""PLACEHOLDER: the gRPC front door (being written; see issue 4)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2_grpc

from inferd.server.core import InferenceCore
from inferd.server.settings import Settings


@dataclass(frozen=True, slots=True)
class GrpcSettings:
    address: str = "0.0.0.0"
    port: int = 8001


def grpc_settings(settings: Settings) -> GrpcSettings:
    return GrpcSettings(address=settings.grpc_address, port=settings.grpc_port)


class GrpcServer:
    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self.server = server
        self.port = port

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)


async def start_grpc_server(core: InferenceCore, settings: GrpcSettings) -> GrpcServer:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        service_pb2_grpc.GRPCInferenceServiceServicer(), server
    )
    port = server.add_insecure_port(f"{settings.address}:{settings.port}")
    await server.start()
    return GrpcServer(server, port)
