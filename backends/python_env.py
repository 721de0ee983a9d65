"""Triton's `EXECUTION_ENV_PATH` for python models: a packed conda environment (conda-pack's
`.tar.gz`) or an unpacked one, whose packages the model imports.

Triton runs the model in a stub process on that environment's Python. inferd adds the
environment's `site-packages` to the import path instead (`.pth` files included). In the
server's process it comes after the server's own packages: a model finds there what the server
lacks (a library, another framework), while what the server has (numpy) stays the server's. In
a stub process (python_process.py) it comes first, as in Triton, for every module the stub has
not imported yet (all but numpy, protobuf and the few the stub itself runs on). As for
Triton's stub, the environment must be for the server's Python version. An archive is unpacked
once, into the cache folder, keyed by its path, size and mtime.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import site
import sys
import tarfile
import tempfile
from pathlib import Path

from inferd.server.errors import invalid

log = logging.getLogger(__name__)

EXECUTION_ENV_PATH = "EXECUTION_ENV_PATH"
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"  # Triton's placeholder for the model's folder
_ARCHIVES = (".tar.gz", ".tgz")


def activate(
    value: str,
    model_dir: Path,
    cache_dir: Path,
    first: bool = False,
    label: str = EXECUTION_ENV_PATH,
) -> Path:
    """Make the environment's packages importable; its site-packages folder. Blocking (it may
    unpack the archive). Raises InferdError saying what is wrong with the environment (named
    as `label`, the setting that gave it). `first` (in a stub process, which serves this
    model alone): its packages come before the server's, as in Triton, for every module not
    imported yet."""
    path = Path(value.replace(MODEL_DIRECTORY, str(model_dir)))
    if not path.is_absolute():
        path = model_dir / path
    if path.is_dir():
        root = path
    elif path.is_file() and path.name.endswith(_ARCHIVES):
        root = _unpacked(path, cache_dir / "python-envs", label)
    else:
        raise invalid(
            f"{label} '{path}' is neither an environment folder nor a conda-pack archive (.tar.gz)"
        )
    packages = site_packages(root, label)
    if str(packages) not in sys.path:
        before = list(sys.path)
        site.addsitedir(str(packages))  # appended: the server's own packages come first
        if first:
            sys.path[:] = [entry for entry in sys.path if entry not in before] + before
        log.info("python models may import the packages of %s", path)
    return packages


def site_packages(root: Path, label: str = EXECUTION_ENV_PATH) -> Path:
    """The environment's site-packages for the running Python's version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    packages = root / "lib" / version / "site-packages"
    if packages.is_dir():
        return packages
    others = sorted(p.parent.name for p in root.glob("lib/python3*/site-packages"))
    found = f"it has {', '.join(others)}" if others else "it has no lib/python3.*/site-packages"
    raise invalid(
        f"{label} '{root}' is not an environment for the server's Python "
        f"({version}): {found}. Pack the environment with {version}."
    )


def _unpacked(archive: Path, into: Path, label: str) -> Path:
    stat = archive.stat()
    key = f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    target = into / hashlib.sha256(key.encode()).hexdigest()[:16]
    if target.is_dir():
        return target
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=into))
    try:
        with tarfile.open(archive) as packed:
            packed.extractall(staging, filter="data")  # nothing outside, no devices
        try:
            staging.rename(target)  # whole or not at all: instances may race to unpack
        except OSError:
            if not target.is_dir():
                raise
    except (OSError, tarfile.TarError) as exc:
        raise invalid(f"{label}: unpacking {archive} failed: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("unpacked the python environment %s into %s", archive, target)
    return target
