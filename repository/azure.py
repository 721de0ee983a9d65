"""Azure Storage model repositories, `as://account/container/path` as Triton spells them (served
from a local copy: remote.py).

Shared-key authentication as in Triton: AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY; without a
key the container is read anonymously (public access). AZURE_STORAGE_CONNECTION_STRING, the
Azure SDKs' usual variable, takes precedence: it names an emulator (Azurite) or another
endpoint. azure-storage-blob comes with inferd's `azure` extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
            key = os.environ.get("AZURE_STORAGE_KEY")
            account = location.url[len(SCHEME) :].split("/")[0]
            account = os.environ.get("AZURE_STORAGE_ACCOUNT") or account
            credential = {"account_name": account, "account_key": key} if key else None
            assert location.endpoint is not None  # parse_azure_url sets the account's URL
            service = BlobServiceClient(account_url=location.endpoint, credential=credential)
        self._container: Any = service.get_container_client(location.bucket)

    def list(self) -> Listing:
        blobs = self._container.list_blobs(name_starts_with=self._location.folder)
        return self._location.listing((b.name, b.size, b.etag) for b in blobs)

    def download(self, relative: str, target: Path) -> None:
        with target.open("wb") as file:
            self._container.download_blob(self._location.key(relative)).readinto(file)
