"""Model repositories in object stores (`--model-repository=s3://...` or `gs://...`, Triton's
spellings: s3.py, gcs.py), served from a local copy.

The repository is copied into a local folder: under the store's mount variable when it is set
(TRITON_AWS_MOUNT_DIRECTORY, TRITON_GCS_MOUNT_DIRECTORY, as in Triton), at
`<mount>/<bucket>/<path>`, else into a temporary folder removed at shutdown. The rest of the
server reads that copy. It is brought up to date before every scan of the repositories
(start-up, the repository index, explicit loads, each poll): only objects whose size or ETag
changed are downloaded, and files whose objects are gone are removed. Each file is written
beside its place and renamed into it, so a model being loaded never reads half a file. A
store's client library is imported only when a repository of that store is used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from inferd.server.errors import InferdError, unavailable

Listing = dict[str, tuple[int, str]]  # relative path: (size, ETag or hash)


class ObjectStore(Protocol):
    """One repository's objects, by path relative to the repository (blocking calls)."""

    def list(self) -> Listing: ...

    def download(self, relative: str, target: Path) -> None: ...


@dataclass(frozen=True, slots=True)
class RemoteLocation:
    url: str  # as given, for messages
    bucket: str
    prefix: str  # "" or "a/b" (no slashes at either end)
    mount_variable: str  # where the user may put the copy
    store: Callable[[RemoteLocation], ObjectStore]  # makes the store (imports its library)
    endpoint: str | None = None  # S3 only: "http(s)://host:port"; None = the provider's own

    def __str__(self) -> str:
        return self.url

    @property
    def folder(self) -> str:
        """The key prefix of the repository's objects: "a/b/", or "" for a whole bucket."""
        return self.prefix + "/" if self.prefix else ""

    def listing(self, objects: Iterable[tuple[str, int | None, str | None]]) -> Listing:
        """A store's (key, size, ETag) triples as the mirror compares them, by path below the
        repository; keys that are no file of it are left out."""
        found: Listing = {}
        for key, size, version in objects:
            relative = self.relative(key)
            if relative is not None:
                found[relative] = (int(size or 0), str(version or ""))
        return found

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def relative(self, key: str) -> str | None:
        """The path below the repository of an object key; None for keys that are no file of
        it (folder markers, keys that would land outside the copy)."""
        relative = key[len(self.folder) :]
        path = PurePosixPath(relative)
        if not relative or relative.endswith("/") or path.is_absolute() or ".." in path.parts:
            return None
        return relative


class RemoteMirror:
    """A local copy of one remote repository. `sync()` blocks: call it off the event loop."""

    def __init__(self, location: RemoteLocation, root: Path) -> None:
        self.location = location
        self.root = root
        self._store: ObjectStore | None = None
        # What the copy holds. Files already there (a mount folder kept from an earlier run)
        # count as of unknown version: downloaded again if the store has them, else removed.
        self._copied: Listing = {
            str(path.relative_to(root)): (-1, "") for path in root.rglob("*") if path.is_file()
        }
        # Scans run on loader threads, several at once (an index call beside a load): one
        # sync at a time, so that two never write the same file.
        self._lock = threading.Lock()

    def sync(self) -> None:
        """Make the copy match the store. Raises InferdError (UNAVAILABLE) when the store
        cannot be read; what was copied before stays."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        try:
            if self._store is None:
                self._store = self.location.store(self.location)
            objects = self._store.list()
            for relative, version in objects.items():
                target = self.root / relative
                if self._copied.get(relative) != version or not target.exists():
                    self._download(self._store, relative, target)
                    self._copied[relative] = version
        except InferdError:
            raise
        except Exception as exc:  # the client library's errors: credentials, endpoint, bucket
            # The first line only: some libraries append whole XML documents.
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            message = f"failed to read model repository {self.location}: {reason}"
            raise unavailable(message) from None
        for relative in sorted(set(self._copied) - set(objects)):
            (self.root / relative).unlink(missing_ok=True)
            del self._copied[relative]
            _remove_empty_parents(self.root / relative, self.root)

    @staticmethod
    def _download(store: ObjectStore, relative: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        try:
            store.download(relative, partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)


class RemoteRepositories:
    """The remote repositories among the server's, each with its local copy; `sync()` brings
    them all up to date (blocking), `close()` removes the temporary copies."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._mirrors: list[RemoteMirror] = []
        self._temporary: list[Path] = []

    def add(self, location: RemoteLocation) -> Path:
        """Where `location`'s copy lives (empty until the first sync). Raises ValueError when
        the mount variable names no folder."""
        mount = self._environ.get(location.mount_variable)
        if mount:
            if not Path(mount).is_dir():
                raise ValueError(f"{location.mount_variable}={mount} is not an existing folder")
            root = Path(mount) / location.bucket / location.prefix
        else:
            root = Path(tempfile.mkdtemp(prefix="inferd-models-"))
            self._temporary.append(root)
        root.mkdir(parents=True, exist_ok=True)
        self._mirrors.append(RemoteMirror(location, root))
        return root

    def sync(self) -> None:
        for mirror in self._mirrors:
            mirror.sync()

    def close(self) -> None:
        for root in self._temporary:
            shutil.rmtree(root, ignore_errors=True)
        self._temporary.clear()


def _remove_empty_parents(path: Path, root: Path) -> None:
    parent = path.parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
