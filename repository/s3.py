"""Model repositories in S3 (`--model-repository=s3://...`, Triton's spellings), served from a
local copy.

- `s3://bucket/path`: Amazon S3, region and credentials from boto3's usual chain (the AWS_*
  environment variables first, then `aws configure`'s files), as Triton reads them.
- `s3://host:port/bucket/path`: another S3 endpoint (MinIO, R2, ...) over HTTP;
  `s3://https://host:port/bucket/path` over HTTPS.

The repository is copied into a local folder (under TRITON_AWS_MOUNT_DIRECTORY when set, as in
Triton, else a temporary folder removed at shutdown), and the rest of the server reads that copy.
It is brought up to date before every scan of the repositories (start-up, the repository index,
explicit loads, each poll), downloading only objects whose size or ETag changed and removing
files whose objects are gone. Files are written beside their place and renamed into it, so a
model being loaded never reads half a file. boto3 is imported only when an S3 repository is used
(the `s3` extra installs it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from inferd.server.errors import InferdError, unavailable

log = logging.getLogger(__name__)

SCHEME = "s3://"
MOUNT_VARIABLE = "TRITON_AWS_MOUNT_DIRECTORY"
# host:port of an endpoint other than Amazon's, as Triton recognises one in the path.
_ENDPOINT = re.compile(r"^(?P<scheme>https?://)?(?P<host>[^/:]+:\d+)/(?P<rest>.*)$")


@dataclass(frozen=True, slots=True)
class S3Location:
    url: str  # as given, for messages and the repository's metadata
    bucket: str
    prefix: str  # "" or "a/b" (no slashes at either end)
    endpoint: str | None = None  # "http://host:port"; None = Amazon S3

    def __str__(self) -> str:
        return self.url


def is_s3(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_s3_url(url: str) -> S3Location:
    """Raises ValueError with what is wrong."""
    if not is_s3(url):
        raise ValueError(f"{url!r} is not an s3:// path")
    rest = url[len(SCHEME) :]
    endpoint = None
    match = _ENDPOINT.match(rest)
    if match is not None:
        endpoint = (match["scheme"] or "http://") + match["host"]
        rest = match["rest"]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket: expected s3://[host:port/]bucket[/path]")
    return S3Location(url, bucket, prefix.strip("/"), endpoint)


class S3Mirror:
    """A local copy of one S3 repository. `sync()` blocks: call it off the event loop."""

    def __init__(self, location: S3Location, root: Path, client: Any = None) -> None:
        self.location = location
        self.root = root
        self._client = client
        self._copied: dict[str, tuple[int, str]] = {}  # relative path: (size, ETag)

    def sync(self) -> None:
        """Make the copy match the bucket. Raises InferdError (UNAVAILABLE) when S3 cannot be
        read; the copy then stays as it was."""
        objects = self._list()
        for relative, (size, etag) in objects.items():
            if self._copied.get(relative) != (size, etag) or not (self.root / relative).exists():
                self._download(relative)
                self._copied[relative] = (size, etag)
        for relative in sorted(set(self._copied) - set(objects)):
            (self.root / relative).unlink(missing_ok=True)
            del self._copied[relative]
            _remove_empty_parents(self.root / relative, self.root)

    def _list(self) -> dict[str, tuple[int, str]]:
        location = self.location
        prefix = location.prefix + "/" if location.prefix else ""
        found: dict[str, tuple[int, str]] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    relative = item["Key"][len(prefix) :]
                    if relative and not relative.endswith("/") and _safe(relative):
                        found[relative] = (item["Size"], item.get("ETag", ""))
        except Exception as exc:  # botocore's errors: credentials, endpoint, missing bucket
            raise self._failure(exc) from None
        return found

    def _download(self, relative: str) -> None:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        key = f"{self.location.prefix}/{relative}" if self.location.prefix else relative
        try:
            self.client.download_file(self.location.bucket, key, str(partial))
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise self._failure(exc) from None
        os.replace(partial, target)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _new_client(self.location)
        return self._client

    def _failure(self, exc: Exception) -> InferdError:
        return unavailable(f"failed to read model repository {self.location}: {exc}")


def mount_root(location: S3Location, environ: dict[str, str]) -> Path | None:
    """Where TRITON_AWS_MOUNT_DIRECTORY puts this repository's copy (None: not set)."""
    mount = environ.get(MOUNT_VARIABLE)
    if not mount:
        return None
    base = Path(mount)
    if not base.is_dir():
        raise ValueError(f"{MOUNT_VARIABLE}={mount} is not an existing folder")
    return base / location.bucket / location.prefix


def _new_client(location: S3Location) -> Any:
    try:
        import boto3
    except ImportError:
        raise unavailable(
            f"model repository {location} needs boto3: install inferd's 's3' extra "
            "(pip install 'inferd[s3]')"
        ) from None
    return boto3.client("s3", endpoint_url=location.endpoint)


def _safe(relative: str) -> bool:
    """Keys that would land outside the copy ('..', absolute) are skipped."""
    path = PurePosixPath(relative)
    return not path.is_absolute() and ".." not in path.parts


def _remove_empty_parents(path: Path, root: Path) -> None:
    parent = path.parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


class S3Repositories:
    """The S3 repositories among the server's, each with its local copy; `sync()` brings them
    all up to date (blocking), `close()` removes the temporary copies."""

    def __init__(self, environ: dict[str, str]) -> None:
        self._environ = environ
        self._mirrors: list[S3Mirror] = []
        self._temporary: list[Path] = []

    def add(self, location: S3Location) -> Path:
        """Where `location`'s copy lives (empty until the first sync)."""
        root = mount_root(location, self._environ)
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="inferd-s3-"))
            self._temporary.append(root)
        root.mkdir(parents=True, exist_ok=True)
        self._mirrors.append(S3Mirror(location, root))
        return root

    def sync(self) -> None:
        for mirror in self._mirrors:
            mirror.sync()

    def close(self) -> None:
        for root in self._temporary:
            shutil.rmtree(root, ignore_errors=True)
        self._temporary.clear()
