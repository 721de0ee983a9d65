"""`--rate-limit` and `--rate-limit-resource`: Triton's flags for its rate limiter
(batching/rate_limiter.py), parsed strictly. Errors are ValueErrors in Triton's words where it
has them, which the CLI reports as usage errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from inferd.batching.rate_limiter import ExplicitResource

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")
EVERY_DEVICE = -1  # Triton's device value for "the same count on every device"


class RateLimitMode(StrEnum):
    OFF = "off"  # instances run as soon as they are free; rate_limiter configs are ignored
    EXECUTION_COUNT = "execution_count"


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    mode: RateLimitMode = RateLimitMode.OFF
    resources: tuple[ExplicitResource, ...] = ()  # explicit counts; () = the configs' maxima

    @property
    def enabled(self) -> bool:
        return self.mode is RateLimitMode.EXECUTION_COUNT


def parse_rate_limit(mode: str, resources: Sequence[str]) -> RateLimitSettings:
    """The flags' values; the mode is case-insensitive, resource names are not (as Triton)."""
    try:
        parsed_mode = RateLimitMode(mode.strip().lower())
    except ValueError:
        raise ValueError(
            f"invalid argument for --rate-limit: '{mode}' (expected off or execution_count)"
        ) from None
    return RateLimitSettings(parsed_mode, tuple(parse_resource(item) for item in resources))


def parse_resource(item: str) -> ExplicitResource:
    """`<resource_name>:<count>[:<device>]`."""
    parts = item.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(
            "--rate-limit-resource option format is '<resource_name>:<count>:<device>' or "
            f"'<resource_name>:<count>'. Got {item}"
        )
    name = parts[0]
    if not name:
        raise ValueError(f"--rate-limit-resource={item}: the resource name is empty")
    count = _int32(item, parts[1])
    if count < 0:
        raise ValueError(f"--rate-limit-resource={item}: the count must be >= 0")
    device = _int32(item, parts[2]) if len(parts) == 3 else EVERY_DEVICE
    if device < EVERY_DEVICE:
        raise ValueError(
            f"--rate-limit-resource={item}: the device must be a device id >= 0 "
            f"(or {EVERY_DEVICE}: every device)"
        )
    return ExplicitResource(name, count, None if device == EVERY_DEVICE else device)


def _int32(item: str, text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"--rate-limit-resource={item}: Invalid option value. Got {text}")
    value = int(text)
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(
            f"--rate-limit-resource={item}: Provided option value is out of bound. Got {text}"
        )
    return value
