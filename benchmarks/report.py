"""Markdown tables and PNG plots of sweep results."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from inferd.benchmarks.perf_sweep import Cell

# Other tenants' CPU above this share of a core makes a cell suspect on a shared machine.
NOISY_CORES = 0.3


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def perf_table(cells: Iterable[Cell]) -> str:
    """One row per cell; ``(unstable)`` and ``⚠`` (other CPU load) mark doubtful figures."""
    head = (
        "| server | protocol | model | conc | infer/s | p50 ms | p99 ms | server CPU cores "
        "| server CPU µs/infer | perf_analyzer cores | other cores |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for c in cells:
        proto = c.protocol if c.tensors == "binary" else f"{c.protocol} ({c.tensors})"
        lead = f"| {c.server or '-'} | {proto} | {c.model} | {c.concurrency} |"
        if c.error:
            rows.append(f"{lead} FAIL | | | | | | {c.error} |")
            continue
        rate = _num(c.infer_per_s, 0) + ("" if c.stable else " (unstable)")
        other = _num(c.other_cpu_cores, 2)
        if c.other_cpu_cores is not None and c.other_cpu_cores >= NOISY_CORES:
            other += " ⚠"
        rows.append(
            f"{lead} {rate} | {_num(c.p50_ms, 2)} | {_num(c.p99_ms, 2)} "
            f"| {_num(c.server_cpu_cores, 2)} | {_num(c.server_cpu_us_per_infer, 0)} "
            f"| {_num(c.pa_cpu_cores, 2)} | {other} |"
        )
    return head + "\n".join(rows) + "\n"


def startup_table(startups: Mapping[str, Sequence[Mapping[str, float | None]]]) -> str:
    """Per server: median launch -> ready and launch -> first inference, and each run's figure."""
    head = (
        "| server | runs | ready s (median) | first infer s (median) | first infer s (each run) |\n"
        "|---|---|---|---|---|\n"
    )
    rows = []
    for server, runs in startups.items():
        ready = _median([r["ready_s"] for r in runs])
        first = _median([r["first_infer_s"] for r in runs])
        each = ", ".join(
            "FAIL" if r["first_infer_s"] is None else f"{r['first_infer_s']:.2f}" for r in runs
        )
        rows.append(f"| {server} | {len(runs)} | {_num(ready, 2)} | {_num(first, 2)} | {each} |")
    return head + "\n".join(rows) + "\n"


def _median(values: Sequence[float | None]) -> float | None:
    """Median of the successful runs (None if none succeeded)."""
    ok = sorted(v for v in values if v is not None)
    if not ok:
        return None
    mid = len(ok) // 2
    return ok[mid] if len(ok) % 2 else (ok[mid - 1] + ok[mid]) / 2


def write_plots(cells: Sequence[Cell], out: Path) -> list[Path]:
    """throughput_vs_concurrency.png and latency_vs_throughput.png: a panel per model x protocol."""
    # Imported here: matplotlib is in the bench extra only, and tables need none of it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in cells if not c.error and c.infer_per_s]
    panels = sorted({(c.model, c.protocol) for c in ok})
    if not panels:
        return []
    paths = []
    for name, draw in (
        ("throughput_vs_concurrency", _throughput),
        ("latency_vs_throughput", _latency),
    ):
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
        for ax, (model, protocol) in zip(axes[0], panels, strict=True):
            for label, points in _series(
                [c for c in ok if (c.model, c.protocol) == (model, protocol)]
            ):
                draw(ax, label, points)
            ax.set_title(f"{model}, {protocol}: {name.replace('_', ' ')}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _series(cells: Sequence[Cell]) -> list[tuple[str, list[Cell]]]:
    """One line per server (and tensor format), its points in concurrency order."""
    series: dict[str, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: c.concurrency):
        label = c.server if c.tensors == "binary" else f"{c.server} ({c.tensors})"
        series.setdefault(label, []).append(c)
    return list(series.items())


def _values(values: Iterable[float | None]) -> list[float]:
    """Plot values, missing ones as NaN (matplotlib leaves a gap)."""
    return [math.nan if v is None else v for v in values]


def _throughput(ax: Axes, label: str, points: Sequence[Cell]) -> None:
    rates = _values(c.infer_per_s for c in points)
    ax.plot([c.concurrency for c in points], rates, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("infer/s")


def _latency(ax: Axes, label: str, points: Sequence[Cell]) -> None:
    rates = _values(c.infer_per_s for c in points)
    (line,) = ax.plot(rates, _values(c.p99_ms for c in points), marker="o", label=f"{label} p99")
    ax.plot(
        rates,
        _values(c.p50_ms for c in points),
        marker=".",
        linestyle="--",
        color=line.get_color(),
        label=f"{label} p50",
    )
    ax.set_yscale("log")
    ax.set_xlabel("infer/s")
    ax.set_ylabel("latency ms (client side)")
