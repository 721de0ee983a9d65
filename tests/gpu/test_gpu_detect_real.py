"""GPU detection through the real CUDA driver: the count and each GPU's compute capability
(what cc_model_filenames is keyed by), checked against cupy's view of the same GPUs."""

from __future__ import annotations

import re

import pytest

from inferd.backends.gpu import detect_gpus

pytestmark = pytest.mark.gpu


def test_the_driver_reports_each_gpus_compute_capability() -> None:
    import cupy

    found = detect_gpus()
    assert found.count == cupy.cuda.runtime.getDeviceCount() > 0
    assert len(found.capabilities) == found.count
    for index, capability in enumerate(found.capabilities):
        assert re.fullmatch(r"\d+\.\d+", capability)
        # cupy spells it without the dot ("90" for 9.0).
        assert capability.replace(".", "") == cupy.cuda.Device(index).compute_capability
