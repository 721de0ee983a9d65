"""tritonserver's other flags: restricted APIs over both protocols and all four stacks, the
server id, custom config names, load retries, log switches and files, shared ports, and the
flags inferd accepts without acting on them."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from inferd.benchmarks.ports import free_port
from inferd.server.app import StartupError
from inferd.server.cli import build_parser, main
from inferd.server.grpc_tls import GrpcTls
from inferd.server.header_forward import HeaderForward
from inferd.server.restricted_api import Api, http_api, parse_restrictions
from inferd.server.settings import GrpcChannel, Settings
from inferd.server.types import InferRequest
from tests.certificates import make_certificates
from tests.conftest import EXAMPLES, RunningServer
from tests.integration.test_cli import (
    settings_for,
    spawn_inferd,
    usage_error,
    wait_ready,
)
from tests.python_models import IDENTITY_CONFIG, INFO, INFO_CONFIG, write_python_model
from tests.wire import PROTOCOLS, client_for, fails, infer

Factory = Callable[..., RunningServer]
SIMPLE = {
    "INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16),
    "INPUT1": np.ones((1, 16), np.int32),
}
STACKS = {"inferd": {}, "alt": {"http_stack": "uvicorn", "grpc_stack": "grpcio"}}
GRPC_KEY = "triton-grpc-protocol-admin"


def serve_flags(flags: list[str]) -> Settings:
    return settings_for(["serve", *flags])  # type: ignore[no-any-return]


def restricted_server(server_factory: Factory, stacks: str) -> RunningServer:
    settings = serve_flags(
        [
            "--http-restricted-api=inference,model-config:infer-key=secret",
            "--grpc-restricted-protocol=inference,health:admin=yes",
        ]
    )
    return server_factory(
        model_repositories=(EXAMPLES,),
        http_restricted_api=settings.http_restricted_api,
        grpc_restricted_protocol=settings.grpc_restricted_protocol,
        **STACKS[stacks],
    )


@pytest.mark.parametrize("stacks", STACKS)
def test_restricted_http_apis_need_their_header(server_factory: Factory, stacks: str) -> None:
    server = restricted_server(server_factory, stacks)
    refusal = "This API is restricted, expecting header 'infer-key'"
    url = f"http://{server.http_url}"
    answer = httpx.get(url + "/v2/models/simple/config")
    assert (answer.status_code, answer.json()) == (403, {"error": refusal})
    answer = httpx.get(url + "/v2/models/simple/config", headers={"Infer-Key": "wrong"})
    assert answer.status_code == 403
    assert httpx.get(url + "/v2/models/simple/config", headers={"Infer-Key": "secret"}).is_success
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_server_ready()  # health is restricted on gRPC only
        assert client.get_model_metadata("simple")["name"] == "simple"
        with pytest.raises(Exception, match=refusal):
            infer(server, "http", "simple", SIMPLE)
    answer_ = infer(server, "http", "simple", SIMPLE, headers={"infer-key": "secret"})
    assert (answer_["OUTPUT0"] == SIMPLE["INPUT0"] + 1).all()
    assert httpx.get(url + "/metrics").is_success  # scrapers send no extra headers
    # KServe's V1 predict is inference too, and so is MLServer's infer_stream.
    v1_row = {"INPUT0": [0] * 16, "INPUT1": [0] * 16}
    answer = httpx.post(url + "/v1/models/simple:predict", json={"instances": [v1_row]})
    assert (answer.status_code, answer.json()) == (403, {"error": refusal})
    answer = httpx.post(url + "/v2/models/simple/infer_stream", json={"inputs": []})
    assert (answer.status_code, answer.json()) == (403, {"error": refusal})


@pytest.mark.parametrize("stacks", STACKS)
def test_restricted_grpc_protocols_need_their_metadata(
    server_factory: Factory, stacks: str
) -> None:
    server = restricted_server(server_factory, stacks)
    refusal = f"This protocol is restricted, expecting header '{GRPC_KEY}'"
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for call in (
            lambda: client.is_server_live(),
            lambda: client.is_server_live(headers={GRPC_KEY: "no"}),
            lambda: client.is_server_live(headers={"admin": "yes"}),  # the key needs its prefix
            lambda: infer(server, "grpc", "simple", SIMPLE),
        ):
            assert fails(call, "grpc", "unavailable") == refusal
        assert client.is_server_live(headers={GRPC_KEY: "yes"})
        assert client.get_model_config("simple").config.name == "simple"  # open on gRPC
    answer = infer(server, "grpc", "simple", SIMPLE, headers={GRPC_KEY: "yes"})
    assert (answer["OUTPUT1"] == SIMPLE["INPUT0"] - 1).all()


def test_every_http_route_belongs_to_its_api() -> None:
    routes = {
        "/v2": Api.METADATA,
        "/v2/health/live": Api.HEALTH,
        "/v2/models/m": Api.METADATA,
        "/v2/models/m/versions/2": Api.METADATA,
        "/v2/models/m/ready": Api.HEALTH,
        "/v2/models/ready": Api.METADATA,  # a model named "ready"
        "/v2/models/m/versions/1/ready": Api.HEALTH,
        "/v2/models/m/config": Api.MODEL_CONFIG,
        "/v2/models/stats": Api.STATISTICS,
        "/v2/models/m/versions/1/stats": Api.STATISTICS,
        "/v2/models/m/infer": Api.INFERENCE,
        "/v2/models/m/versions/1/generate_stream": Api.INFERENCE,
        "/v2/models/m/infer_stream": Api.INFERENCE,
        "/v2/models/m/versions/v-one/infer_stream": Api.INFERENCE,  # MLServer's version names
        "/v2/models/m/trace/setting": Api.TRACE,
        "/v2/trace/setting": Api.TRACE,
        "/v2/logging": Api.LOGGING,
        "/v2/repository/index": Api.MODEL_REPOSITORY,
        "/v2/repository/models/m/load": Api.MODEL_REPOSITORY,
        "/v2/systemsharedmemory/status": Api.SHARED_MEMORY,
        "/v2/cudasharedmemory/region/r/register": Api.SHARED_MEMORY,
        "/": Api.HEALTH,  # KServe's V1 liveness
        "/v1/models": Api.METADATA,
        "/v1/models/m": Api.HEALTH,
        "/v1/models/m:predict": Api.INFERENCE,
        "/metrics": None,
        "/v2/models/m/unknown": None,
    }
    assert {path: http_api(path) for path in routes} == routes


def test_restriction_flags_are_checked_as_triton_checks_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parsed = parse_restrictions(["health,metadata:k=v", "trace:K2=w"], "--x", "api")
    assert {api.value: (r.header, r.value) for api, r in parsed.items()} == {
        "health": ("k", "v"),
        "metadata": ("k", "v"),
        "trace": ("k2", "w"),  # header names are compared without case
    }
    for flag, message in (
        (
            "--http-restricted-api=inference",
            "--http-restricted-api option format is '<config name>:<setting>=<value>'. "
            "Got inference",
        ),
        ("--http-restricted-api=bogus:k=v", "unknown restricted api 'bogus'"),
        ("--grpc-restricted-protocol=Inference:k=v", "unknown restricted protocol 'Inference'"),
        ("--http-restricted-api=inference:k=", "option format is"),
    ):
        assert message in usage_error(flag, capsys)
    with pytest.raises(ValueError, match="'inference' can not be specified in multiple"):
        parse_restrictions(["inference:k=v", "health,inference:j=w"], "--x", "api")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_id_names_the_server(server_factory: Factory, protocol: str) -> None:
    server = server_factory(model_repositories=(EXAMPLES,), server_id="edge-7")
    with client_for(server, protocol) as client:
        metadata = client.get_server_metadata()
        name = metadata["name"] if protocol == "http" else metadata.name
    assert name == "edge-7"


def test_model_config_name_picks_the_custom_config_where_there_is_one(
    server_factory: Factory, tmp_path: Path
) -> None:
    for name in ("custom", "plain"):
        write_python_model(tmp_path, name, IDENTITY, IDENTITY_CONFIG + "max_batch_size: 2\n")
    (tmp_path / "custom" / "configs").mkdir()
    (tmp_path / "custom" / "configs" / "h100.pbtxt").write_text(
        IDENTITY_CONFIG + "max_batch_size: 16\n"
    )
    server = server_factory(model_repositories=(tmp_path,), model_config_name="h100")
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.get_model_config("custom")["max_batch_size"] == 16
        assert client.get_model_config("plain")["max_batch_size"] == 2
    assert serve_flags(["--model-config-name=h100"]).model_config_name == "h100"


# Fails to initialize on its first try in a process (it leaves a marker file behind).
FLAKY = """
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        marker = os.path.join(args["model_repository"], "tried")
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first try fails")

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT0") for r in requests]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", i.as_numpy())]) for i in inputs
        ]
