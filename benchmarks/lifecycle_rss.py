"""Memory over repeated model load/unload: the RSS of one inferd server process across N cycles.

Starts `inferd serve --model-control-mode=explicit` on a repository (default: the bundled
examples), then `--cycles` times: load the model (optionally sending its files with the
request, as `file:` parameters), run a few inferences, unload it, and read the server's RSS
from /proc (Linux). Growth is measured from the RSS after the first cycle, which pays one-off
costs (importing onnxruntime, starting the loader threads), to the RSS after the last one.
The goal is at most 5 %. Prints a summary and writes every sample as JSON.

    .venv/bin/python benchmarks/lifecycle_rss.py                       # digits, 100 cycles
    .venv/bin/python benchmarks/lifecycle_rss.py --model simple --files --cycles 200
    .venv/bin/python benchmarks/lifecycle_rss.py --repository R --model M \
        --server-arg=--backend-config=python,isolation=process   # a python model in stubs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import triton_to_np_dtype

from inferd.benchmarks.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
GOAL_PERCENT = 5.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(
    repository: Path, port: int, log: Path, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "inferd",
        "serve",
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1",
        f"--http-port={port}",
        "--grpc-address=127.0.0.1",
        "--grpc-port=0",
        "--allow-metrics=false",
        "--log-level=warning",
        *(extra or []),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if client.is_server_ready():
                    return process
            except Exception:
                pass  # not listening yet
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.1)
    finally:
        client.close()


def model_files(model_dir: Path) -> tuple[str, dict[str, bytes]]:
    """The model's config as JSON and its files as `file:` parameters (as a client sends)."""
    from google.protobuf import json_format

    from inferd.repository.config import read_config

    config = json_format.MessageToJson(read_config(model_dir), preserving_proto_field_name=True)
    files = {
        f"file:{path.relative_to(model_dir).as_posix()}": path.read_bytes()
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name != "config.pbtxt"
    }
    return config, files


def inputs_for(metadata: dict[str, Any]) -> list[httpclient.InferInput]:
    inputs = []
    for tensor in metadata["inputs"]:
        shape = [1 if d < 0 else d for d in tensor["shape"]]
        if tensor["datatype"] == "BYTES":
            data = np.full(shape, b"x", dtype=object)
        else:
            data = np.ones(shape, dtype=triton_to_np_dtype(tensor["datatype"]))
        item = httpclient.InferInput(tensor["name"], shape, tensor["datatype"])
        item.set_data_from_numpy(data)
        inputs.append(item)
    return inputs


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = start_server(args.repository, port, args.out.with_suffix(".log"), args.server_arg)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    config, files = model_files(args.repository / args.model) if args.files else (None, None)
    samples: list[int] = [rss_bytes(process.pid)]
    started = time.monotonic()
    try:
        for cycle in range(args.cycles):
            client.load_model(args.model, config=config, files=files)
            inputs = inputs_for(client.get_model_metadata(args.model))
            for _ in range(args.infers):
                client.infer(args.model, inputs)
            client.unload_model(args.model)
            samples.append(rss_bytes(process.pid))
            if (cycle + 1) % 25 == 0:
                print(f"cycle {cycle + 1}: RSS {samples[-1] / 2**20:.1f} MiB", flush=True)
    finally:
        client.close()
        process.terminate()
        process.wait(30)
    first, last = samples[1], samples[-1]
    half = samples[len(samples) // 2]
    return {
        "model": args.model,
        "files_in_request": args.files,
        "cycles": args.cycles,
        "infers_per_cycle": args.infers,
        "seconds": round(time.monotonic() - started, 1),
        "rss_mib_before_first_load": round(samples[0] / 2**20, 1),
        "rss_mib_after_first_cycle": round(first / 2**20, 1),
        "rss_mib_after_last_cycle": round(last / 2**20, 1),
        "rss_mib_max": round(max(samples) / 2**20, 1),
        "growth_percent": round(100 * (last - first) / first, 2),
        "growth_percent_second_half": round(100 * (last - half) / half, 2),
        "goal_percent": GOAL_PERCENT,
        "rss_bytes_per_cycle": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "examples")
    parser.add_argument("--model", default="digits", help="model to cycle (default digits)")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--infers", type=int, default=5, help="inferences per cycle")
    parser.add_argument(
        "--files", action="store_true", help="send config and model files with each load"
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra flag for `inferd serve` (repeatable), e.g. "
        "--server-arg=--backend-config=python,isolation=process",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "lifecycle_rss.json")
    args = parser.parse_args()
    result = run(args)
    args.out.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k != "rss_bytes_per_cycle"}
    print(json.dumps(summary, indent=1))
    verdict = "within" if result["growth_percent"] <= GOAL_PERCENT else "ABOVE"
    print(f"RSS growth {result['growth_percent']} % over {args.cycles} cycles: {verdict} the goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
