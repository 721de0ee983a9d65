"""Cold start: seconds from process launch to the first successful inference, median of N runs.

    python -m inferd.benchmarks.cold_start --servers inferd-examples,kserve --runs 5 \\
        --out results/cold

inferd-examples is `python -m inferd serve` on the bundled examples, probed with `simple`;
inferd serves $PEERS/models/repo and the peers $PEERS/models, all probed with `tiny` (JSON
over HTTP, polled every 50 ms after /v2/health/ready). The servers take turns run by run, so
that a slow patch of a shared machine does not land on one server only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from inferd.benchmarks import peers, ports, procs, report, servers


def measure(server: servers.Server, timeout_s: float) -> dict[str, float | None]:
    """One launch: ready and first-inference times, then stop; the log's tail on failure."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = procs.launch(server.argv, cwd=server.cwd, env=server.env, log=log)
        try:
            up = procs.wait_first_infer(
                proc, server.http_url, server.probe, started=started, timeout_s=timeout_s
            )
        finally:
            procs.stop(proc)
        if up.first_infer_s is None:
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-15:]
            print(f"{server.name}: no successful inference; its log ends with:", *tail, sep="\n  ")
    return {"ready_s": up.ready_s, "first_infer_s": up.first_infer_s}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers",
        default="inferd-examples,kserve",
        help=f"comma-separated, of {','.join(servers.NAMES)}",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120, help="per launch, seconds")
    parser.add_argument(
        "--peers", default=None, help=f"peers directory (default: $PEERS or {peers.DEFAULT_PEERS})"
    )
    parser.add_argument("--out", type=Path, default=None, help="write cold_start.json/.md here")
    args = parser.parse_args(argv)
    names = [n for n in args.servers.split(",") if n]
    if not names or not set(names) <= set(servers.NAMES):
        parser.error(f"servers are {servers.NAMES}")
    try:
        needs_peers = any(n != "inferd-examples" for n in names)
        peers_path = peers.peers_dir(args.peers) if needs_peers else None
        with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
            runs = _run(names, args.runs, peers_path, Path(tmp), args.timeout)
    except peers.MissingTool as exc:
        sys.exit(str(exc))
    table = report.startup_table(runs)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cold_start.json").write_text(json.dumps(runs, indent=1) + "\n")
        (args.out / "cold_start.md").write_text(
            f"# Cold start, {time.strftime('%Y-%m-%d')}\n\n{table}"
        )
    return 0 if all(r["first_infer_s"] is not None for rs in runs.values() for r in rs) else 1


def _run(
    names: list[str], count: int, peers_path: Path | None, workdir: Path, timeout_s: float
) -> dict[str, list[dict[str, float | None]]]:
    runs: dict[str, list[dict[str, float | None]]] = {n: [] for n in names}
    for i in range(count):
        for name in names:
            port = ports.free_port_block(3)
            server = servers.build(name, peers_path, port, workdir / name)
            result = measure(server, timeout_s)
            runs[name].append(result)
            print(json.dumps({"server": name, "run": i + 1, **result}), flush=True)
            time.sleep(1)  # let the previous server's exit settle before the next launch
    return runs


if __name__ == "__main__":
    sys.exit(main())
