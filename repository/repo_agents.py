"""Triton's repository agents (`model_repository_agents` in a model's config), run before the
model loads. inferd has the one Triton ships, `checksum`: each parameter
`<algorithm>:<path in the model folder>` names a file and its expected digest (MD5, hex, as
Triton's agent writes it); a mismatch fails the load. An agent inferd does not have fails the
load too, rather than loading a model whose checks were skipped."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

from inferd.server.errors import invalid, unsupported

AGENTS = ("checksum",)


def run_agents(config: Any, model_dir: Path) -> None:
    """Blocking (it reads the files): run it on a loader thread. Raises InferdError."""
    for agent in config.model_repository_agents.agents:
        if agent.name != "checksum":
            raise unsupported(
                f"repository agent '{agent.name}' is not available (inferd has: "
                f"{', '.join(AGENTS)})"
            )
        for key, expected in agent.parameters.items():
            try:
                _check(model_dir, key, expected)
            except OSError as exc:  # Triton's words
                raise invalid(
                    f"repository agent 'checksum': failed to open text file for read "
                    f"{key.partition(':')[2]}: {exc.strerror}"
                ) from None


def _check(model_dir: Path, key: str, expected: str) -> None:
    algorithm, colon, relative = key.partition(":")
    if not colon:
        raise invalid(f"repository agent 'checksum': failed to parse key: {key}")
    if algorithm.lower() != "md5":
        raise unsupported(
            f"repository agent 'checksum': Unsupported checksum algorithm: {algorithm}"
        )
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts:
        raise invalid(
            f"repository agent 'checksum': file '{relative}' must be inside the model folder"
        )
    with open(model_dir / relative, "rb") as file:
        digest = hashlib.file_digest(file, "md5").hexdigest()
    if digest != expected:  # Triton's words
        raise invalid(
            f"repository agent 'checksum': Mismatched MD5 hash for file {relative}, "
            f"expect: {expected}, got: {digest}"
        )
