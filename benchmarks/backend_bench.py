"""What the backend benchmarks share (pytorch_bench, openvino_bench): serve a repository with
inferd, sweep perf_analyzer over HTTP over its models at --concurrency, and print a table of
each model's infer/s next to the framework's own in-process figures, and as a ratio to a
reference model served alike by the same server where there is one. A benchmark, never a test:
nothing here asserts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from inferd.benchmarks import compare, peers, perf_sweep, ports, servers
from inferd.benchmarks.procs import Probe


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True, help="results folder (created)")
    parser.add_argument("--startup-timeout", type=float, default=120)
    perf_sweep.add_sweep_arguments(parser)
    parser.set_defaults(concurrency=[1, 16])
    return parser


def samples_per_s(call: Callable[[], object], batch: int, seconds: float) -> float:
    """Samples per second of back-to-back `call`s of `batch` samples each, after 20 to warm up
    (frameworks optimise over the first calls)."""
    for _ in range(20):
        call()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def serve_and_compare(
    args: argparse.Namespace,
    models: list[str],
    reference: str | None,
    raw: Mapping[str, float],
    probe: Probe,
) -> int:
    """Serve `args.out`/repo (written by the caller) and sweep `models`; `raw`: label ->
    samples/s measured in-process; `reference`: the model the ratios are to (None: no
    ratios). Writes table.md and results.json to `args.out`; returns the exit status."""
    args.models, args.protocols = models, ["http"]
    found = peers.peers_dir(args.peers, required=False)
    pa = peers.find_perf_analyzer(args.perf_analyzer, found if found.is_dir() else None)
    if pa is None:
        sys.exit(f"perf_analyzer not found: {peers.SETUP_HINT}")
    for folder in ("logs", "work"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    port = ports.free_port_block(3)
    base = servers.inferd(port, args.out / "work", repository=args.out / "repo")
    server = servers.Server("inferd", [*base.argv, "--log-level=warning"], base.cwd, port, probe)
    _, cells = compare.run_server(server, args, pa, found)
    ref = {c.concurrency: c.infer_per_s for c in cells if c.model == reference}
    versus = f"vs `{reference}` served alike" if reference else ""
    lines = [
        f"| measure | samples/s | p99 ms | {versus} |",
        "|---|---|---|---|",
        *(f"| {label} | {value:,.0f} | | |" for label, value in raw.items()),
        *(
            f"| inferd `{c.model}`, concurrency {c.concurrency} | {c.infer_per_s:,.0f} "
            f"| {c.p99_ms} | {_ratio(c.infer_per_s, ref.get(c.concurrency))} |"
            for c in cells
            if c.infer_per_s
        ),
    ]
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    results = {
        "raw": dict(raw),
        "inferd": [[c.model, c.concurrency, c.infer_per_s, c.p99_ms] for c in cells],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    return 1 if not cells or any(c.error for c in cells) else 0


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else ""
