"""Headless locust load test of one model over one protocol, with a summary at the end.

    python -m inferd.benchmarks.loadgen --protocol http --model simple --users 16 --duration 30s
    python -m inferd.benchmarks.loadgen --protocol grpc-stream --host 127.0.0.1:8001 \\
        --model tiny --shape input:1,16 --users 8 --rate 500 --duration 1m

Protocols: http (binary tensors), http-json, grpc (unary), grpc-stream. Locust runs in a
subprocess (it monkey-patches the interpreter with gevent) and prints its stats table every
2 s while it runs. Exit status 0 only when requests were made and none failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USERS = {
    "http": "HttpBinaryUser",
    "http-json": "HttpJsonUser",
    "grpc": "GrpcUser",
    "grpc-stream": "GrpcStreamUser",
}


def locust_command(args: argparse.Namespace, summary: Path) -> list[str]:
    grpc = args.protocol.startswith("grpc")
    host = args.host or ("127.0.0.1:8001" if grpc else "127.0.0.1:8000")
    if not grpc and "://" not in host:
        host = f"http://{host}"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-H", host]
    cmd += ["-u", str(args.users), "-r", str(args.spawn_rate or args.users)]
    cmd += ["-t", args.duration]
    if args.processes != 1:  # even 1 would make locust fork a worker under a master
        cmd += ["--processes", str(args.processes)]
    if args.quiet:
        cmd.append("--only-summary")
    cmd += [USERS[args.protocol], "--model", args.model, "--target-rate", str(args.rate)]
    cmd += ["--summary-file", str(summary)]
    if args.model_version:
        cmd += ["--model-version", args.model_version]
    if args.input_data:
        cmd += ["--input-data", str(args.input_data)]
    for shape in args.shape:
        cmd += ["--shape", shape]
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=sorted(USERS), default="http")
    parser.add_argument(
        "--host", default=None, help="host:port (default 127.0.0.1:8000 for HTTP, :8001 for gRPC)"
    )
    parser.add_argument("--model", default="simple")
    parser.add_argument("--model-version", default="")
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        help="NAME:d1,d2: full request shape of an input (repeatable)",
    )
    parser.add_argument(
        "--input-data",
        type=Path,
        default=None,
        help="perf_analyzer-style JSON of input values (default: random)",
    )
    parser.add_argument("--users", type=int, default=1, help="concurrent users (default 1)")
    parser.add_argument("--spawn-rate", type=float, default=0, help="users/s (default: all in 1 s)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="total infer/s to aim at (default 0: closed loop, back to back)",
    )
    parser.add_argument("--duration", default="10s", help="locust run time: 30s, 2m, ...")
    parser.add_argument(
        "--processes", type=int, default=1, help="locust processes; one is about one core of load"
    )
    parser.add_argument("--summary", type=Path, default=None, help="write the summary JSON here")
    parser.add_argument("--quiet", action="store_true", help="no periodic stats table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        totals = Path(tmp) / "summary.json"
        cmd = locust_command(args, totals)
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd).returncode
        summary = {
            "protocol": args.protocol,
            "model": args.model,
            "users": args.users,
            "locust_exit": rc,
            "requests": 0,
            "failures": 0,
        }
        if totals.exists():
            summary.update(json.loads(totals.read_text()))
    print(json.dumps(summary))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if rc == 0 and summary["requests"] > 0 and summary["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
