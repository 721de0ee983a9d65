"""How to start inferd and each peer server on given ports (the peers from $PEERS)."""

from __future__ import annotations

import compileall
import importlib.util
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from inferd.benchmarks.peers import require
from inferd.benchmarks.procs import LOCALHOST, Probe

# The peers' models: tiny is [batch, 16] FP32 -> [batch, 16]; the bundled `simple` adds two INT32s.
TINY = Probe.of("tiny", {"input": ("FP32", (1, 16))})
SIMPLE = Probe.of("simple", {"INPUT0": ("INT32", (1, 16)), "INPUT1": ("INT32", (1, 16))})


@dataclass(frozen=True)
class Server:
    """A launchable server: HTTP on ``base_port``, gRPC on +1, metrics (if any) on +2."""

    name: str
    argv: list[str]
    cwd: Path
    base_port: int
    probe: Probe = TINY
    env: dict[str, str] = field(default_factory=dict)
    # MLServer's REST API has no binary tensor extension: perf_analyzer must send JSON.
    http_json: bool = False

    @property
    def http_url(self) -> str:
        return f"{LOCALHOST}:{self.base_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOCALHOST}:{self.base_port + 1}"


def inferd(
    base_port: int,
    workdir: Path,
    *,
    repository: Path | None,
    extra_args: Sequence[str] = (),
    name: str = "",
) -> Server:
    """inferd from this interpreter's environment; no repository = the bundled examples."""
    byte_compile_inferd()
    argv = [sys.executable, "-m", "inferd", "serve"]
    if repository is not None:
        argv += ["--model-repository", str(repository)]
    argv += ["--http-address", LOCALHOST, "--http-port", str(base_port)]
    argv += ["--grpc-address", LOCALHOST, "--grpc-port", str(base_port + 1)]
    argv += ["--metrics-address", LOCALHOST, "--metrics-port", str(base_port + 2), *extra_args]
    name = name or ("inferd" if repository is not None else "inferd-examples")
    return Server(name, argv, workdir, base_port, TINY if repository is not None else SIMPLE)


INFERD_PACKAGES = (
    "inferd",
    "inferd.server",
    "inferd.batching",
    "inferd.repository",
    "inferd.backends",
)


def byte_compile_inferd() -> None:
    """Compile inferd's modules ahead, as a regular pip install (and any container image) does:
    an editable install compiles on first import, and with PYTHONDONTWRITEBYTECODE on every
    launch, which a launch-time measurement would otherwise count. The peers are regular
    installs, already compiled."""
    for package in INFERD_PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(location, maxlevels=0, quiet=1)


def triton_py(peers: Path, base_port: int, workdir: Path, cache_bytes: int = 0) -> Server:
    """Bare tritonserver 2.51 (python backend running onnxruntime, dynamic batching); with
    `cache_bytes`, its response cache on and enabled in every model."""
    script = require(peers / "scripts" / "triton_py_serve.sh")
    argv = [str(script)]
    if cache_bytes:
        # The script serves $PEERS/models/repo-py: point it at a mirror whose repository
        # enables the cache, and at the cache library the bundled server ships.
        mirror = workdir / "peers"
        for part in ("venv-pytriton", "triton-backends"):
            (mirror / part).parent.mkdir(parents=True, exist_ok=True)
            if not (mirror / part).exists():
                (mirror / part).symlink_to(require(peers / part))
        with_response_cache(require(peers / "models" / "repo-py"), mirror / "models" / "repo-py")
        caches = next(
            peers.glob("venv-pytriton/lib/python*/site-packages/pytriton/tritonserver/caches")
        )
        argv += [f"--cache-config=local,size={cache_bytes}", f"--cache-directory={caches}"]
        peers = mirror
    env = {"PEERS": str(peers), "PORT": str(base_port)}
    return Server("triton-py", argv, workdir, base_port, env=env)


