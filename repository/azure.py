"""Azure Storage model repositories, `as://account/container/path` as Triton spells them (served
from a local copy: remote.py).

Shared-key authentication as in Triton: the account_str and account_key of Triton's credential
file (credential_file.py, its "as" section), else AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY;
without a key the container is read anonymously (public access).
AZURE_STORAGE_CONNECTION_STRING, the Azure SDKs' usual variable, takes precedence: it names an
emulator (Azurite) or another endpoint. azure-storage-blob comes with inferd's `azure` extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferd.repository.credential_file import credential_entry, entry_fields
from inferd.repository.remote import Listing, RemoteLocation
from inferd.server.errors import unavailable

SCHEME = "as://"


def parse_azure_url(url: str) -> RemoteLocation:
    """Raises ValueError with what is wrong."""
    if not url.startswith(SCHEME):
        raise ValueError(f"{url!r} is not an as:// path")
    account, _, rest = url[len(SCHEME) :].partition("/")
    container, _, prefix = rest.partition("/")
    if not account or not container:
        raise ValueError(
            f"{url!r} names no account or container: expected as://account/container[/path]"
        )
    endpoint = f"https://{account}.blob.core.windows.net"
    return RemoteLocation(
        url, container, prefix.strip("/"), "TRITON_AZURE_MOUNT_DIRECTORY", AzureStore, endpoint
    )


class AzureStore:
    def __init__(self, location: RemoteLocation) -> None:
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            raise unavailable(
                f"model repository {location} needs azure-storage-blob: install inferd's "
                "'azure' extra (pip install 'inferd[azure]')"
            ) from None
        self._location = location
        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection:
            service: Any = BlobServiceClient.from_connection_string(connection)
        else:
            assert location.endpoint is not None  # parse_azure_url sets the account's URL
            service = BlobServiceClient(
                account_url=location.endpoint, credential=_shared_key(location, os.environ)
            )
        self._container: Any = service.get_container_client(location.bucket)

    def list(self) -> Listing:
        blobs = self._container.list_blobs(name_starts_with=self._location.folder)
        return self._location.listing((b.name, b.size, b.etag) for b in blobs)

    def download(self, relative: str, target: Path) -> None:
        with target.open("wb") as file:
            self._container.download_blob(self._location.key(relative)).readinto(file)


def _shared_key(location: RemoteLocation, environ: Mapping[str, str]) -> dict[str, str] | None:
    """The account name and key, or None (anonymous access)."""
    account = location.url[len(SCHEME) :].split("/")[0]
    entry = credential_entry("as", location.url, environ)
    if entry is not None:
        given = entry_fields(entry, "as", ("account_str", "account_key"))
        account, key = given.get("account_str", account), given.get("account_key")
    else:
        account = environ.get("AZURE_STORAGE_ACCOUNT") or account
        key = environ.get("AZURE_STORAGE_KEY")
    return {"account_name": account, "account_key": key} if key else None
