"""Model repositories in object stores, served by a real server from local emulators with the
real client libraries and tritonclient: S3 (`s3://host:port/bucket/path`, moto's S3 server,
boto3) and Google Cloud Storage (`gs://bucket/path`, gcp-storage-emulator through
STORAGE_EMULATOR_HOST, google-cloud-storage). The first copy at start-up, explicit loads and
reloads that see what changed in the bucket, removed models, poll mode, the mount folder, and
the failures a user sees."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
import tritonclient.http as httpclient

from inferd.repository.azure import parse_azure_url
from inferd.repository.gcs import parse_gcs_url
from inferd.repository.remote import RemoteLocation, RemoteMirror
from inferd.repository.s3 import S3Store, parse_s3_url
from inferd.server.app import StartupError
from tests.conftest import EXAMPLES, TEST_SETTINGS, RunningServer, start_server
from tests.integration.test_cli import settings_for, usage_error
from tests.wire import infer

boto3 = pytest.importorskip("boto3", reason="boto3 is in the test extra")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
gcs_emulator = pytest.importorskip(
    "gcp_storage_emulator.server", reason="gcp-storage-emulator is in the test extra"
)
gcs_storage = pytest.importorskip("google.cloud.storage", reason="in the test extra")

# Azurite's well-known development account (its documentation publishes the key).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
SIMPLE = {"INPUT0": np.arange(16, dtype=np.int32)[None], "INPUT1": np.ones((1, 16), np.int32)}


class Bucket(Protocol):
    """What the tests do to a bucket, whichever store holds it."""

    name: str

    def url(self, prefix: str) -> str: ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, prefix: str) -> None: ...


class S3Bucket:
    mount_variable = "TRITON_AWS_MOUNT_DIRECTORY"

    def __init__(self, endpoint: str, name: str) -> None:
        self.endpoint, self.name = endpoint, name
        self._bucket = boto3.resource("s3", endpoint_url=f"http://{endpoint}").Bucket(name)
        self._bucket.create()

    def url(self, prefix: str) -> str:
        return f"s3://{self.endpoint}/{self.name}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        self._bucket.put_object(Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self._bucket.Object(key).get()["Body"].read()  # type: ignore[no-any-return]

    def delete(self, prefix: str) -> None:
        self._bucket.objects.filter(Prefix=prefix).delete()


class AzureBucket:
    mount_variable = "TRITON_AZURE_MOUNT_DIRECTORY"

    def __init__(self, connection: str, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.name = name
        service = BlobServiceClient.from_connection_string(connection)
        self._container = service.create_container(name)

    def url(self, prefix: str) -> str:
        return f"as://{AZURITE_ACCOUNT}/{self.name}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        self._container.upload_blob(key, data, overwrite=True)

    def get(self, key: str) -> bytes:
        return self._container.download_blob(key).readall()

    def delete(self, prefix: str) -> None:
        for blob in self._container.list_blobs(name_starts_with=prefix):
            self._container.delete_blob(blob.name)


class GcsBucket:
    mount_variable = "TRITON_GCS_MOUNT_DIRECTORY"

    def __init__(self, name: str) -> None:
        self.name = name
        self._client = gcs_storage.Client.create_anonymous_client()
        self._bucket = self._client.create_bucket(name)

    def url(self, prefix: str) -> str:
        return f"gs://{self.name}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        self._bucket.blob(key).upload_from_string(data)

    def get(self, key: str) -> bytes:
        return self._bucket.blob(key).download_as_bytes()  # type: ignore[no-any-return]

    def delete(self, prefix: str) -> None:
        for blob in self._client.list_blobs(self.name, prefix=prefix):
            blob.delete()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def gcs_endpoint() -> Iterator[str]:
    server = gcs_emulator.create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    host, port = server._api._httpd.server_address  # the port it bound
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's blob service on 127.0.0.1 (an npm package: skipped where it is not installed),
    as an Azure connection string."""
    binary = shutil.which("azurite-blob")
    if binary is None:
        pytest.skip("Azurite is not installed (npm install -g azurite)")
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is in the test extra")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("azurite")
    process = subprocess.Popen(
        [
            binary,
            *("--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder)),
            *("--silent", "--skipApiVersionCheck", "--loose"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert time.monotonic() < deadline and process.poll() is None, "Azurite did not start"
            time.sleep(0.1)
        yield (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["s3", "gcs", "azure"])
def bucket(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    s3_endpoint: str,
    gcs_endpoint: str,
) -> Bucket:
    """A fresh bucket; the server's client finds credentials and endpoints where Triton's
    users put them (AWS_* variables; STORAGE_EMULATOR_HOST, anonymous access)."""
    name = request.node.name.split("[")[0].replace("_", "-")[5:40].strip("-").lower()
    for variable in (
        "TRITON_AWS_MOUNT_DIRECTORY",
        "TRITON_GCS_MOUNT_DIRECTORY",
        "TRITON_AZURE_MOUNT_DIRECTORY",
    ):
        monkeypatch.delenv(variable, raising=False)
    if request.param == "s3":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        return S3Bucket(s3_endpoint, name)
    if request.param == "azure":
        connection = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
        return AzureBucket(connection, name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return GcsBucket(name)


def upload(bucket: Bucket, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            bucket.put(f"{prefix}/{path.relative_to(folder.parent)}", path.read_bytes())


def location(url: str) -> RemoteLocation:
    for scheme, parse in (("s3://", parse_s3_url), ("gs://", parse_gcs_url)):
        if url.startswith(scheme):
            return parse(url)
    return parse_azure_url(url)


def serve(url: str, **settings: Any) -> RunningServer:
    return start_server(replace(TEST_SETTINGS, model_repositories=(location(url),), **settings))


def test_models_are_served_from_a_bucket(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(bucket, EXAMPLES / "simple", "repo")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the copy goes
    server = serve(bucket.url("repo"))
    try:
        result = infer(server, "http", "simple", SIMPLE)
        assert result["OUTPUT0"].tolist() == (SIMPLE["INPUT0"] + 1).tolist()
        [copy] = tmp_path.glob("inferd-models-*")
        assert (copy / "simple" / "1" / "model.onnx").is_file()
    finally:
        server.stop()
    assert not copy.exists()  # a temporary copy goes with the server


def test_explicit_loads_see_the_bucket_change(bucket: Bucket) -> None:
    upload(bucket, EXAMPLES / "simple", "models")
    server = serve(bucket.url("models"), model_control_mode="explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert [e["name"] for e in client.get_model_repository_index()] == ["simple"]
        upload(bucket, EXAMPLES / "identity_fp32", "models")  # added after start-up
        client.load_model("identity_fp32")
        assert client.is_model_ready("identity_fp32")
        # A changed config is downloaded again on reload.
        config = bucket.get("models/identity_fp32/config.pbtxt").decode()
        changed = config.replace("max_batch_size: 8", "max_batch_size: 2")
        assert changed != config
        bucket.put("models/identity_fp32/config.pbtxt", changed.encode())
        client.load_model("identity_fp32")
        assert client.get_model_config("identity_fp32")["max_batch_size"] == 2
        # Objects gone from the bucket are gone from the repository.
        bucket.delete("models/simple/")
        assert [e["name"] for e in client.get_model_repository_index()] == ["identity_fp32"]
    finally:
        client.close()
        server.stop()


def test_poll_mode_loads_what_the_bucket_gains(bucket: Bucket) -> None:
    upload(bucket, EXAMPLES / "simple", "polled")
    server = serve(bucket.url("polled"), model_control_mode="poll", repository_poll_secs=0.2)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        upload(bucket, EXAMPLES / "identity_fp32", "polled")
        deadline = time.monotonic() + 20
        while not client.is_model_ready("identity_fp32") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.is_model_ready("identity_fp32")
    finally:
        client.close()
        server.stop()


def test_the_mount_folder_holds_the_copy(
    bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(bucket, EXAMPLES / "simple", "deep/repo")
    monkeypatch.setenv(bucket.mount_variable, str(tmp_path))
    serve(bucket.url("deep/repo")).stop()
    copy = tmp_path / bucket.name / "deep" / "repo" / "simple"
    assert (copy / "config.pbtxt").is_file()
    assert (copy / "1" / "model.onnx").is_file()  # kept: the user chose the folder


def test_a_missing_bucket_stops_the_start_with_the_reason(bucket: Bucket) -> None:
    url = bucket.url("repo").replace(bucket.name, "no-such-bucket")
    with pytest.raises(StartupError) as error:
        serve(url)
    message = str(error.value)
    assert message.startswith(f"failed to read model repository {url}: ")
    assert any(word in message for word in ("NoSuchBucket", "404", "does not exist"))
    assert "\n" not in message  # the library's first line only


def test_s3_over_https_with_the_scheme_in_the_path(s3_endpoint: str) -> None:
    store = S3Store(parse_s3_url(f"s3://https://{s3_endpoint}/b/p"))
    assert store._client.meta.endpoint_url == f"https://{s3_endpoint}"


def test_triton_spellings_of_remote_paths(capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(
        [
            "serve",
            "--model-repository=s3://bucket/path/to/repo",
            "--model-repository=s3://minio:9000/models",
            "--model-repository=s3://https://r2.example:443/bucket/a/",
            "--model-repository=gs://gbucket/x/y",
            "--model-repository=as://acct/cont/m",
            "--model-repository=/local",
        ]
    )
    found = [
        (r.url, r.bucket, r.prefix, r.endpoint) if isinstance(r, RemoteLocation) else r
        for r in settings.model_repositories
    ]
    assert found == [
        ("s3://bucket/path/to/repo", "bucket", "path/to/repo", None),
        ("s3://minio:9000/models", "models", "", "http://minio:9000"),
        ("s3://https://r2.example:443/bucket/a/", "bucket", "a", "https://r2.example:443"),
        ("gs://gbucket/x/y", "gbucket", "x/y", None),
        ("as://acct/cont/m", "cont", "m", "https://acct.blob.core.windows.net"),
        Path("/local"),
    ]
    assert "names no bucket" in usage_error("--model-repository=s3://", capsys)
    assert "names no bucket" in usage_error("--model-repository=gs://", capsys)
    assert "no account or container" in usage_error("--model-repository=as://acct", capsys)


def test_a_mount_variable_naming_no_folder_stops_the_start(
    bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(bucket.mount_variable, str(tmp_path / "missing"))
    with pytest.raises(StartupError, match="is not an existing folder"):
        serve(bucket.url("repo"))


def test_scans_at_once_leave_one_whole_copy(bucket: Bucket, tmp_path: Path) -> None:
    """An index call beside a load: both bring the copy up to date on their own threads."""
    files = {f"many/m/1/part{i}.bin": bytes([i]) * (1000 + i) for i in range(12)}
    for key, data in files.items():
        bucket.put(key, data)
    mirror = RemoteMirror(location(bucket.url("many")), tmp_path)
    threads = [threading.Thread(target=mirror.sync) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = {
        str(path.relative_to(tmp_path)): path.read_bytes()
        for path in tmp_path.rglob("*")
        if path.is_file()
    }
    assert found == {key.removeprefix("many/"): data for key, data in files.items()}


def test_a_kept_copy_follows_the_bucket_at_the_next_start(
    bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(bucket, EXAMPLES / "simple", "kept")
    upload(bucket, EXAMPLES / "identity_fp32", "kept")
    monkeypatch.setenv(bucket.mount_variable, str(tmp_path))
    serve(bucket.url("kept")).stop()
    copy = tmp_path / bucket.name / "kept"
    assert {p.name for p in copy.iterdir()} == {"simple", "identity_fp32"}
    bucket.delete("kept/identity_fp32/")  # gone while the server was down
    server = serve(bucket.url("kept"))
    try:
        assert {p.name for p in copy.iterdir()} == {"simple"}
        client = httpclient.InferenceServerClient(server.http_url)
        assert [e["name"] for e in client.get_model_repository_index()] == ["simple"]
        client.close()
    finally:
        server.stop()


def test_s3_credentials_from_tritons_credential_file(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The longest matching entry wins; without AWS_* variables nothing else could sign."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))  # no ~/.aws to fall back on
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "setup")  # only while the test fills the bucket
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "setup")
    bucket = S3Bucket(s3_endpoint, "credential-file")
    upload(bucket, EXAMPLES / "simple", "repo")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    url = bucket.url("repo")
    credentials = tmp_path / "credentials.json"
    monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(credentials))
    keys = {"key_id": "from-file", "secret_key": "from-file", "region": "us-east-1"}
    credentials.write_text(json.dumps({"s3": {"": {"profile": "nope"}, url[:-5]: keys}}))
    server = serve(url)
    try:
        assert infer(server, "http", "simple", SIMPLE)["OUTPUT0"].shape == (1, 16)
    finally:
        server.stop()
    credentials.write_text(json.dumps({"s3": {"": {"profile": "nope"}}}))
    with pytest.raises(StartupError, match=r"profile \(nope\) could not be found"):
        serve(url)
