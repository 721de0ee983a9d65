"""The flags of the hosted platforms' front doors (SageMaker, Vertex AI), spelt as Triton's,
with the defaults their environments give; and Triton's check that no two front doors share
a port."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from inferd.server.flag_parser import FlagParser, parse_bool
from inferd.server.sagemaker import SageMakerSettings, sagemaker_settings
from inferd.server.settings import Settings
from inferd.server.vertex_ai import VertexAiSettings, vertex_settings


def in_vertex_ai(environ: Mapping[str, str]) -> bool:
    """Vertex AI runs the container with AIP_MODE=PREDICTION: its front door is then on, and
    the HTTP and gRPC ports off, unless flags say otherwise (as in Triton)."""
    return environ.get("AIP_MODE") == "PREDICTION"


def _port_range(text: str) -> tuple[int, int]:
    low, dash, high = text.partition("-")
    if not (dash and low.isdigit() and high.isdigit()):
        raise argparse.ArgumentTypeError(f"expected <integer>-<integer>, got '{text}'")
    return int(low), int(high)


def add_hosted_flags(p: FlagParser) -> None:
    group = p.group(
        "hosted platforms",
        "Amazon SageMaker's and Google Vertex AI's routes, each on a port of its own, as "
        "Triton serves them (both bind --http-address).",
    )
    group.add(
        "--allow-sagemaker",
        type=parse_bool,
        default=False,
        help="serve SageMaker's /ping, /invocations and multi-model /models routes",
    )
    group.add("--sagemaker-port", type=int, default=8080, help="the SageMaker port")
    group.add(
        "--sagemaker-safe-port-range",
        type=_port_range,
        help="LOW-HIGH: the ports the other front doors must use when SageMaker is on",
    )
    group.add(
        "--allow-vertex-ai",
        type=parse_bool,
        default=in_vertex_ai(p.environ),
        help="serve Vertex AI's AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE (on when "
        "AIP_MODE=PREDICTION)",
    )
    group.add(
        "--vertex-ai-port",
        type=int,
        help="the Vertex AI port (default: AIP_HTTP_PORT, else 8080)",
    )
    group.add(
        "--vertex-ai-default-model",
        default="",
        help="the model the predict route runs (default: the repository's only model)",
    )


def sagemaker_from_args(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> SageMakerSettings | None:
    if not args.allow_sagemaker:
        return None
    return sagemaker_settings(environ, args.sagemaker_port, args.sagemaker_safe_port_range)


def vertex_ai_from_args(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> VertexAiSettings | None:
    if not args.allow_vertex_ai:
        return None
    settings = vertex_settings(environ, args.vertex_ai_port, args.vertex_ai_default_model)
    settings.check()
    return settings


def check_ports(settings: Settings) -> None:
    """Triton's start-up check: no two front doors on one address and port, and with a
    SageMaker safe port range, every other front door inside it. Port 0 (any free port)
    never collides."""
    ports: list[tuple[str, str, int]] = []
    if settings.allow_http:
        ports.append(("HTTP", settings.http_address, settings.http_port))
    if settings.allow_grpc:
        ports.append(("GRPC", settings.grpc_address, settings.grpc_port))
    if settings.allow_metrics:
        ports.append(
            ("metrics", settings.metrics_address or settings.http_address, settings.metrics_port)
        )
    if settings.sagemaker is not None:
        ports.append(("SageMaker", settings.http_address, settings.sagemaker.port))
    if settings.vertex_ai is not None:
        ports.append(("Vertex AI", settings.http_address, settings.vertex_ai.port))
    safe = settings.sagemaker.safe_port_range if settings.sagemaker is not None else None
    low, high = safe or (0, 65535)
    for index, (name, address, port) in enumerate(ports):
        if name != "SageMaker" and address == settings.http_address and not low <= port <= high:
            raise ValueError(
                f"The server cannot listen to {name} requests at port {port}, allowed port "
                f"range is [{low}, {high}]"
            )
        for other, other_address, other_port in ports[index + 1 :]:
            if port and address == other_address and port == other_port:
                raise ValueError(
                    f"The server cannot listen to {name} requests and {other} requests at the "
                    f"same address and port {address}:{port}"
                )
