"""Model files sent with a load request (`file:<version>/<name>` parameters): each load gets a
private folder of its own under the server's temporary root, never a folder of the user's
repository, so that a failed or replaced load can simply be deleted."""

from __future__ import annotations

import errno
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from inferd.server.errors import invalid


def check_model_name(name: str) -> None:
    """The name becomes a folder name: it must be exactly one path component."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise invalid(f"invalid model name '{name}' for a load with model files")


def check_file_paths(files: Mapping[str, object]) -> None:
    """Every path must stay inside the model folder (relative, no `..`, no absolute path)."""
    for path in files:
        parts = PurePosixPath(path).parts
        if (
            not parts
            or path.startswith("/")
            or "\\" in path
            or "\0" in path
            or any(part == ".." for part in parts)
        ):
            raise invalid(
                f"invalid load parameter 'file:{path}': the path must be relative to the model "
                "folder and stay inside it (e.g. 'file:1/model.onnx')"
            )


def write_override(root: Path, name: str, files: Mapping[str, bytes]) -> Path:
    """Write the files into a fresh folder under `root`; return the model folder. Blocking."""
    check_model_name(name)
    check_file_paths(files)
    folder = Path(tempfile.mkdtemp(prefix=f"{name[:32]}-", dir=root))  # a name may be long
    model_dir = folder / name
    try:
        for relative, content in files.items():
            target = model_dir / PurePosixPath(relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise invalid(
            f"cannot write the model files of '{name}': a file name or the model name is too "
            "long for a folder"
        ) from None
    return model_dir


def remove_override(model_dir: Path) -> None:
    """Delete a folder made by `write_override` (its private parent included). Blocking."""
    shutil.rmtree(model_dir.parent, ignore_errors=True)
