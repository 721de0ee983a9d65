"""Comparison runner: inferd and the peer servers, one after the other, on the same models.

    python -m inferd.benchmarks.compare --servers inferd,triton-py,kserve,mlserver \\
        --protocols http,grpc --models tiny --concurrency 1,4,16,64 --out results/compare

For each server: pick free ports, launch it (inferd from this environment on
$PEERS/models/repo, the peers from $PEERS/scripts), time launch -> first inference, run the
perf_analyzer sweep (model x protocol x concurrency) recording the server process tree's CPU,
stop it. Writes OUT/table.md, OUT/results.json, OUT/*.png and the servers' logs in OUT/logs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from inferd.benchmarks import peers, perf_sweep, ports, procs, report, servers
from inferd.benchmarks.perf_sweep import Cell, SweepOptions

# inferd-examples has no tiny model to compare; inferd-py serves triton-py's own repository.
ALL_SERVERS = ["inferd", "inferd-py", "inferd-mlserver", *servers.PEERS]


def run_server(
    server: servers.Server, args: argparse.Namespace, pa: str, peers_path: Path
) -> tuple[dict[str, float | None], list[Cell]]:
    """Launch, wait for the first inference, sweep, stop. Returns (startup, cells)."""
    log_path = args.out / "logs" / f"{server.name}.log"
    print(
        f"== {server.name}: starting on {server.http_url} (gRPC {server.grpc_url}), log {log_path}"
    )
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = procs.launch(server.argv, cwd=server.cwd, env=server.env, log=log)
        try:
            up = procs.wait_first_infer(
                proc, server.http_url, server.probe, started=started, timeout_s=args.startup_timeout
            )
            startup = {"ready_s": up.ready_s, "first_infer_s": up.first_infer_s}
            if up.first_infer_s is None:
                print(f"== {server.name}: no successful inference; see {log_path}")
                return startup, []
            print(f"== {server.name}: first inference after {up.first_infer_s:.2f} s")
            urls = {"http": server.http_url, "grpc": server.grpc_url}
            pa_log = args.out / "logs" / f"perf_analyzer-{server.name}.log"
            pa_log.unlink(missing_ok=True)  # the sweep appends; start afresh in a reused folder
            cells: list[Cell] = []
            for model in args.models:
                data = peers.input_data(peers_path, model)
                opts = SweepOptions(
                    perf_analyzer=pa,
                    model=model,
                    concurrency=args.concurrency,
                    interval_ms=args.interval_ms,
                    stability_pct=args.stability,
                    max_trials=args.max_trials,
                    input_data=str(data) if data else None,
                    http_json=server.http_json,
                    extra_args=args.pa_arg,
                    log=pa_log,
                )
                cells += perf_sweep.sweep(
                    opts,
                    {p: urls[p] for p in args.protocols},
                    server=server.name,
                    server_pid=proc.pid,
                    alive=lambda: proc.poll() is None,
                )
            if proc.poll() is not None:
                print(f"== {server.name}: exited with {proc.returncode} during the sweep")
            return startup, cells
        finally:
            procs.stop(proc)


def write_results(
    out: Path,
    startups: dict[str, list[dict[str, float | None]]],
    cells: list[Cell],
    argv: list[str],
) -> None:
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": argv,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    results = {"meta": meta, "startup": startups, "cells": [c.as_dict() for c in cells]}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plots = report.write_plots(cells, out)
    text = [
        f"# inferd vs peers, {meta['date']}",
        "",
        f"{meta['cpus']} CPUs, servers and perf_analyzer on the same machine; batch 1, sync "
        "requests; latency is client-side; CPU in cores (CPU s per wall s) over each cell.",
        f"Command: `{' '.join(argv)}`",
        "",
        "## Launch to first inference (one launch per server)",
        "",
        report.startup_table(startups),
        "## perf_analyzer sweep",
        "",
        report.perf_table(cells),
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
    ]
    (out / "table.md").write_text("\n".join(text))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers",
        type=_names,
        default=ALL_SERVERS,
        help=f"comma-separated, in run order (default {','.join(ALL_SERVERS)})",
    )
    parser.add_argument(
        "--protocols", type=_names, default=["http", "grpc"], help="http and/or grpc (default both)"
    )
    parser.add_argument(
        "--models",
        type=_names,
        default=["tiny"],
        help="models of $PEERS/models (tiny, medium); default tiny",
    )
    parser.add_argument("--out", type=Path, required=True, help="results folder (created)")
    parser.add_argument(
        "--startup-timeout", type=float, default=180, help="seconds to the first inference"
    )
    parser.add_argument(
        "--inferd-arg",
        action="append",
        default=[],
        help="extra flag for `inferd serve` (repeatable), e.g. --inferd-arg=--log-level=warning",
    )
    parser.add_argument(
        "--response-cache",
        type=int,
        default=0,
        metavar="BYTES",
        help="turn the response cache on (this many bytes) and enable it in every model: "
        "perf_analyzer sends the same tensors each time, so this measures cache hits; an "
        "--inferd-arg=--cache-config=... replaces inferd's local cache (Redis)",
    )
    perf_sweep.add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [s for s in args.servers if s not in ALL_SERVERS]
    if unknown or not set(args.protocols) <= {"http", "grpc"}:
        parser.error(f"servers are {ALL_SERVERS}, protocols http and grpc")
    try:
        peers_path = peers.peers_dir(args.peers)
        pa = peers.find_perf_analyzer(args.perf_analyzer, peers_path)
        if pa is None:
            raise peers.MissingTool(f"perf_analyzer not found: {peers.SETUP_HINT}")
        (args.out / "logs").mkdir(parents=True, exist_ok=True)
        for name in args.servers:  # fail now, not after the first servers' sweeps
            servers.build(
                name, peers_path, 0, args.out / "work" / name, args.inferd_arg, args.response_cache
            )
    except (peers.MissingTool, ValueError) as exc:
        sys.exit(str(exc))
    startups: dict[str, list[dict[str, float | None]]] = {}
    cells: list[Cell] = []
    for name in args.servers:
        # Ports are picked just before each launch, so that they are still free.
        port = ports.free_port_block(3)
        workdir = args.out / "work" / name
        server = servers.build(
            name, peers_path, port, workdir, args.inferd_arg, args.response_cache
        )
        startup, server_cells = run_server(server, args, pa, peers_path)
        startups[server.name] = [startup]
        cells += server_cells
        # Rewritten after each server: a partial table survives an interrupted run.
        write_results(
            args.out, startups, cells, ["python -m inferd.benchmarks.compare", *sys.argv[1:]]
        )
    print(report.perf_table(cells))
    print(f"results in {args.out}/table.md")
    failed_start = any(runs[0]["first_infer_s"] is None for runs in startups.values())
    return 1 if failed_start or any(c.error for c in cells) else 0


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    sys.exit(main())