def with_response_cache(repo: Path, copy: Path) -> Path:
    """A copy of a model repository whose models all enable the response cache."""
    shutil.copytree(repo, copy, dirs_exist_ok=True)
    for config in copy.glob("*/config.pbtxt"):
        text = config.read_text()
        if "response_cache" not in text:
            config.write_text(text + "\nresponse_cache { enable: true }\n")
    return copy


def kserve(peers: Path, base_port: int, workdir: Path) -> Server:
    """KServe 0.21 ModelServer (one Python process, no batching)."""
    python = require(peers / "venv-kserve" / "bin" / "python")
    script = require(peers / "scripts" / "kserve_serve.py")
    argv = [str(python), str(script), str(peers / "models")]
    return Server("kserve", argv, workdir, base_port, env={"KS_PORT": str(base_port)})


def mlserver(peers: Path, base_port: int, workdir: Path) -> Server:
    """MLServer 1.7 (default settings); its ports live in settings.json, so it runs on a copy."""
    python = require(peers / "venv-mlserver" / "bin" / "python")
    script = require(peers / "scripts" / "mlserver_start.py")
    repo = workdir / "mlserver-repo"
    shutil.copytree(require(peers / "mlserver-repo"), repo, dirs_exist_ok=True)
    settings = json.loads((repo / "settings.json").read_text())
    settings.update(http_port=base_port, grpc_port=base_port + 1, metrics_port=base_port + 2)
    (repo / "settings.json").write_text(json.dumps(settings, indent=1))
    return Server("mlserver", [str(python), str(script), "."], repo, base_port, http_json=True)


PEERS: dict[str, Callable[[Path, int, Path], Server]] = {
    "triton-py": triton_py,
    "kserve": kserve,
    "mlserver": mlserver,
}


# Servers that have Triton's response cache (--response-cache in compare.py).
CACHING = ("inferd", "inferd-py", "triton-py")


def build(
    name: str,
    peers: Path | None,
    base_port: int,
    workdir: Path,
    inferd_args: Sequence[str] = (),
    cache_bytes: int = 0,
) -> Server:
    """inferd (on $PEERS/models/repo), inferd-py (on triton-py's python-backend repository,
    $PEERS/models/repo-py, unchanged), inferd-mlserver (on MLServer's repository,
    $PEERS/mlserver-repo, unchanged), inferd-examples (bundled examples) or a peer by name.
    `cache_bytes`: the response cache on, and enabled in every model (CACHING servers only)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if cache_bytes and name not in CACHING:
        raise ValueError(f"{name} has no response cache (servers with one: {', '.join(CACHING)})")
    if name == "inferd-examples":
        return inferd(base_port, workdir, repository=None, extra_args=inferd_args)
    if peers is None:
        raise ValueError(f"{name} needs the peers directory")
    if name == "triton-py":
        return triton_py(peers, base_port, workdir, cache_bytes)
    if name in ("inferd", "inferd-py"):
        repo = require(peers / "models" / ("repo" if name == "inferd" else "repo-py"))
        if cache_bytes:
            repo = with_response_cache(repo, workdir / "repo")
            if not any(arg.startswith("--cache-config") for arg in inferd_args):  # e.g. Redis
                inferd_args = [*inferd_args, f"--cache-config=local,size={cache_bytes}"]
        return inferd(base_port, workdir, repository=repo, extra_args=inferd_args, name=name)
    if name == "inferd-mlserver":
        # Its settings.json: the ports give way to the flags; parallel_workers: 1 runs the
        # model in a process of its own, as MLServer's worker does.
        repo = require(peers / "mlserver-repo")
        server = inferd(base_port, workdir, repository=repo, extra_args=inferd_args, name=name)
        return replace(server, http_json=True)  # perf_analyzer sends what it sends MLServer
    return PEERS[name](peers, base_port, workdir)


NAMES = ["inferd", "inferd-py", "inferd-mlserver", "inferd-examples", *PEERS]
