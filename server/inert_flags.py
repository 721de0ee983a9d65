"""tritonserver flags that have nothing to act on in inferd, accepted so that a Triton command
line starts unchanged (values are still checked, and what was given is logged at start-up).
Values inferd cannot honour (model namespacing) are usage errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inferd.server.flag_parser import FlagParser, parse_bool


def _pair(first: Callable[[str], Any], second: Callable[[str], Any], form: str) -> Any:
    def parse(text: str) -> tuple[Any, Any]:
        left, colon, right = text.partition(":")
        try:
            if colon:
                return first(left), second(right)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected {form}, got '{text}'")

    return parse


def _host_policy(text: str) -> str:
    name, comma, setting = text.partition(",")
    if not (name and comma and "=" in setting):
        raise argparse.ArgumentTypeError(f"expected <policy_name>,<setting>=<value>, got '{text}'")
    return text


def _compression(text: str) -> str:
    if text not in ("none", "low", "medium", "high"):
        raise argparse.ArgumentTypeError(f"expected none, low, medium or high, got '{text}'")
    return text


@dataclass(frozen=True, slots=True)
class InertFlag:
    flag: str
    why: str  # why there is nothing for it to do in inferd
    parse: Callable[[str], Any] = str
    multiple: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


_BACKENDS = "backends are Python packages found by entry point"
_MEMORY = "tensor memory is the frameworks' own (ONNX Runtime, TensorRT, CuPy)"
_THREADS = "front doors are asynchronous, on one event loop"

INERT_FLAGS: tuple[InertFlag, ...] = (
    InertFlag("--backend-directory", _BACKENDS),
    InertFlag("--repoagent-directory", "the checksum repository agent is built in"),
    InertFlag("--cache-directory", "the response cache is built in (--cache-config local)"),
    InertFlag("--cuda-memory-pool-byte-size", _MEMORY, _pair(int, int, "<gpu>:<bytes>"), True),
    InertFlag("--cuda-virtual-address-size", _MEMORY, _pair(int, int, "<gpu>:<bytes>"), True),
    InertFlag("--model-load-gpu-limit", _MEMORY, _pair(int, float, "<device_id>:<fraction>"), True),
    InertFlag("--min-supported-compute-capability", "every GPU CUDA can use is used", float),
    InertFlag("--buffer-manager-thread-count", _MEMORY, int),
    InertFlag("--host-policy", "no NUMA or CPU-core pinning", _host_policy, True),
    InertFlag("--enable-peer-access", "no copies between GPUs", parse_bool),
    InertFlag("--http-thread-count", _THREADS, int),
    InertFlag("--grpc-infer-allocation-pool-size", _THREADS, int),
    InertFlag(
        "--grpc-infer-response-compression-level", "responses are sent uncompressed", _compression
    ),
    InertFlag("--sagemaker-thread-count", _THREADS, int),
    InertFlag("--vertex-ai-thread-count", _THREADS, int),
)


def add_inert_flags(p: FlagParser) -> None:
    group = p.group(
        "accepted for tritonserver compatibility",
        "These flags have nothing to act on in inferd: their values are checked, then "
        "ignored (the start-up log names those given).",
    )
    for inert in INERT_FLAGS:
        group.add(inert.flag, type=inert.parse, multiple=inert.multiple, help=inert.why)


def inert_flags_given(args: argparse.Namespace) -> list[str]:
    """The inert flags given, as `--flag (why)`."""
    return [
        f"{inert.flag} ({inert.why})"
        for inert in INERT_FLAGS
        if getattr(args, inert.dest) is not None
    ]
