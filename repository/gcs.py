"""Google Cloud Storage model repositories, `gs://bucket/path` as Triton spells them (served
from a local copy: remote.py).

Credentials are tried in Triton's order: the service-account key file that Triton's credential
file (credential_file.py, its "gs" section) names for the repository, then
GOOGLE_APPLICATION_CREDENTIALS (a key file), then the attached service account (Google's
application default credentials), then anonymous access (a public bucket).
STORAGE_EMULATOR_HOST points the client at an emulator.
google-cloud-storage comes with inferd's `gcs` extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from inferd.repository.credential_file import CREDENTIAL_FILE_VARIABLE, credential_entry
from inferd.repository.remote import Listing, RemoteLocation
from inferd.server.errors import unavailable

SCHEME = "gs://"


def parse_gcs_url(url: str) -> RemoteLocation:
    """Raises ValueError with what is wrong."""
    if not url.startswith(SCHEME):
        raise ValueError(f"{url!r} is not a gs:// path")
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket: expected gs://bucket[/path]")
    return RemoteLocation(url, bucket, prefix.strip("/"), "TRITON_GCS_MOUNT_DIRECTORY", GcsStore)


class GcsStore:
    def __init__(self, location: RemoteLocation) -> None:
        try:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage
        except ImportError:
            raise unavailable(
                f"model repository {location} needs google-cloud-storage: install inferd's "
                "'gcs' extra (pip install 'inferd[gcs]')"
            ) from None
        self._location = location
        key_file = credential_entry("gs", location.url, os.environ)
        client: Any
        if key_file is not None:
            if not isinstance(key_file, str):
                raise ValueError(
                    f"{CREDENTIAL_FILE_VARIABLE}: an entry of section 'gs' must be the path of "
                    "a service-account key file"
                )
            client = storage.Client.from_service_account_json(key_file)
        else:
            try:
                client = storage.Client()
            except (DefaultCredentialsError, OSError):
                client = storage.Client.create_anonymous_client()  # a public bucket
        self._bucket: Any = client.bucket(location.bucket)
        self._client = client

    def list(self) -> Listing:
        location = self._location
        blobs = self._client.list_blobs(location.bucket, prefix=location.folder)
        return location.listing((b.name, b.size, b.etag or b.md5_hash) for b in blobs)

    def download(self, relative: str, target: Path) -> None:
        self._bucket.blob(self._location.key(relative)).download_to_filename(str(target))
