"""A model version's instances, as the rate limiter sees them: each instance's device and the
`rate_limiter` of the group it belongs to."""

from __future__ import annotations

from collections.abc import Sequence

from inferd.backends.base import Device
from inferd.batching.rate_limiter import InstanceNeeds, RateLimiter, Ticket
from inferd.repository.config import DeviceKind, InstanceGroup, ModelConfig
from inferd.server.errors import internal


def register_instances(
    limiter: RateLimiter, config: ModelConfig, devices: Sequence[Device]
) -> list[Ticket]:
    """One ticket per instance, in the order of `devices`; raises the load error when the
    instances need more than is available."""
    return limiter.register(instance_needs(config, devices))


def instance_needs(config: ModelConfig, devices: Sequence[Device]) -> list[InstanceNeeds]:
    """What each instance needs. `devices` are the loader's, group after group: `count` per
    group on the CPU (also a KIND_GPU group fallen back to it), `count` per listed GPU else."""
    needs: list[InstanceNeeds] = []
    at = 0
    for group in config.instance_groups:
        on_gpu = group.kind is DeviceKind.GPU and at < len(devices) and devices[at].kind == "gpu"
        size = group.count * (len(group.gpus) if on_gpu else 1)
        needs += [_needs(config.name, group, device) for device in devices[at : at + size]]
        at += size
    if at != len(devices):
        raise internal(
            f"model '{config.name}': {len(devices)} instances do not match its instance groups"
        )
    return needs


def _needs(model: str, group: InstanceGroup, device: Device) -> InstanceNeeds:
    limiter = group.rate_limiter
    return InstanceNeeds(
        name=f"{model}/{device.name or group.name}",
        device=device.index if device.kind == "gpu" else 0,  # Triton counts CPU as device 0
        resources={r.name: (r.count, r.is_global) for r in limiter.resources},
        priority=limiter.priority,
    )
