"""The FIL backend's serving cost: a gradient-boosted forest (XGBoost, binary classifier)
served by inferd (perf_analyzer over HTTP), against the same forest run in-process by
Treelite's GTIL, which the backend calls, with the server's thread count. No peer here runs FIL
(the peers' Triton has only the python backend).

    python -m inferd.benchmarks.fil_bench --out /tmp/filbench

Writes the repository (model "forest": FP32 [batch, --features], --trees trees of depth 6,
dynamic batching up to 64, one CPU instance), measures GTIL at batch 1 and 64, then serves it
and sweeps perf_analyzer at --concurrency. Prints a table (and writes it, with results.json,
to --out). Needs the fil extra and XGBoost (test extra) to train the forest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import treelite
import xgboost as xgb

from inferd.benchmarks import backend_bench
from inferd.benchmarks.procs import Probe

MODEL = "forest"
CONFIG = """
backend: "fil"
max_batch_size: 64
input [{{ name: "input__0" data_type: TYPE_FP32 dims: [ {features} ] }}]
output [{{ name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] }}]
instance_group [{{ count: 1 kind: KIND_CPU }}]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
parameters {{ key: "model_type" value: {{ string_value: "xgboost_json" }} }}
parameters {{ key: "output_class" value: {{ string_value: "true" }} }}
"""


def write_repository(repo: Path, features: int, trees: int) -> Path:
    """Trains the forest on random data; returns its file."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, features)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int32)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6}, xgb.DMatrix(x, label=y), trees
    )
    (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
    (repo / MODEL / "config.pbtxt").write_text(CONFIG.format(features=features))
    path = repo / MODEL / "1" / "xgboost.json"
    booster.save_model(str(path))
    return path


def raw_samples_per_s(path: Path, features: int, batch: int, seconds: float) -> float:
    """Samples per second of back-to-back GTIL calls, with the server's default threads."""
    model: Any = treelite.frontend.load_xgboost_model(str(path), format_choice="json")
    threads = max(1, (os.cpu_count() or 1) // 2)
    x = np.random.default_rng(0).normal(size=(batch, features)).astype(np.float32)
    return backend_bench.samples_per_s(
        lambda: treelite.gtil.predict(model, x, nthread=threads), batch, seconds
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = backend_bench.arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=32, help="input features")
    parser.add_argument("--trees", type=int, default=100, help="boosting rounds")
    args = parser.parse_args(argv)
    path = write_repository(args.out / "repo", args.features, args.trees)
    raw = {
        f"raw GTIL in-process, batch {b}": raw_samples_per_s(path, args.features, b, 3.0)
        for b in (1, 64)
    }
    probe = Probe.of(MODEL, {"input__0": ("FP32", (1, args.features))})
    return backend_bench.serve_and_compare(args, [MODEL], None, raw, probe)


if __name__ == "__main__":
    sys.exit(main())
