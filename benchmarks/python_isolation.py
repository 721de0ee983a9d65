"""Python models in the server's process or in stub processes: a model whose execute() spends
its time in pure Python (it holds the GIL), served with several instances, measured with
perf_analyzer. In the server's process its instances take turns on one GIL; in stub processes
(`--backend-config=python,isolation=process`) each has its own, as on Triton, which serves
the same repository when the peers are set up (`triton-py`).

    python -m inferd.benchmarks.python_isolation --out /tmp/isolation

Writes the repository (model "spin", `--instances` instances of a loop of `--loop` steps per
request), then for each server in turn: launch on 127.0.0.1, first inference, perf_analyzer at
each concurrency, stop. Prints a table and writes it (table.md, results.json) to --out. With
`--bls`, the model measured is "relay" (as many instances), which calls "spin" through BLS for
each request and answers what it answered. This is a benchmark, never a test: nothing here
asserts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from inferd.benchmarks import compare, peers, perf_sweep, ports, report, servers
from inferd.benchmarks.perf_sweep import Cell
from inferd.benchmarks.procs import Probe
from inferd.repository.scheduling import INLINE_PARAMETER

MODEL = "spin"
INLINE = "inferd-inline"
# Triton's stub ignores PYTHONPATH: the model adds the site-packages the peer's numpy is in.
SPIN = """
import os
import sys

if os.environ.get("SPIN_SITE_PACKAGES"):
    sys.path.insert(0, os.environ["SPIN_SITE_PACKAGES"])

import triton_python_backend_utils as pb_utils

LOOP = {loop}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            total = 0
            for step in range(LOOP):  # pure Python: the GIL is held throughout
                total += step
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", tensor.as_numpy())])
            )
        return responses
"""

SPIN_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}]
instance_group [{{ count: {instances} kind: KIND_CPU }}]
"""

RELAY = "relay"
# Calls spin through BLS for each request (Triton's python backend API).
RELAY_SOURCE = """
import os
import sys

if os.environ.get("SPIN_SITE_PACKAGES"):
    sys.path.insert(0, os.environ["SPIN_SITE_PACKAGES"])

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            answer = pb_utils.InferenceRequest(
                model_name="spin", requested_output_names=["OUTPUT0"], inputs=[tensor]
            ).exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            output = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0")
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", output.as_numpy())])
            )
        return responses
"""


def write_repository(
    root: Path, loop: int, instances: int, bls: bool = False, inline_us: int = 0
) -> Path:
    """`inline_us`: the configs ask inferd to run batches measured that short on its event
    loop (INLINE_PARAMETER; Triton ignores parameters it does not know)."""
    models = {MODEL: SPIN.format(loop=loop), **({RELAY: RELAY_SOURCE} if bls else {})}
    inline = (
        f'parameters {{ key: "{INLINE_PARAMETER}" value {{ string_value: "{inline_us}" }} }}\n'
        if inline_us
        else ""
    )
    for name, source in models.items():
        model = root / name
        (model / "1").mkdir(parents=True, exist_ok=True)
        (model / "1" / "model.py").write_text(source)
        config = SPIN_CONFIG.format(name=name, instances=instances) + inline
        (model / "config.pbtxt").write_text(config)
    return root


def build(
    name: str, repo: Path, peers_path: Path | None, workdir: Path, model: str = MODEL
) -> servers.Server:
    probe = Probe.of(model, {"INPUT0": ("FP32", (16,))})
    port = ports.free_port_block(3)
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "triton-py":
        assert peers_path is not None
        server = servers.triton_py(peers_path, port, workdir)
        site = next(peers_path.glob("venv-pytriton/lib/python*/site-packages"))
        return servers.Server(
            name,
            [*server.argv, f"--model-repository={repo}"],
            workdir,
            port,
            probe,
            {**server.env, "SPIN_SITE_PACKAGES": str(site)},
        )
    isolation = "thread" if name == INLINE else name.removeprefix("inferd-")
    args = [f"--backend-config=python,isolation={isolation}", "--log-level=warning"]
    server = servers.inferd(port, workdir, repository=repo, extra_args=args)
    return servers.Server(name, server.argv, workdir, port, probe)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (created)")
    parser.add_argument("--loop", type=int, default=20000, help="loop steps per request")
    parser.add_argument("--instances", type=int, default=2, help="instances of the model")
    parser.add_argument(
        "--servers",
        default="inferd-thread,inferd-process,triton-py",
        help=(
            "comma-separated, of inferd-thread, inferd-inline (in the server's process, short "
            f"batches on its event loop: {INLINE_PARAMETER}), inferd-process, triton-py "
            "(needs the peers)"
        ),
    )
    parser.add_argument(
        "--inline-us",
        type=int,
        default=250,
        help=f"{INLINE}: its models' {INLINE_PARAMETER} (µs of CPU a batch may take)",
    )
    parser.add_argument("--protocols", default="http", help="http and/or grpc")
    parser.add_argument(
        "--bls", action="store_true", help='measure "relay", which calls spin through BLS'
    )
    parser.add_argument("--startup-timeout", type=float, default=120)
    perf_sweep.add_sweep_arguments(parser)
    parser.set_defaults(concurrency=[2, 8])
    args = parser.parse_args(argv)
    model = RELAY if args.bls else MODEL
    args.models = [model]
    args.protocols = args.protocols.split(",")
    names = args.servers.split(",")
    found = peers.peers_dir(args.peers, required=False)
    peers_path = found if found.is_dir() else None
    pa = peers.find_perf_analyzer(args.perf_analyzer, peers_path)
    if pa is None:
        sys.exit(f"perf_analyzer not found: {peers.SETUP_HINT}")
    if "triton-py" in names and peers_path is None:
        sys.exit(f"triton-py needs the peers: {peers.SETUP_HINT}")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    repo = write_repository(args.out / "repo", args.loop, args.instances, args.bls)
    if INLINE in names:
        inline_repo = write_repository(
            args.out / "repo-inline", args.loop, args.instances, args.bls, args.inline_us
        )
    startups: dict[str, list[dict[str, float | None]]] = {}
    cells: list[Cell] = []
    for name in names:
        served = inline_repo if name == INLINE else repo
        server = build(name, served, peers_path, args.out / "work" / name, model)
        startup, server_cells = compare.run_server(server, args, pa, peers_path or Path())
        startups[name] = [startup]
        cells += server_cells
        compare.write_results(
            args.out, startups, cells, ["python -m inferd.benchmarks.python_isolation"]
        )
    print(report.perf_table(cells))
    return 1 if any(c.error for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
