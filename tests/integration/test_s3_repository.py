"""Model repositories in S3 (`--model-repository=s3://host:port/bucket/path`), served by a real
server from moto's S3 server on 127.0.0.1, with real boto3 and tritonclient: the first copy at
start-up, explicit loads and reloads that see what changed in the bucket, removed models, the
mount folder, and the failures a user sees."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from inferd.repository.s3 import S3Location, parse_s3_url
from inferd.server.app import StartupError
from tests.conftest import EXAMPLES, TEST_SETTINGS, RunningServer, start_server
from tests.integration.test_cli import settings_for, usage_error
from tests.wire import infer

boto3 = pytest.importorskip("boto3", reason="boto3 is in the test extra")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")

Factory = Callable[..., RunningServer]
SIMPLE = {"INPUT0": np.arange(16, dtype=np.int32)[None], "INPUT1": np.ones((1, 16), np.int32)}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    """A fresh bucket; boto3 in the server finds the credentials where Triton's users put them."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TRITON_AWS_MOUNT_DIRECTORY", raising=False)
    s3 = boto3.resource("s3", endpoint_url=f"http://{endpoint}")
    created = s3.Bucket(request.node.name.replace("_", "-")[:60].strip("-").lower())
    created.create()
    return created


def upload(bucket: Any, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            bucket.upload_file(str(path), f"{prefix}/{path.relative_to(folder.parent)}")


def serve(location: str, **settings: Any) -> RunningServer:
    return start_server(
        replace(TEST_SETTINGS, model_repositories=(parse_s3_url(location),), **settings)
    )


def test_models_are_served_from_a_bucket(
    endpoint: str, bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(bucket, EXAMPLES / "simple", "repo")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the copy goes
    server = serve(f"s3://{endpoint}/{bucket.name}/repo")
    try:
        result = infer(server, "http", "simple", SIMPLE)
        assert result["OUTPUT0"].tolist() == (SIMPLE["INPUT0"] + 1).tolist()
        [copy] = tmp_path.glob("inferd-s3-*")
        assert (copy / "simple" / "1" / "model.onnx").is_file()
    finally:
        server.stop()
    assert not copy.exists()  # a temporary copy goes with the server


def test_explicit_loads_see_the_bucket_change(endpoint: str, bucket: Any) -> None:
    upload(bucket, EXAMPLES / "simple", "models")
    server = serve(f"s3://{endpoint}/{bucket.name}/models", model_control_mode="explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert [e["name"] for e in client.get_model_repository_index()] == ["simple"]
        upload(bucket, EXAMPLES / "identity_fp32", "models")  # added after start-up
        client.load_model("identity_fp32")
        assert client.is_model_ready("identity_fp32")
        # A changed config is downloaded again on reload.
        config = bucket.Object("models/identity_fp32/config.pbtxt").get()["Body"].read()
        changed = config.decode().replace("max_batch_size: 8", "max_batch_size: 2")
        assert changed != config.decode()
        bucket.put_object(Key="models/identity_fp32/config.pbtxt", Body=changed.encode())
        client.load_model("identity_fp32")
        assert client.get_model_config("identity_fp32")["max_batch_size"] == 2
        # Objects gone from the bucket are gone from the repository.
        bucket.objects.filter(Prefix="models/simple/").delete()
        assert [e["name"] for e in client.get_model_repository_index()] == ["identity_fp32"]
    finally:
        client.close()
        server.stop()


def test_the_mount_folder_holds_the_copy(
    endpoint: str, bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(bucket, EXAMPLES / "simple", "deep/repo")
    monkeypatch.setenv("TRITON_AWS_MOUNT_DIRECTORY", str(tmp_path))
    server = serve(f"s3://http://{endpoint}/{bucket.name}/deep/repo")
    server.stop()
    copy = tmp_path / bucket.name / "deep" / "repo" / "simple"
    assert (copy / "config.pbtxt").is_file()
    assert (copy / "1" / "model.onnx").is_file()  # kept: the user chose the folder


def test_a_missing_bucket_stops_the_start_with_the_reason(endpoint: str, bucket: Any) -> None:
    with pytest.raises(StartupError) as error:
        serve(f"s3://{endpoint}/no-such-bucket/repo")
    message = str(error.value)
    assert message.startswith(f"failed to read model repository s3://{endpoint}/no-such-bucket")
    assert "NoSuchBucket" in message


def test_triton_spellings_of_s3_paths(capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(
        [
            "serve",
            "--model-repository=s3://bucket/path/to/repo",
            "--model-repository=s3://minio:9000/models",
            "--model-repository=s3://https://r2.example:443/bucket/a/",
            "--model-repository=/local",
        ]
    )
    assert settings.model_repositories == (
        S3Location("s3://bucket/path/to/repo", "bucket", "path/to/repo"),
        S3Location("s3://minio:9000/models", "models", "", "http://minio:9000"),
        S3Location(
            "s3://https://r2.example:443/bucket/a/", "bucket", "a", "https://r2.example:443"
        ),
        Path("/local"),
    )
    assert "names no bucket" in usage_error("--model-repository=s3://", capsys)


def test_poll_mode_loads_what_the_bucket_gains(endpoint: str, bucket: Any) -> None:
    upload(bucket, EXAMPLES / "simple", "polled")
    server = serve(
        f"s3://{endpoint}/{bucket.name}/polled",
        model_control_mode="poll",
        repository_poll_secs=0.2,
    )
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
