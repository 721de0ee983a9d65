"""A python model's CUDA tensors (a CuPy or PyTorch tensor on the GPU) handed over through
DLPack: inferd copies them to the host once."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.backends import python_api as pb_utils

pytestmark = pytest.mark.gpu


def test_a_cuda_tensor_becomes_a_host_copy() -> None:
    import cupy

    on_device = cupy.arange(12, dtype=cupy.float32).reshape(3, 4) * 2
    tensor = pb_utils.Tensor.from_dlpack("OUT", on_device)
    assert tensor.is_cpu()
    np.testing.assert_array_equal(tensor.as_numpy(), cupy.asnumpy(on_device))
    # A plain capsule (torch.utils.dlpack.to_dlpack's kind) crosses the same way.
    capsule = (on_device + 1).__dlpack__()
    np.testing.assert_array_equal(
        pb_utils.Tensor.from_dlpack("OUT", capsule).as_numpy(), cupy.asnumpy(on_device + 1)
    )
