"""The real perf_analyzer for tests: found through $PERF_ANALYZER or PATH (benchmarks/README
says how to get it); tests that need it are marked slow and skipped without it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

PERF_ANALYZER = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")

needs_perf_analyzer = pytest.mark.skipif(
    PERF_ANALYZER is None, reason="perf_analyzer is not installed: set PERF_ANALYZER"
)


def run_perf_analyzer(model: str, url: str, protocol: str, *flags: str) -> str:
    """One short run; it must exit 0 and report a throughput. Returns its output.

    Tests are about errors, not steady numbers: the stability band is so wide that a run on
    busy cores never ends in "Failed to obtain stable measurement"."""
    assert PERF_ANALYZER is not None
    command = [PERF_ANALYZER, "-m", model, "-u", url, "-i", protocol, "-s", "1000", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "throughput:" in result.stdout.lower()
    return output
