"""S3 model repositories, in Triton's spellings (served from a local copy: remote.py).

- `s3://bucket/path`: Amazon S3, region and credentials from boto3's usual chain (the AWS_*
  environment variables first, then `aws configure`'s files, then an instance or pod role),
  as Triton reads them.
- `s3://host:port/bucket/path`: another S3 endpoint (MinIO, R2, ...) over HTTP;
  `s3://https://host:port/bucket/path` over HTTPS.

Credentials may also come from Triton's credential file (credential_file.py, its "s3"
section): the entry's key_id, secret_key, session_token, region and profile, where set, are
used instead of the usual chain. boto3 comes with inferd's `s3` extra.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferd.repository.credential_file import credential_entry, entry_fields
from inferd.repository.remote import Listing, RemoteLocation
from inferd.server.errors import unavailable

SCHEME = "s3://"
# host:port of an endpoint other than Amazon's, as Triton recognises one in the path.
_ENDPOINT = re.compile(r"^(?P<scheme>https?://)?(?P<host>[^/:]+:\d+)/(?P<rest>.*)$")


def parse_s3_url(url: str) -> RemoteLocation:
    """Raises ValueError with what is wrong."""
    if not url.startswith(SCHEME):
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
    return RemoteLocation(
        url, bucket, prefix.strip("/"), "TRITON_AWS_MOUNT_DIRECTORY", S3Store, endpoint
    )


class S3Store:
    def __init__(self, location: RemoteLocation) -> None:
        try:
            import boto3
        except ImportError:
            raise unavailable(
                f"model repository {location} needs boto3: install inferd's 's3' extra "
                "(pip install 'inferd[s3]')"
            ) from None
        self._location = location
        session = boto3.Session(**_credentials(location.url, os.environ))
        self._client: Any = session.client("s3", endpoint_url=location.endpoint)

    def list(self) -> Listing:
        location = self._location
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=location.folder
        )
        return location.listing(
            (item["Key"], item["Size"], item.get("ETag"))
            for page in pages
            for item in page.get("Contents", ())
        )

    def download(self, relative: str, target: Path) -> None:
        location = self._location
        self._client.download_file(location.bucket, location.key(relative), str(target))


# Triton's credential file keys, as boto3.Session names them.
_SESSION_KEYS = {
    "key_id": "aws_access_key_id",
    "secret_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "region": "region_name",
    "profile": "profile_name",
}


def _credentials(url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """boto3.Session arguments from Triton's credential file for `url`; {} without an entry
    (the usual chain then applies)."""
    entry = credential_entry("s3", url, environ)
    if entry is None:
        return {}
    given = entry_fields(entry, "s3", tuple(_SESSION_KEYS))
    return {_SESSION_KEYS[key]: value for key, value in given.items()}