"""
IDENTITY = FLAKY.replace("raise RuntimeError", "pass  #")


@pytest.mark.parametrize("retries", [0, 1])
def test_load_retry_count_tries_a_failed_load_again(
    server_factory: Factory, tmp_path: Path, retries: int
) -> None:
    write_python_model(tmp_path, "flaky", FLAKY, IDENTITY_CONFIG)
    server = server_factory(model_repositories=(tmp_path,), model_load_retry_count=retries)
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_model_ready("flaky") is bool(retries)
    assert serve_flags(["--model-load-retry-count=3"]).model_load_retry_count == 3


def test_load_thread_count_still_loads_every_model(server_factory: Factory) -> None:
    server = server_factory(model_repositories=(EXAMPLES,), model_load_thread_count=1)
    index = httpx.post(f"http://{server.http_url}/v2/repository/index").json()
    assert {m["state"] for m in index} == {"READY"}
    assert len(index) == len([p for p in EXAMPLES.iterdir() if (p / "config.pbtxt").is_file()])


def test_reuse_ports_let_two_servers_share_them(server_factory: Factory) -> None:
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    shared = {"model_repositories": (EXAMPLES,), **ports}
    reuse = {"reuse_http_port": True, "grpc_channel": GrpcChannel(reuse_port=True)}
    first = server_factory(**shared, **reuse)
    second = server_factory(**shared, **reuse)
    assert first.app.http_port == second.app.http_port
    assert first.app.grpc_port == second.app.grpc_port
    with pytest.raises(StartupError):
        server_factory(**shared)  # without the flag the port stays taken


@pytest.mark.slow
def test_log_switches_and_file_as_triton_takes_them(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    process, url = spawn_inferd(
        f"--log-file={log_file}",
        "--log-format=ISO8601",
        "--log-info=true",
        "--log-warning=false",
        "--pinned-memory-pool-byte-size=268435456",
        "--backend-directory=/opt/tritonserver/backends",
    )
    try:
        wait_ready(url, process)
        settings = httpx.get(url + "/v2/logging").json()
        process.terminate()
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert settings["log_file"] == str(log_file)
    assert (settings["log_format"], settings["log_info"], settings["log_warning"]) == (
        "ISO8601",
        True,
        False,
    )
    written = log_file.read_text()
    assert "is READY" in written  # info records go to the file, not to stderr
    assert "is READY" not in output.decode()
    first = written.splitlines()[0]
    assert first[4] == "-" and first[10] == "T" and first[19] == "Z", first  # ISO 8601, UTC
    assert "compatibility" not in written  # that notice is a warning, switched off here


def test_inert_flags_are_accepted_checked_and_named(capsys: pytest.CaptureFixture[str]) -> None:
    settings = serve_flags(
        [
            "--backend-directory=/opt/tritonserver/backends",
            "--cuda-memory-pool-byte-size=0:67108864",
            "--cuda-memory-pool-byte-size=1:67108864",
            "--http-thread-count=8",
            "--sagemaker-thread-count=8",
            "--grpc-infer-response-compression-level=none",
            "--host-policy=gpu0,numa-node=0",
        ]
    )
    assert [given.split(" ")[0] for given in settings.inert_flags] == [
        "--backend-directory",
        "--cuda-memory-pool-byte-size",
        "--host-policy",
        "--http-thread-count",
        "--grpc-infer-response-compression-level",
        "--sagemaker-thread-count",
    ]
    assert serve_flags([]).inert_flags == ()
    backend_settings = serve_flags(
        [
            "--backend-config=python,shm-default-byte-size=1048576",
            "--backend-config=python,isolation=process",
            "--backend-config=default-max-batch-size=8",
            "--backend-config=tensorflow,version=2",
        ]
    )
    assert backend_settings.python_isolation == "process"
    assert backend_settings.inert_flags == (
        "--backend-config=python,shm-default-byte-size (no such setting in inferd)",
        "--backend-config=tensorflow,version (no such setting in inferd)",
    )
    assert serve_flags([]).pinned_memory_pool_bytes == 268435456  # Triton's default
    assert serve_flags(["--pinned-memory-pool-byte-size=0"]).pinned_memory_pool_bytes == 0
    for flag, message in (
        ("--cuda-memory-pool-byte-size=64", "expected <gpu>:<bytes>"),
        ("--pinned-memory-pool-byte-size=lots", "expected a number >= 0, got lots"),
        ("--model-load-retry-count=-1", "expected a number >= 0, got -1"),
        ("--grpc-infer-response-compression-level=max", "expected none, low, medium or high"),
        ("--model-namespacing=maybe", "expected true or false"),
        ("--model-config-name=a b", "no spaces"),
        ("--model-load-thread-count=0", "expected a number >= 1"),
        ("--log-format=xml", "invalid choice"),
    ):
        assert message in usage_error(flag, capsys), flag


# The flags of `tritonserver --help` (release 2.51).
TRITONSERVER_FLAGS = """
--allow-cpu-metrics --allow-gpu-metrics --allow-grpc --allow-http --allow-metrics
--allow-sagemaker --allow-vertex-ai --backend-config --backend-directory
--buffer-manager-thread-count --cache-config --cache-directory --cuda-memory-pool-byte-size
--cuda-virtual-address-size --disable-auto-complete-config --enable-peer-access
--exit-on-error --exit-timeout-secs --grpc-address --grpc-header-forward-pattern
--grpc-http2-max-ping-strikes --grpc-http2-max-pings-without-data
--grpc-http2-min-recv-ping-interval-without-data --grpc-infer-allocation-pool-size
--grpc-infer-response-compression-level --grpc-keepalive-permit-without-calls
--grpc-keepalive-time --grpc-keepalive-timeout --grpc-max-connection-age
--grpc-max-connection-age-grace --grpc-port --grpc-restricted-protocol --grpc-root-cert
--grpc-server-cert --grpc-server-key --grpc-use-ssl --grpc-use-ssl-mutual --help --host-policy
--http-address --http-header-forward-pattern --http-port --http-restricted-api
--http-thread-count --id --load-model --log-error --log-file --log-format --log-info
--log-verbose --log-warning --metrics-address --metrics-config --metrics-interval-ms
--metrics-port --min-supported-compute-capability --model-config-name --model-control-mode
--model-load-gpu-limit --model-load-retry-count --model-load-thread-count --model-namespacing
--model-repository --model-store --pinned-memory-pool-byte-size --rate-limit
--rate-limit-resource --repoagent-directory --repository-poll-secs --response-cache-byte-size
--reuse-grpc-port --reuse-http-port --sagemaker-port --sagemaker-safe-port-range
--sagemaker-thread-count --strict-model-config --strict-readiness --trace-config --trace-count
--trace-file --trace-level --trace-log-frequency --trace-rate --vertex-ai-default-model
--vertex-ai-port --vertex-ai-thread-count
""".split()  # noqa: SIM905 - pasted from --help


def test_every_tritonserver_flag_is_known() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr,index]
    ours = {flag for action in serve._actions for flag in action.option_strings}
    assert sorted(set(TRITONSERVER_FLAGS) - ours) == []


def forwarding_server(server_factory: Factory, tmp_path: Path, stacks: str) -> RunningServer:
    write_python_model(tmp_path, "info", INFO, INFO_CONFIG)
    settings = serve_flags(
        ["--http-header-forward-pattern=my_header.*|priority", "--grpc-header-forward-pattern=.*"]
    )
    return server_factory(
        model_repositories=(tmp_path,),
        http_header_forward=settings.http_header_forward,
        grpc_header_forward=settings.grpc_header_forward,
        **STACKS[stacks],
    )


def seen_parameters(server: RunningServer, protocol: str, **options: Any) -> dict[str, Any]:
    inputs = {"INPUT0": np.ones(1, np.int32)}
    answer = infer(server, protocol, "info", inputs, ["REQUEST"], **options)
    return json.loads(answer["REQUEST"][0])["parameters"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stacks", STACKS)
def test_forwarded_headers_reach_the_model_as_parameters(
    server_factory: Factory, tmp_path: Path, stacks: str
) -> None:
    server = forwarding_server(server_factory, tmp_path, stacks)
    quoted = 'a "quoted" value, a backslash\\ and a comma'
    headers = {"My_Header_1": "v1", "my_header_2": quoted, "header_3": "not forwarded"}
    seen = seen_parameters(server, "http", headers=headers, parameters={"key": 7})
    assert seen == {"key": 7, "my_header_1": "v1", "my_header_2": quoted}
    # A header replaces a body parameter of its name; a reserved name is refused.
    seen = seen_parameters(
        server, "http", headers={"my_header_1": "h"}, parameters={"my_header_1": 1}
    )
    assert seen == {"my_header_1": "h"}
    message = "'priority' is a request parameter reserved for Triton usage"
    with pytest.raises(Exception, match=message):
        seen_parameters(server, "http", headers={"Priority": "1"})
    # gRPC, pattern .*: the client's metadata, without the protocol's own headers.
    metadata = {"my_header_1": "v1", "x-tenant": "a"}
    seen = seen_parameters(server, "grpc", headers=metadata, parameters={"k": "s"})
    assert seen.pop("user-agent").startswith("grpc-python/")
    assert seen == {"k": "s", **metadata}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        answers: queue.Queue[Any] = queue.Queue()
        client.start_stream(lambda result, error: answers.put(error or result), headers=metadata)
        inputs = grpcclient.InferInput("INPUT0", [1], "INT32")
        inputs.set_data_from_numpy(np.ones(1, np.int32))
        outputs = [grpcclient.InferRequestedOutput("REQUEST")]
        for _ in range(2):  # the stream's metadata goes with each of its requests
            client.async_stream_infer("info", [inputs], outputs=outputs)
            streamed = json.loads(answers.get(timeout=30).as_numpy("REQUEST")[0])["parameters"]
            assert streamed.pop("user-agent").startswith("grpc-python/")
            assert streamed == metadata
        client.stop_stream()
    # Triton 2.51 forwards headers to /infer only, not to /generate.
    generated = httpx.post(
        f"http://{server.http_url}/v2/models/info/generate",
        json={"INPUT0": 1, "key": 7},
        headers={"my_header_1": "v1"},
    )
    assert json.loads(generated.json()["REQUEST"])["parameters"] == {"key": 7}


def test_header_forward_patterns_as_triton_reads_them(capsys: pytest.CaptureFixture[str]) -> None:
    def forwarded(pattern: str, *names: str) -> dict[str, Any]:
        request = InferRequest("m", "", {})
        HeaderForward(pattern, "--x").apply(request, [(name, "v") for name in names])
        return request.parameters

    assert forwarded("ab", "xaby", "AB", "b") == {"xaby": "v", "AB": "v"}  # searched, any case
    assert forwarded("(?-i)ab", "xaby", "AB") == {"xaby": "v"}
    assert forwarded("^ab$", "xaby", "ab") == {"ab": "v"}
    message = "--grpc-header-forward-pattern: invalid regular expression '(unclosed'"
    assert message in usage_error("--grpc-header-forward-pattern=(unclosed", capsys)
    assert serve_flags([]).http_header_forward is None


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate it signed for localhost and 127.0.0.1, and a client one."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


def tls_client(server: RunningServer, certs: Path, own_certificate: bool) -> Any:
    mine = {
        "private_key": str(certs / "client.key"),
        "certificate_chain": str(certs / "client.crt"),
    }
    return grpcclient.InferenceServerClient(
        server.grpc_url,
        ssl=True,
        root_certificates=str(certs / "ca.crt"),
        **({key: str(path) for key, path in mine.items()} if own_certificate else {}),
    )


@pytest.mark.parametrize("stacks", STACKS)
def test_grpc_over_tls_and_mutual_tls(
    server_factory: Factory, certificates: Path, stacks: str
) -> None:
    c = certificates
    tls = [f"--grpc-server-cert={c / 'server.crt'}", f"--grpc-server-key={c / 'server.key'}"]
    one_way = serve_flags(["--grpc-use-ssl=true", *tls]).grpc_tls
    server = server_factory(model_repositories=(EXAMPLES,), grpc_tls=one_way, **STACKS[stacks])
    with tls_client(server, c, own_certificate=False) as client:
        assert client.is_server_live()
        inputs = []
        for name, array in SIMPLE.items():
            inputs.append(grpcclient.InferInput(name, list(array.shape), "INT32"))
            inputs[-1].set_data_from_numpy(array)
        answer = client.infer("simple", inputs)
        assert (answer.as_numpy("OUTPUT0") == SIMPLE["INPUT0"] + 1).all()
    with grpcclient.InferenceServerClient(server.grpc_url) as plain:
        assert fails(plain.is_server_live, "grpc", "unavailable")

    # --grpc-use-ssl-mutual alone turns TLS on, as in Triton.
    mutual = serve_flags(["--grpc-use-ssl-mutual=true", *tls, f"--grpc-root-cert={c / 'ca.crt'}"])
    assert mutual.grpc_tls is not None and mutual.grpc_tls.mutual
    server = server_factory(
        model_repositories=(EXAMPLES,), grpc_tls=mutual.grpc_tls, **STACKS[stacks]
    )
    with tls_client(server, c, own_certificate=True) as client:
        assert client.is_server_live()
    with tls_client(server, c, own_certificate=False) as client:
        assert fails(client.is_server_live, "grpc", "unavailable")


def test_tls_flags_that_cannot_work_are_refused(
    server_factory: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flags, message in (
        (["--grpc-use-ssl=true"], "--grpc-use-ssl=true needs --grpc-server-cert and"),
        (
            ["--grpc-use-ssl-mutual=true", "--grpc-server-cert=c", "--grpc-server-key=k"],
            "--grpc-use-ssl-mutual=true needs --grpc-root-cert",
        ),
    ):
        with pytest.raises(SystemExit):
            main(["serve", *flags])
        assert message in capsys.readouterr().err
    (tmp_path / "bad.pem").write_text("not a certificate")
    bad = GrpcTls(tmp_path / "bad.pem", tmp_path / "bad.pem")
    with pytest.raises(StartupError, match="gRPC TLS: cannot use --grpc-server-cert="):
        server_factory(model_repositories=(EXAMPLES,), grpc_tls=bad)
