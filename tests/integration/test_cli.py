"""The command line: Triton's flag spellings, INFERD_* variables, and a real server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from inferd.batching.rate_limiter import ExplicitResource
from inferd.benchmarks.ports import free_port
from inferd.server.cache_config import LocalCacheConfig, RedisCacheConfig
from inferd.server.cli import main, parse_args, settings_from_args
from inferd.server.cors import CorsSettings
from inferd.server.mlserver_server_settings import CACHE_BYTES as MLSERVER_CACHE_BYTES
from inferd.server.mlserver_server_settings import read as read_mlserver
from inferd.server.otel_trace import OtelSettings
from inferd.server.rate_limit_settings import RateLimitMode, RateLimitSettings
from inferd.server.trace_settings import TraceLevel, TraceSetting
from tests.conftest import EXAMPLES
from tests.python_models import write_python_model


def settings_for(argv: list[str], environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return settings_from_args(parse_args(argv, environ or {})[1])


def test_triton_flag_spellings() -> None:
    settings = settings_for(
        [
            "serve",
            "--model-repository=/a",
            "--model-repository",
            "/b",
            "--http-port=9000",
            "--model-control-mode=explicit",
            "--load-model=simple",
            "--load-model",
            "digits",
            "--strict-readiness=false",
            "--exit-on-error",
            "--strict-model-config=true",
            "--backend-config=onnxruntime,default-max-batch-size=16",
            "--backend-config=python,isolation=process",
            "--backend-config=python,inline-execution-us=300",
            "--backend-config=mlserver,isolation=process",
            "--log-verbose=1",
        ]
    )
    assert settings.model_repositories == (Path("/a"), Path("/b"))
    assert settings.http_port == 9000
    assert settings.model_control_mode == "explicit"
    assert settings.load_models == ("simple", "digits")
    assert settings.strict_readiness is False
    assert settings.exit_on_error is True
    assert settings.auto_complete_config is False
    assert settings.default_max_batch_size == 16
    assert (settings.python_isolation, settings.mlserver_isolation) == ("process", "process")
    assert settings.python_inline_us == "300"
    assert settings.log_level == "debug"


def test_poll_mode_flags() -> None:
    settings = settings_for(["serve", "--model-control-mode=poll", "--repository-poll-secs=0.5"])
    assert (settings.model_control_mode, settings.repository_poll_secs) == ("poll", 0.5)
    assert settings_for(["serve"]).repository_poll_secs == 15  # Triton's default


def test_defaults_are_tritons_ports() -> None:
    settings = settings_for(["serve"])
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002)
    assert settings.model_repositories == ()


def test_environment_variables_set_defaults_and_flags_win() -> None:
    env = {
        "INFERD_HTTP_PORT": "9100",
        "INFERD_MODEL_REPOSITORY": "/x,/y",
        "INFERD_STRICT_READINESS": "false",
    }
    settings = settings_for(["serve"], env)
    assert settings.http_port == 9100
    assert settings.model_repositories == (Path("/x"), Path("/y"))
    assert settings.strict_readiness is False
    assert settings_for(["serve", "--http-port=9200"], env).http_port == 9200


def test_knatives_port_variable_is_the_http_ports_default() -> None:
    assert settings_for(["serve"], {"PORT": "8080"}).http_port == 8080
    assert settings_for(["serve"], {"PORT": "8080", "INFERD_HTTP_PORT": "9100"}).http_port == 9100
    assert settings_for(["serve", "--http-port=8000"], {"PORT": "8080"}).http_port == 8000
    assert settings_for(["serve"], {"PORT": "8080"}).grpc_port == 8001  # only HTTP follows it


def mlserver_folder(folder: Path) -> Path:
    """`folder` as an MLServer repository (a model's settings in it): its settings.json path."""
    (folder / "model").mkdir(exist_ok=True)
    (folder / "model" / "model-settings.json").write_text('{"implementation": "x.Y"}')
    return folder / "settings.json"


def test_mlservers_server_settings_are_defaults_below_inferds_flags_and_variables(
    tmp_path: Path,
) -> None:
    """A folder `mlserver start` serves with its settings.json: the same ports, address and
    name under inferd; settings.json over MLSERVER_* variables (any case), as in MLServer."""
    mlserver_folder(tmp_path).write_text(
        json.dumps({"http_port": 9080, "grpc_port": "9081", "host": "127.0.0.1", "debug": True})
    )
    repo = f"--model-repository={tmp_path}"
    env = {
        "MLSERVER_GRPC_PORT": "7000",
        "mlserver_metrics_port": "9082",
        "MLSERVER_MODEL_NAME": "m",
    }
    settings = settings_for(["serve", repo], env)
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (9080, 9081, 9082)
    assert settings.http_address == settings.grpc_address == "127.0.0.1"
    flags = settings_for(["serve", repo, "--http-port=9200"], {"INFERD_GRPC_PORT": "9300"})
    assert (flags.http_port, flags.grpc_port) == (9200, 9300)
    # Without settings.json (or without a local repository) the variables alone count.
    assert settings_for(["serve"], env).grpc_port == 7000
    assert settings_for(["serve"], {"MLSERVER_SERVER_NAME": "iris"}).server_id == "iris"


@pytest.mark.parametrize(
    ("given", "flags", "isolation", "workers", "mode"),
    [
        ({"parallel_workers": 0}, [], "thread", 1, "none"),
        ({"parallel_workers": 2}, [], "process", 2, "none"),
        (
            {"parallel_workers": 2},
            ["--backend-config=mlserver,isolation=thread"],
            "thread",
            2,
            "none",
        ),
        ({"load_models_at_startup": "false"}, [], "thread", 1, "explicit"),
        ({"load_models_at_startup": False}, ["--model-control-mode=poll"], "thread", 1, "poll"),
    ],
)
def test_mlservers_workers_and_startup_loading(
    tmp_path: Path,
    given: dict[str, object],
    flags: list[str],
    isolation: str,
    workers: int,
    mode: str,
) -> None:
    """parallel_workers >= 1 runs MLServer models in that many processes of their own, as
    MLServer's workers do; load_models_at_startup=false loads none until asked (explicit
    mode)."""
    mlserver_folder(tmp_path).write_text(json.dumps(given))
    settings = settings_for(["serve", f"--model-repository={tmp_path}", *flags])
    assert (settings.mlserver_isolation, settings.model_control_mode) == (isolation, mode)
    assert settings.mlserver_workers == workers  # processes of each model, when in processes
    assert settings.python_isolation == "thread"  # Triton's python models are not MLServer's


def test_mlservers_response_cache_is_the_default_cache(tmp_path: Path) -> None:
    """cache_enabled: a local cache of cache_size answers (MLServer's bound; 100 by default),
    for the models whose settings enable it; --cache-config wins."""
    mlserver_folder(tmp_path).write_text(json.dumps({"cache_enabled": True, "cache_size": 5}))
    repo = f"--model-repository={tmp_path}"
    assert settings_for(["serve", repo]).response_cache == LocalCacheConfig(
        size=MLSERVER_CACHE_BYTES, entries=5
    )
    flagged = settings_for(["serve", repo, "--cache-config=local,size=1000"])
    assert flagged.response_cache == LocalCacheConfig(size=1000)
    default = settings_for(["serve"], {"MLSERVER_CACHE_ENABLED": "true"})
    assert default.response_cache == LocalCacheConfig(size=MLSERVER_CACHE_BYTES, entries=100)
    assert settings_for(["serve"], {"MLSERVER_CACHE_SIZE": "5"}).response_cache is None


def test_mlservers_cors_settings_turn_cross_origin_requests_on(tmp_path: Path) -> None:
    """cors_settings (settings.json, or MLSERVER_CORS_SETTINGS as JSON): MLServer's defaults
    for what it leaves out; none, or null, leaves CORS off."""
    mlserver_folder(tmp_path).write_text(
        json.dumps({"cors_settings": {"allow_origins": ["https://app.example"], "max_age": None}})
    )
    repo = f"--model-repository={tmp_path}"
    assert settings_for(["serve", repo]).http_cors == CorsSettings(
        allow_origins=("https://app.example",)
    )
    env = {"MLSERVER_CORS_SETTINGS": '{"allow_origins": ["*"], "allow_credentials": "true"}'}
    assert settings_for(["serve"], env).http_cors == CorsSettings(
        allow_origins=("*",), allow_credentials=True
    )
    assert settings_for(["serve"], {"MLSERVER_CORS_SETTINGS": "null"}).http_cors is None
    assert settings_for(["serve"]).http_cors is None


def test_mlservers_metrics_endpoint_is_the_metrics_ports_path(tmp_path: Path) -> None:
    """metrics_endpoint: where the metrics port answers; null: no metrics, as MLServer then
    starts no metrics server (--allow-metrics wins)."""
    assert settings_for(["serve"]).metrics_path == "/metrics"
    env = {"MLSERVER_METRICS_ENDPOINT": "/prometheus"}
    assert settings_for(["serve"], env).metrics_path == "/prometheus"
    mlserver_folder(tmp_path).write_text(json.dumps({"metrics_endpoint": None}))
    repo = f"--model-repository={tmp_path}"
    assert settings_for(["serve", repo]).allow_metrics is False
    assert settings_for(["serve", repo, "--allow-metrics=true"]).allow_metrics is True
    assert settings_for(["serve"], {"MLSERVER_METRICS_ENDPOINT": ""}).allow_metrics is False


def test_a_settings_json_where_mlserver_serves_no_model_is_not_read(tmp_path: Path) -> None:
    """Only a folder MLServer would serve models from (model settings in it, or the
    MLSERVER_MODEL_* variables) has MLServer's settings.json: a Triton repository's file of
    that name is its own business."""
    (tmp_path / "settings.json").write_text(json.dumps({"http_port": 9080, "host": "10.0.0.1"}))
    repo = f"--model-repository={tmp_path}"
    settings = settings_for(["serve", repo])
    assert (settings.http_port, settings.http_address) == (8000, "0.0.0.0")
    env = {"MLSERVER_MODEL_IMPLEMENTATION": "mlserver_sklearn.SKLearnModel"}
    assert settings_for(["serve", repo], env).http_port == 9080


def test_bad_mlserver_settings_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text, message in (
        ('{"http_port": "eighty"}', "settings.json: http_port: not an integer: 'eighty'"),
        ('{"http_port": 70000}', "not a port: 70000"),
        ('{"load_models_at_startup": "maybe"}', "not a boolean: 'maybe'"),
        ("[1]", "not MLServer's settings: not a JSON object"),
        ("{", "not MLServer's settings: "),
        ('{"cache_enabled": true, "cache_size": 0}', "cache_size: at least 1 answer, got 0"),
        (
            '{"cors_settings": {"allow_origins": "*"}}',
            "cors_settings: allow_origins: not a list of strings: '*'",
        ),
        ('{"cors_settings": [1]}', "cors_settings: not a JSON object: [1]"),
        ('{"metrics_endpoint": "metrics"}', "not a path (it starts with '/'): 'metrics'"),
    ):
        mlserver_folder(tmp_path).write_text(text)
        with pytest.raises(SystemExit) as info:
            settings_for(["serve", f"--model-repository={tmp_path}"])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        settings_for(["serve"], {"MLSERVER_HTTP_PORT": "x"})
    assert "MLSERVER_HTTP_PORT: not an integer: 'x'" in capsys.readouterr().err


def test_mlserver_settings_inferd_has_no_use_for_are_named(tmp_path: Path) -> None:
    mlserver_folder(tmp_path).write_text(json.dumps({"debug": True, "http_port": 1, "x": 1}))
    settings = read_mlserver(tmp_path, {"MLSERVER_DEBUG": "true"})
    assert settings.unused == ("debug", "x")  # variables are not named: a pod has many
    assert settings.source == f"{tmp_path / 'settings.json'}"


def test_bad_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        settings_for(["serve", "--strict-readiness=maybe"])
    assert info.value.code == 2
    assert "expected true or false" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        settings_for(["serve"], {"PORT": "http"})
    assert info.value.code == 2
    assert "PORT='http': not a port number" in capsys.readouterr().err
    for bad in (
        "--backend-config=novalue",
        "--backend-config=onnxruntime,default-max-batch-size=x",
        "--backend-config=mlserver,isolation=processes",
        "--backend-config=python,inline-execution-us=0.5",
    ):
        with pytest.raises(SystemExit) as info:
            main(["serve", bad])
        assert info.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_response_cache_flags() -> None:
    assert settings_for(["serve"]).response_cache is None
    assert settings_for(["serve", "--cache-config=local,size=1048576"]).response_cache == (
        LocalCacheConfig(1048576)
    )
    # Triton's deprecated spelling, and the variable (whose value holds a comma itself).
    flag = "--response-cache-byte-size=4096"
    assert settings_for(["serve", flag]).response_cache == LocalCacheConfig(4096)
    env = {"INFERD_CACHE_CONFIG": "local,size=2048"}
    assert settings_for(["serve"], env).response_cache == LocalCacheConfig(2048)
    redis = ["serve", "--cache-config", "redis,host=cache", "--cache-config=redis,port=6379"]
    assert settings_for(redis).response_cache == RedisCacheConfig("cache", 6379)
    # Triton's variables for the login, under the flags.
    env = {"TRITONCACHE_REDIS_USERNAME": "u", "TRITONCACHE_REDIS_PASSWORD": "p"}
    cache = settings_for([*redis, "--cache-config=redis,password=q"], env).response_cache
    assert cache == RedisCacheConfig("cache", 6379, user="u", password="q")
    env = {"INFERD_BACKEND_CONFIG": "onnxruntime,default-max-batch-size=8"}
    assert settings_for(["serve"], env).default_max_batch_size == 8


def usage_error(flag: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What `inferd serve FLAG` says as it exits with argparse's usage-error status."""
    with pytest.raises(SystemExit) as info:
        main(["serve", flag])
    assert info.value.code == 2
    return capsys.readouterr().err


def test_bad_cache_configs_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, says in (
        ("--cache-config=redis,host=localhost", "Must at a minimum specify 'host' and 'port'"),
        ("--cache-config=local,size=big", "size must be a number of bytes"),
        ("--cache-config=local", "No cache specified"),
    ):
        assert says in usage_error(bad, capsys)


def test_trace_flags() -> None:
    assert settings_for(["serve"]).trace == TraceSetting()
    flags = [
        "serve",
        "--trace-config",
        "triton,file=/tmp/trace.json",
        "--trace-config=triton,log-frequency=50",
        "--trace-config=rate=100",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=level=TENSORS",
        "--trace-config=count=10",
        "--trace-config=mode=triton",
    ]
    assert settings_for(flags).trace == TraceSetting(
        TraceLevel.TIMESTAMPS | TraceLevel.TENSORS, 100, 10, 50, "/tmp/trace.json"
    )
    # Triton's deprecated spellings, and the variable (whose values hold commas themselves).
    old = ["serve", "--trace-file=t.json", "--trace-level=TIMESTAMPS", "--trace-rate=5"]
    assert settings_for(old).trace == TraceSetting(TraceLevel.TIMESTAMPS, 5, file="t.json")
    env = {"INFERD_TRACE_CONFIG": "triton,file=t.json level=TIMESTAMPS"}
    assert settings_for(["serve"], env).trace == TraceSetting(TraceLevel.TIMESTAMPS, file="t.json")


def test_opentelemetry_trace_flags() -> None:
    flags = [
        "serve",
        "--trace-config=mode=opentelemetry",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=opentelemetry,url=collector:4318/v1/traces",
        "--trace-config=opentelemetry,resource=service.name=fraud",
        "--trace-config=opentelemetry,resource=deployment.environment=prod",
        "--trace-config=opentelemetry,bsp_schedule_delay=200",
    ]
    settings = settings_for(flags)
    assert settings.trace == TraceSetting(TraceLevel.TIMESTAMPS, mode="opentelemetry")
    assert settings.trace_otel == OtelSettings(
        url="http://collector:4318/v1/traces",  # Triton takes host:port/path
        resource=(("service.name", "fraud"), ("deployment.environment", "prod")),
        bsp=(("bsp_schedule_delay", 200),),
    )


def test_bad_trace_configs_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, says in (
        ("--trace-config=mode=jaeger", "the mode is triton or opentelemetry"),
        ("--trace-config=opentelemetry,file=t.json", "unknown opentelemetry trace setting"),
        ("--trace-config=opentelemetry,resource=flat", "expected <key>=<value>"),
        ("--trace-config=opentelemetry,bsp_max_queue_size=0", "expected a number >= 1"),
        ("--trace-config=triton,rate=5", "unknown trace setting"),
        ("--trace-config=file=t.json", "unknown trace setting"),
        ("--trace-config=level", "expected [<mode>,]<setting>=<value>"),
        ("--trace-config=rate=often", "Unable to parse 'trace_rate', got: often"),
        ("--trace-config=level=LOUD", "Unable to parse 'trace_level', got: LOUD"),
        ("--trace-count=-5", "Expecting value >= -1"),
    ):
        assert says in usage_error(bad, capsys)


def test_rate_limit_flags() -> None:
    assert not settings_for(["serve"]).rate_limit.enabled
    flags = ["serve", "--rate-limit=Execution_Count", "--rate-limit-resource=R1:10"]
    settings = settings_for([*flags, "--rate-limit-resource", "R2:5:0"])
    assert settings.rate_limit == RateLimitSettings(
        RateLimitMode.EXECUTION_COUNT,
        (ExplicitResource("R1", 10), ExplicitResource("R2", 5, 0)),
    )
    from_env = settings_for(
        ["serve"], {"INFERD_RATE_LIMIT": "execution_count", "INFERD_RATE_LIMIT_RESOURCE": "A:1,B:2"}
    )
    assert from_env.rate_limit.resources == (ExplicitResource("A", 1), ExplicitResource("B", 2))


def test_bad_rate_limit_flags_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, says in (
        ("--rate-limit=fast", "invalid argument for --rate-limit"),
        (
            "--rate-limit-resource=R1",
            "--rate-limit-resource option format is '<resource_name>:<count>:<device>' or "
            "'<resource_name>:<count>'. Got R1",
        ),
        ("--rate-limit-resource=R1:x", "Invalid option value. Got x"),
        ("--rate-limit-resource=R1:-1", "the count must be >= 0"),
    ):
        assert says in usage_error(bad, capsys)


def test_help_lists_every_flag_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model-repository", "--model-control-mode", "--load-model", "--exit-on-error"):
        assert flag in text
    assert "INFERD_HTTP_PORT" in text


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(url + "/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def spawn_inferd(*flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m inferd serve FLAGS` on free local ports, logging at info, stdout and stderr
    together in one pipe; and its HTTP URL. The caller waits for it to be ready."""
    http_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inferd",
            "serve",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={free_port()}",
            f"--metrics-port={free_port()}",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "INFERD_LOG_LEVEL": "info"},
    )
    return process, f"http://127.0.0.1:{http_port}"


@pytest.mark.slow
def test_python_dash_m_serves_the_bundled_examples_and_exits_cleanly_on_sigterm() -> None:
    process, url = spawn_inferd()
    try:
        wait_ready(url, process)
        index = httpx.post(url + "/v2/repository/index").json()
        assert {m["name"] for m in index} == {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    log = output.decode()
    assert "model 'digits' version 1 is READY on 1 x cpu" in log
    assert "Traceback" not in log


# A python model whose execute() never returns (a loop that ignores cancellation); it leaves
# a mark beside its file once running.
ENDLESS = """
import time


class TritonPythonModel:
    def execute(self, requests):
        open(__file__ + ".running", "w").close()
        while True:
            time.sleep(0.01)
"""


@pytest.mark.slow
def test_a_model_that_never_returns_cannot_hold_the_exit_past_its_timeout(
    tmp_path: Path,
) -> None:
    """As Triton: past --exit-timeout-secs the server exits even with a request in flight,
    with code 1 and saying why (it used to wait for the model forever)."""
    config = (
        'backend: "python"\ninput [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    )
    write_python_model(tmp_path, "endless", ENDLESS, config)
    process, url = spawn_inferd(f"--model-repository={tmp_path}", "--exit-timeout-secs=1")
    try:
        wait_ready(url, process)
        body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32", "data": [1]}]}
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(httpx.post, url + "/v2/models/endless/infer", json=body)
            deadline = time.monotonic() + 10
            while not (tmp_path / "endless" / "1" / "model.py.running").exists():
                assert time.monotonic() < deadline, "the request did not reach the model"
                time.sleep(0.05)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
            took = time.monotonic() - started
            with pytest.raises(httpx.TransportError):
                stuck.result(10)  # cut when the exit timeout expired
    finally:
        process.kill()
    assert process.returncode == 1
    assert "Exit timeout expired" in output.decode()
    assert took < 20  # not forever (the bound is the timeout and a second; shared cores)


# A python model whose initialize() takes a minute; it leaves a mark once loading.
SLOW_TO_LOAD = """
import time


class TritonPythonModel:
    def initialize(self, args):
        open(__file__ + ".loading", "w").close()
        time.sleep(60)

    def execute(self, requests):
        return []
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "when"),
    [(signal.SIGTERM, "start-up"), (signal.SIGINT, "start-up"), (signal.SIGTERM, "load call")],
)
def test_a_signal_while_a_model_loads_stops_the_server(
    tmp_path: Path, sig: signal.Signals, when: str
) -> None:
    """As Triton: SIGTERM (or Ctrl-C) while a model loads, at start-up or through the load
    API, stops the server within --exit-timeout-secs; it used to go on until the load was
    done, and forever for an initialize() that never returns."""
    config = (
        'backend: "python"\ninput [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    )
    write_python_model(tmp_path, "slow", SLOW_TO_LOAD, config)
    flags = ["--model-control-mode=explicit"] if when == "load call" else []
    process, url = spawn_inferd(f"--model-repository={tmp_path}", "--exit-timeout-secs=2", *flags)
    try:
        with ThreadPoolExecutor(1) as pool:
            if when == "load call":
                wait_ready(url, process)
                pool.submit(httpx.post, url + "/v2/repository/models/slow/load", timeout=60)
            deadline = time.monotonic() + 30
            while not (tmp_path / "slow" / "1" / "model.py.loading").exists():
                assert process.poll() is None and time.monotonic() < deadline, "no load began"
                time.sleep(0.05)
            assert httpx.get(url + "/v2/health/live").status_code == 200  # serving liveness
            process.send_signal(sig)
            output, _ = process.communicate(timeout=30)  # the load alone takes a minute
    finally:
        process.kill()
    assert process.returncode == 0
    log = output.decode()
    assert "a model's load still runs: abandoned" in log
    assert ("shutting down while models load at start-up" in log) == (when == "start-up")
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_bad_repository_path_fails_with_a_clear_message() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferd",
            "--model-repository=/does/not/exist",
            f"--http-port={free_port()}",
            f"--grpc-port={free_port()}",
            f"--metrics-port={free_port()}",
        ],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"/does/not/exist is not a directory" in result.stderr
    assert b"Traceback" not in result.stderr
