"""Where the peer servers and perf_analyzer live (built by ../shared/bench/peers/setup.sh)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_PEERS = "/tmp/peers"
SETUP_HINT = "run ../shared/bench/peers/setup.sh first (it builds the peers under $PEERS)"


class MissingTool(RuntimeError):
    """A peer server, its data or perf_analyzer is not where it should be."""


def peers_dir(explicit: str | None = None, *, required: bool = True) -> Path:
    """The peers directory: --peers, else $PEERS, else /tmp/peers."""
    path = Path(explicit or os.environ.get("PEERS") or DEFAULT_PEERS)
    if required and not path.is_dir():
        raise MissingTool(f"peers directory {path} does not exist: {SETUP_HINT}")
    return path


def require(path: Path) -> Path:
    """``path`` if it exists, else a MissingTool naming it."""
    if not path.exists():
        raise MissingTool(f"{path} is missing: {SETUP_HINT}")
    return path


def find_perf_analyzer(explicit: str | None = None, peers: Path | None = None) -> str | None:
    """perf_analyzer: the argument, $PERF_ANALYZER, PATH, then the peers' wrapper."""
    for candidate in (explicit, os.environ.get("PERF_ANALYZER"), shutil.which("perf_analyzer")):
        if candidate:
            return candidate
    if peers is not None and (peers / "pa-bin" / "perf_analyzer").exists():
        return str(peers / "pa-bin" / "perf_analyzer")
    return None


def input_data(peers: Path, model: str) -> Path | None:
    """The peers' N(0,1) input file for a model (perf_analyzer's random bytes can make inf/NaN)."""
    path = peers / "models" / f"input-{model}.json"
    return path if path.exists() else None
