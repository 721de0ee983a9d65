"""Starting, probing and stopping server processes, and measuring their CPU time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

LOCALHOST = "127.0.0.1"


def launch(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, so that stop() reaches every process it forks."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after ``grace_s``."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # Workers and backend stubs may outlive the leader.
    _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, sig)


@dataclass(frozen=True)
class Probe:
    """A JSON inference that proves a server is serving: model name and request body."""

    model: str
    body: bytes

    @classmethod
    def of(cls, model: str, inputs: Mapping[str, tuple[str, Sequence[int]]]) -> Probe:
        """Probe ``model`` with zero-ish data: ``inputs`` maps name -> (datatype, shape)."""
        tensors = []
        for name, (datatype, shape) in inputs.items():
            count = 1
            for dim in shape:
                count *= dim
            value: float | int = 0.5 if datatype.startswith(("FP", "BF")) else 1
            tensors.append(
                {"name": name, "datatype": datatype, "shape": list(shape), "data": [value] * count}
            )
        return cls(model, json.dumps({"inputs": tensors}).encode())


@dataclass(frozen=True)
class Startup:
    """Seconds from launch to /v2/health/ready and to the first successful inference."""

    ready_s: float | None
    first_infer_s: float | None


def wait_first_infer(
    proc: subprocess.Popen[bytes],
    http_url: str,
    probe: Probe,
    *,
    started: float,
    timeout_s: float = 180,
    poll_s: float = 0.05,
) -> Startup:
    """Poll readiness, then the probe, until it answers 200 with outputs (or the process dies)."""
    base = f"http://{http_url}"
    ready: float | None = None
    while time.perf_counter() - started < timeout_s and proc.poll() is None:
        if ready is None and _post(f"{base}/v2/health/ready", None, 0.5) is not None:
            ready = time.perf_counter() - started
        if ready is not None:
            answer = _post(f"{base}/v2/models/{probe.model}/infer", probe.body, 5)
            if answer is not None and b'"outputs"' in answer:
                return Startup(ready, time.perf_counter() - started)
        time.sleep(poll_s)
    return Startup(ready, None)


def _post(url: str, body: bytes | None, timeout_s: float) -> bytes | None:
    """The body of a 200 answer (GET when ``body`` is None), None on any failure."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.read() if answer.status == 200 else None
    except (OSError, ValueError):  # refused, reset, timeout, HTTP errors (URLError is an OSError)
        return None


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its descendants, reaped children included."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (for 'everything else' accounting)."""
    t = psutil.cpu_times()
    # Linux counts guest time inside user time, so the fields are named rather than summed.
    busy = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0)
    return float(busy + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0))


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (perf_analyzer runs)."""
    times = os.times()
    return times.children_user + times.children_system
