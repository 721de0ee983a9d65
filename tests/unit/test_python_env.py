"""EXECUTION_ENV_PATH environments made here as conda-pack would pack them: unpacked once into
the cache, their site-packages importable after the server's (first in a stub), for the
server's Python only."""

from __future__ import annotations

import importlib
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.backends.python_env import activate
from inferd.server.errors import InferdError

VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"


def make_env(root: Path, package: str, version: str = VERSION) -> Path:
    """An environment folder holding `package` (VALUE = 42) and a .pth file adding `extra/`."""
    packages = root / "lib" / version / "site-packages"
    (packages / package).mkdir(parents=True)
    (packages / package / "__init__.py").write_text("VALUE = 42\n")
    (packages / "extra").mkdir()
    (packages / "extra" / f"{package}_extra.py").write_text("EXTRA = True\n")
    (packages / f"{package}.pth").write_text("extra\n")
    (root / "bin").mkdir()
    (root / "bin" / "python").symlink_to(VERSION)  # conda-pack keeps relative links
    return root


def pack(env: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as packed:
        for item in sorted(env.rglob("*")):
            packed.add(item, item.relative_to(env).as_posix(), recursive=False)
    return archive


@pytest.fixture(autouse=True)
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_packed_environment_is_unpacked_once_and_importable(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    pack(make_env(tmp_path / "env", "envpkg_a"), model_dir / "env.tar.gz")
    cache = tmp_path / "cache"
    packages = activate("$$TRITON_MODEL_DIRECTORY/env.tar.gz", model_dir, cache)
    assert packages.is_relative_to(cache) and sys.path.index(str(packages)) > 0
    assert importlib.import_module("envpkg_a").VALUE == 42
    assert importlib.import_module("envpkg_a_extra").EXTRA  # its .pth file was read
    again = activate("env.tar.gz", model_dir, cache)  # relative to the model folder
    assert again == packages and sys.path.count(str(packages)) == 1
    assert len(list((cache / "python-envs").iterdir())) == 1  # unpacked once


def test_an_unpacked_environment_is_used_in_place(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env", "envpkg_b")
    packages = activate(str(env), tmp_path, tmp_path / "cache")
    assert packages == env / "lib" / VERSION / "site-packages"
    assert importlib.import_module("envpkg_b").VALUE == 42
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("first", [False, True])
def test_the_environment_comes_after_the_servers_packages_or_first(
    tmp_path: Path, first: bool
) -> None:
    """After them in the server's process; first in a stub's, its .pth entries included."""
    server = tmp_path / "server"
    (server / "envpkg_d").mkdir(parents=True)
    (server / "envpkg_d" / "__init__.py").write_text("VALUE = 1\n")
    sys.path.insert(0, str(server))
    env = make_env(tmp_path / "env", "envpkg_d")
    packages = activate(str(env), tmp_path, tmp_path / "cache", first=first)
    added = [str(packages), str(packages / "extra")]
    assert (sys.path[:2] == added) is first
    value = importlib.import_module("envpkg_d").VALUE
    assert value == (42 if first else 1)
    assert importlib.import_module("envpkg_d_extra").EXTRA


def test_an_environment_for_another_python_is_refused(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env", "envpkg_c", version="python3.7")
    with pytest.raises(
        InferdError,
        match=rf"not an environment for the server's Python \({VERSION}\): it has python3.7",
    ):
        activate(str(env), tmp_path, tmp_path / "cache")


def test_a_broken_archive_says_why(tmp_path: Path) -> None:
    (tmp_path / "env.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(InferdError, match=r"unpacking .*env\.tar\.gz failed"):
        activate("env.tar.gz", tmp_path, tmp_path / "cache")
    assert list((tmp_path / "cache" / "python-envs").iterdir()) == []  # nothing half-made
