"""MLServer models' own metrics (`mlserver.register()` / `mlserver.log()`) on the server's
metrics endpoint. Apart from backends/mlserver.py, so that the server reads them without
importing the MLServer backend."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class MLServerMetrics:
    """MLServer models' own metrics (`mlserver.register()` / `mlserver.log()`, histograms
    labelled with the model's name and version) on the server's metrics endpoint, as MLServer
    serves them: those of models in the server's process from MLServer's registry, those of
    models in stub processes from the files prometheus_client's multiprocess mode keeps in
    `folder` (MLServer's way for its workers' metrics)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def collect(self) -> Iterator[Metric]:
        metrics = sys.modules.get("mlserver.metrics")  # only once a model imported MLServer
        if metrics is not None:
            yield from metrics.REGISTRY.collect()
        if self._folder.is_dir():  # no files: nothing
            files = MultiProcessCollector(None, path=str(self._folder))  # type: ignore[no-untyped-call]
            yield from files.collect()  # type: ignore[no-untyped-call]
