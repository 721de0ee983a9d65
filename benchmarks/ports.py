"""Free TCP ports on 127.0.0.1 for servers that a benchmark or a test starts as a process.

Such a server binds its ports a second or so after they were picked. Ports are therefore
picked below the kernel's ephemeral range: the local ports of outgoing connections (another
test's clients, running meanwhile) come from that range, and one could take a port picked there
before the server binds it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOCALHOST = "127.0.0.1"
_LOWEST = 10_000  # above the well-known and common service ports


def free_port() -> int:
    return free_port_block(1)


def free_port_block(count: int = 3, attempts: int = 200) -> int:
    """A base port such that base .. base+count-1 are all free on 127.0.0.1."""
    top = _ephemeral_start() - count
    picks = random.Random()
    for _ in range(attempts):
        base = picks.randrange(_LOWEST, max(_LOWEST + 1, top))
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free ports below the ephemeral range")


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((LOCALHOST, port))
        except OSError:
            return False
    return True
