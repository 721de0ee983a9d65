"""perf_analyzer concurrency sweep over HTTP and gRPC, one cell per (protocol, concurrency).

Example (a server already running; perf_analyzer from --perf-analyzer, $PERF_ANALYZER, PATH or
$PEERS/pa-bin):

    python -m inferd.benchmarks.perf_sweep --model tiny --concurrency 1,4,16,64 \\
        --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \\
        --input-data "$PEERS/models/input-tiny.json" --out results/sweep

Latencies are client-side (perf_analyzer's CSV). With --server-pid, the CPU time of that process
tree over each cell is recorded too.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inferd.benchmarks import peers, procs, report

JSON_TENSORS = ("--input-tensor-format", "json", "--output-tensor-format", "json")
# Stabilisation settings: the requested one first; if perf_analyzer cannot settle, accept
# 3 windows whatever they vary by (the cell is then marked unstable), as the peers' runs did.
LOOSE = ("-s", "1000", "-r", "3")


@dataclass(frozen=True)
class SweepOptions:
    """What every cell shares."""

    perf_analyzer: str
    model: str
    concurrency: Sequence[int]
    interval_ms: int = 3000
    stability_pct: int = 25
    max_trials: int = 6
    input_data: str | None = None
    shapes: Sequence[str] = ()
    http_json: bool = False
    extra_args: Sequence[str] = ()
    timeout_s: float = 300
    log: Path | None = None  # perf_analyzer's full output (server-side breakdown) goes here


@dataclass
class Cell:
    """One perf_analyzer measurement. CPU figures are cores (CPU seconds per wall second)."""

    protocol: str
    tensors: str
    model: str
    concurrency: int
    server: str = ""
    infer_per_s: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    stable: bool = True
    server_cpu_cores: float | None = None
    server_cpu_us_per_infer: float | None = None
    pa_cpu_cores: float | None = None
    other_cpu_cores: float | None = None
    wall_s: float = 0.0
    error: str | None = None
    command: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def command(
    opts: SweepOptions, protocol: str, url: str, concurrency: int, csv_path: Path
) -> list[str]:
    """The perf_analyzer command line of one cell, before the stabilisation flags."""
    cmd = [opts.perf_analyzer, "-m", opts.model, "-u", url, "-i", protocol, "-b", "1"]
    # An explicit end makes sync mode open one thread per request in flight (else max 16).
    cmd += ["--concurrency-range", f"{concurrency}:{concurrency}"]
    cmd += ["-p", str(opts.interval_ms), "-f", str(csv_path)]
    if opts.input_data:
        cmd += ["--input-data", opts.input_data]
    for shape in opts.shapes:
        cmd += ["--shape", shape]
    if protocol == "http" and opts.http_json:
        cmd += JSON_TENSORS
    return cmd + list(opts.extra_args)


def run_cell(
    opts: SweepOptions,
    protocol: str,
    url: str,
    concurrency: int,
    *,
    server_pid: int | None = None,
    log: Callable[[str], None] = print,
) -> Cell:
    """Run perf_analyzer for one cell; failures are recorded in ``Cell.error``, not raised."""
    tensors = "json" if protocol == "http" and opts.http_json else "binary"
    cell = Cell(protocol, tensors, opts.model, concurrency)
    with tempfile.TemporaryDirectory(prefix="perf-sweep-") as tmp:
        csv_path = Path(tmp) / "cell.csv"
        base = command(opts, protocol, url, concurrency, csv_path)
        strict = ("-s", str(opts.stability_pct), "-r", str(opts.max_trials))
        for stab in (strict, LOOSE):
            cell.command = [*base, *stab]
            output = _measure(cell, server_pid, opts.timeout_s)
            if opts.log:
                with opts.log.open("a") as f:
                    f.write(f"$ {' '.join(cell.command)}\n{output}\n")
            if csv_path.exists():
                _read_csv(cell, csv_path)
                cell.stable = stab == strict
                break
        else:
            lines = [line for line in output.splitlines() if line.strip()]
            cell.error = lines[-1] if lines else "perf_analyzer wrote no results"
    log(_progress(cell))
    return cell


def _measure(cell: Cell, server_pid: int | None, timeout_s: float) -> str:
    """Run ``cell.command`` and account the CPU of the server, perf_analyzer and the rest."""
    busy0, pa0 = procs.machine_busy_s(), procs.children_cpu_s()
    server0 = procs.tree_cpu_s(server_pid) if server_pid else 0.0
    started = time.perf_counter()
    try:
        done = subprocess.run(cell.command, capture_output=True, text=True, timeout=timeout_s)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        output = f"perf_analyzer ran past {timeout_s:.0f} s"
    wall = time.perf_counter() - started
    pa = procs.children_cpu_s() - pa0
    cell.wall_s = round(wall, 2)
    cell.pa_cpu_cores = round(pa / wall, 2)
    if server_pid:
        server = procs.tree_cpu_s(server_pid) - server0
        cell.server_cpu_cores = round(server / wall, 2)
        other = procs.machine_busy_s() - busy0 - server - pa
        cell.other_cpu_cores = round(max(0.0, other) / wall, 2)
    return output


def _read_csv(cell: Cell, path: Path) -> None:
    with path.open() as f:
        row = next(csv.DictReader(f))
    cell.infer_per_s = float(row["Inferences/Second"])
    cell.p50_ms = int(row["p50 latency"]) / 1000
    cell.p90_ms = int(row["p90 latency"]) / 1000
    cell.p99_ms = int(row["p99 latency"]) / 1000
    if cell.server_cpu_cores is not None and cell.infer_per_s:
        # Per inference at the measured rate: a server's efficiency, whatever its throughput.
        cell.server_cpu_us_per_infer = round(cell.server_cpu_cores / cell.infer_per_s * 1e6, 1)


def _progress(cell: Cell) -> str:
    head = f"{cell.server or '-'} {cell.protocol}/{cell.tensors} {cell.model} c={cell.concurrency}"
    if cell.error:
        return f"{head}: FAILED: {cell.error}"
    cpu = "" if cell.server_cpu_cores is None else f", server {cell.server_cpu_cores} cores"
    note = "" if cell.stable else " (unstable)"
    rate = f"{cell.infer_per_s:.0f} infer/s, p50 {cell.p50_ms} ms, p99 {cell.p99_ms} ms"
    return f"{head}: {rate}{cpu}{note}"


def sweep(
    opts: SweepOptions,
    urls: Mapping[str, str],
    *,
    server: str = "",
    server_pid: int | None = None,
    alive: Callable[[], bool] = lambda: True,
    log: Callable[[str], None] = print,
) -> list[Cell]:
    """Every concurrency for every protocol in ``urls`` (protocol -> host:port)."""
    cells: list[Cell] = []
    for protocol, url in urls.items():
        for concurrency in opts.concurrency:
            if not alive():
                return cells
            cell = run_cell(opts, protocol, url, concurrency, server_pid=server_pid, log=log)
            cell.server = server
            cells.append(cell)
    return cells


def write(cells: Sequence[Cell], out: Path, stem: str = "sweep") -> None:
    """``stem``.json (every field) and ``stem``.csv (one row per cell)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [cell.as_dict() for cell in cells]
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")
    with (out / f"{stem}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=[k for k in rows[0] if k != "command"] if rows else []
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v for k, v in row.items() if k != "command"})


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared with compare.py."""
    parser.add_argument(
        "--concurrency",
        type=int_list,
        default=[1, 4, 16, 64],
        help="comma-separated concurrency levels (default 1,4,16,64)",
    )
    parser.add_argument(
        "--interval-ms",
        type=int,
        default=3000,
        help="perf_analyzer measurement window (-p), default 3000",
    )
    parser.add_argument(
        "--stability",
        type=int,
        default=25,
        help="perf_analyzer -s: windows must agree within this %% (default 25)",
    )
    parser.add_argument(
        "--max-trials",
        type=int,
        default=6,
        help="perf_analyzer -r: windows before giving up (then 3 loose windows)",
    )
    parser.add_argument(
        "--pa-arg",
        action="append",
        default=[],
        help="extra perf_analyzer flag (repeatable), e.g. --pa-arg=--async",
    )
    parser.add_argument(
        "--perf-analyzer",
        default=None,
        help="perf_analyzer binary (default: $PERF_ANALYZER, PATH, $PEERS/pa-bin)",
    )
    parser.add_argument(
        "--peers", default=None, help=f"peers directory (default: $PEERS or {peers.DEFAULT_PEERS})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--http-url", default=None, help="host:port of the HTTP endpoint")
    parser.add_argument("--grpc-url", default=None, help="host:port of the gRPC endpoint")
    parser.add_argument(
        "--input-data",
        default=None,
        help="perf_analyzer --input-data (FILE.json, DIR, zero or random)",
    )
    parser.add_argument("--shape", action="append", default=[], help="NAME:d1,d2 (repeatable)")
    parser.add_argument("--http-json", action="store_true", help="JSON tensors over HTTP")
    parser.add_argument(
        "--server-pid", type=int, default=None, help="record this process tree's CPU time per cell"
    )
    parser.add_argument("--out", type=Path, default=None, help="write sweep.json/.csv here")
    add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    urls = {p: u for p, u in (("http", args.http_url), ("grpc", args.grpc_url)) if u}
    if not urls:
        parser.error("give --http-url and/or --grpc-url")
    pa = peers.find_perf_analyzer(args.perf_analyzer, peers.peers_dir(args.peers, required=False))
    if pa is None:
        sys.exit(f"perf_analyzer not found: set PERF_ANALYZER, or {peers.SETUP_HINT}")
    opts = SweepOptions(
        perf_analyzer=pa,
        model=args.model,
        concurrency=args.concurrency,
        interval_ms=args.interval_ms,
        stability_pct=args.stability,
        max_trials=args.max_trials,
        input_data=args.input_data,
        shapes=args.shape,
        http_json=args.http_json,
        extra_args=args.pa_arg,
    )
    cells = sweep(opts, urls, server_pid=args.server_pid)
    if args.out:
        write(cells, args.out)
    print(report.perf_table(cells))
    return 1 if any(cell.error for cell in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
