"""Triton's cloud credential file (TRITON_CLOUD_CREDENTIAL_PATH): which entry serves which
repository, and what each object store makes of it (checked on the clients they build; no
network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inferd.repository.azure import AzureStore, parse_azure_url
from inferd.repository.credential_file import CREDENTIAL_FILE_VARIABLE, credential_entry
from inferd.repository.gcs import GcsStore, parse_gcs_url
from inferd.repository.s3 import _credentials


def credential_file(tmp_path: Path, content: Any) -> dict[str, str]:
    path = tmp_path / "credentials.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return {CREDENTIAL_FILE_VARIABLE: str(path)}


def test_the_longest_matching_entry_serves_a_repository(tmp_path: Path) -> None:
    environ = credential_file(
        tmp_path, {"gs": {"": "any", "gs://models": "models", "gs://models/big": "big"}}
    )
    assert credential_entry("gs", "gs://models/big/v2", environ) == "big"
    assert credential_entry("gs", "gs://models/small", environ) == "models"
    assert credential_entry("gs", "gs://other", environ) == "any"
    assert credential_entry("as", "as://account/container", environ) is None
    assert credential_entry("gs", "gs://models", {}) is None  # no file: the usual chain


@pytest.mark.parametrize("content", ["not json", '["a list"]', '{"gs": ["a list"]}'])
def test_a_file_that_cannot_be_used_says_so(tmp_path: Path, content: str) -> None:
    with pytest.raises(ValueError, match=f"{CREDENTIAL_FILE_VARIABLE}=.* cannot be read"):
        credential_entry("gs", "gs://models", credential_file(tmp_path, content))


def test_s3_entries_become_boto3_session_arguments(tmp_path: Path) -> None:
    entry = {"key_id": "id", "secret_key": "secret", "region": "eu-west-1", "profile": ""}
    environ = credential_file(tmp_path, {"s3": {"": entry}})
    assert _credentials("s3://bucket/models", environ) == {
        "aws_access_key_id": "id",
        "aws_secret_access_key": "secret",
        "region_name": "eu-west-1",
    }
    environ = credential_file(tmp_path, {"s3": {"": "not an object"}})
    with pytest.raises(ValueError, match="section 's3' must be an object"):
        _credentials("s3://bucket/models", environ)


def test_azure_uses_the_files_shared_key_then_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("azure.storage.blob")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    location = parse_azure_url("as://pathaccount/container/models")

    def shared_key() -> tuple[str, str] | None:
        credential = AzureStore(location)._container.credential
        return None if credential is None else (credential.account_name, credential.account_key)

    monkeypatch.delenv(CREDENTIAL_FILE_VARIABLE, raising=False)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    assert shared_key() is None  # anonymous: a public container
    monkeypatch.setenv("AZURE_STORAGE_KEY", "a2V5")
    assert shared_key() == ("pathaccount", "a2V5")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "variable")
    assert shared_key() == ("variable", "a2V5")
    entries = {"": {"account_str": "fileaccount", "account_key": "ZmlsZQ=="}}
    entries["as://pathaccount/container/models"] = {"account_key": "bW9kZWxz"}
    path = credential_file(tmp_path, {"as": entries})[CREDENTIAL_FILE_VARIABLE]
    monkeypatch.setenv(CREDENTIAL_FILE_VARIABLE, path)
    assert shared_key() == ("pathaccount", "bW9kZWxz")  # the longest entry; the path's account
    location = parse_azure_url("as://pathaccount/other")
    assert shared_key() == ("fileaccount", "ZmlsZQ==")


def test_gcs_uses_the_key_file_the_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("google.cloud.storage")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = {
        "type": "service_account",
        "project_id": "models",
        "private_key_id": "1",
        "private_key": pem,
        "client_email": "reader@models.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    key_file = tmp_path / "reader.json"
    key_file.write_text(json.dumps(account))
    path = credential_file(tmp_path, {"gs": {"gs://models": str(key_file), "": 7}})
    monkeypatch.setenv(CREDENTIAL_FILE_VARIABLE, path[CREDENTIAL_FILE_VARIABLE])
    store = GcsStore(parse_gcs_url("gs://models/repo"))
    assert store._client._credentials.service_account_email == account["client_email"]
    with pytest.raises(ValueError, match="section 'gs' must be the path of a service-account"):
        GcsStore(parse_gcs_url("gs://other/repo"))
