"""The GPU instances' IO-binding path, run for real on a CPU onnxruntime session: the fake cupy
makes "device" buffers host memory, so ORT reads and writes them by address as it would on a
GPU, and the fake records allocations, copies and stream synchronizations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from inferd.backends.base import BackendSettings
from inferd.backends.cuda import CudaRuntime
from inferd.backends.onnxruntime import OnnxRuntimeBackend
from inferd.backends.ort_binding import IoBindingRunner, graph_batch_sizes
from inferd.backends.pinned_memory import PinnedMemoryPool
from inferd.backends.staging import IoStaging
from inferd.repository.config import ModelConfig, normalize, parse_config_text, to_model_config
from inferd.server.errors import InferdError
from tests import fake_cupy
from tests.models import double_model, identity_model, reshape_model, write_model

FIXED = (
    'max_batch_size: 4 input [{name: "INPUT0" data_type: TYPE_FP32 dims: [4]}] '
    'output [{name: "OUTPUT0" data_type: TYPE_FP32 dims: [4]}] '
)
GRAPHS = "optimization { cuda { graphs: true } } "


def load(tmp_path: Path, model: object, config_text: str | None) -> tuple[ModelConfig, Path]:
    """The model's config as the repository manager makes it: parse, complete, normalize."""
    model_dir = write_model(tmp_path, "m", model, config_text)  # type: ignore[arg-type]
    proto = parse_config_text(config_text or "", "test")
    model_file = model_dir / "1" / "model.onnx"
    OnnxRuntimeBackend.complete_config(proto, model_file, BackendSettings())
    normalize(proto, "m", 1)
    return to_model_config(proto, "onnxruntime"), model_file


class Setup:
    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        model: object,
        text: str | None,
        pinned: PinnedMemoryPool | None = None,
    ) -> None:
        self.record = fake_cupy.install(monkeypatch)
        self.pinned = pinned or PinnedMemoryPool()
        self.config, model_file = load(tmp_path, model, text)
        cuda = CudaRuntime.load()
        self.stream = cuda.stream(0)
        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        self.runner = IoBindingRunner(
            session,
            IoStaging(cuda, 0, self.stream, self.pinned),
            "cpu",  # the fake's device memory is host memory
            0,
            self.config,
            graph_batch_sizes(self.config),
        )


def test_outputs_come_back_from_memory_ort_allocates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    setup = Setup(monkeypatch, tmp_path, double_model(), None)
    assert setup.config.max_batch_size == 4 and setup.config.outputs[0].dims == (-1,)
    for batch, n in ((1, 3), (4, 5), (2, 1)):
        x = np.arange(batch * n, dtype=np.float32).reshape(batch, n)
        out = setup.runner.run({"INPUT0": x})
        np.testing.assert_array_equal(out["OUTPUT0"], 2 * x)
        np.testing.assert_array_equal(out["OUTPUT1"], x)
    assert setup.stream.synchronized == 3  # one wait per batch
    assert all(kind in (1, 2) for kind, _ in setup.record.copies)


def test_same_size_batches_reuse_the_buffers_and_results_are_fresh_arrays(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    setup = Setup(monkeypatch, tmp_path, identity_model(), FIXED)
    first = setup.runner.run({"INPUT0": np.ones((2, 4), np.float32)})
    allocations = (len(setup.record.device_allocations), len(setup.record.pinned_allocations))
    for value in (2.0, 3.0):
        out = setup.runner.run({"INPUT0": np.full((2, 4), value, np.float32)})
        np.testing.assert_array_equal(out["OUTPUT0"], np.full((2, 4), value))
    # Same-size batches reuse every buffer, and an earlier result is not overwritten.
    assert (len(setup.record.device_allocations), len(setup.record.pinned_allocations)) == (
        allocations
    )
    np.testing.assert_array_equal(first["OUTPUT0"], np.ones((2, 4)))


def test_growing_batches_reallocate_only_at_powers_of_two(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    setup = Setup(monkeypatch, tmp_path, identity_model(shape=("batch", 64)), None)
    for batch in (1, 2, 3, 4, 3, 1):
        x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
        np.testing.assert_array_equal(setup.runner.run({"INPUT0": x})["OUTPUT0"], x)
    # 256 B, 512 B and 1 KiB cover batches of 256..1024 bytes: 3 sizes for each of the input's
    # device and pinned buffers and the output's pinned buffer (ORT allocates its device side).
    assert len(setup.record.device_allocations) == 3
    assert len(setup.record.pinned_allocations) == 6
    # What stays pinned: the last (1 KiB) input and output buffers; the outgrown ones went back.
    assert setup.pinned.used_bytes == 2048
    setup.runner.close()
    assert setup.pinned.used_bytes == 0


def test_buffers_beyond_the_pinned_budget_are_pageable_and_still_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Room for the 1 KiB input buffer of a batch of 4, not for its output buffer as well.
    budget = PinnedMemoryPool(1500)
    setup = Setup(monkeypatch, tmp_path, identity_model(shape=("batch", 64)), None, budget)
    x = np.arange(4 * 64, dtype=np.float32).reshape(4, 64)
    np.testing.assert_array_equal(setup.runner.run({"INPUT0": x})["OUTPUT0"], x)
    assert setup.record.pinned_allocations == [1024]
    assert budget.used_bytes == 1024
    # A pool of 0 bytes (Triton's way to turn it off): nothing is pinned.
    none = Setup(monkeypatch, tmp_path / "none", identity_model(), None, PinnedMemoryPool(0))
    ones = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(none.runner.run({"INPUT0": ones})["OUTPUT0"], ones)
    assert none.record.pinned_allocations == [] and none.pinned.used_bytes == 0


def test_cuda_graphs_are_captured_at_load_and_batches_pad_to_a_graph_size(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = FIXED + "dynamic_batching { preferred_batch_size: [2] } " + GRAPHS
    setup = Setup(monkeypatch, tmp_path, identity_model(), text)
    allocated = len(setup.record.device_allocations)
    assert allocated == 2  # input and output, at the largest batch, up front
    setup.runner.capture_graphs()
    assert setup.stream.synchronized == 2 * 3  # two runs (allocate, capture) per size 1, 2, 4
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = setup.runner.run({"INPUT0": x})
    np.testing.assert_array_equal(out["OUTPUT0"], x)  # padded to 4 rows, 3 come back
    assert len(setup.record.device_allocations) == allocated  # addresses never move


@pytest.mark.parametrize(
    ("text", "sizes"),
    [
        (FIXED, ()),
        (FIXED + "dynamic_batching { preferred_batch_size: [2] } " + GRAPHS, (1, 2, 4)),
        (
            FIXED.replace("max_batch_size: 4", "max_batch_size: 32") + GRAPHS,
            (1, 2, 3, 4, 6, 8, 12, 16, 32),
        ),
        (FIXED.replace("max_batch_size: 4", "max_batch_size: 0") + GRAPHS, (0,)),
    ],
)
def test_graph_batch_sizes_follow_triton(text: str, sizes: tuple[int, ...]) -> None:
    proto = parse_config_text(text, "test")
    normalize(proto, "m", 1)
    assert graph_batch_sizes(to_model_config(proto, "onnxruntime")) == sizes


def test_graphs_need_fixed_shapes() -> None:
    proto = parse_config_text(FIXED.replace("dims: [4]", "dims: [-1]", 1) + GRAPHS, "test")
    normalize(proto, "m", 1)
    with pytest.raises(InferdError, match="needs fixed dims"):
        graph_batch_sizes(to_model_config(proto, "onnxruntime"))


def test_scalar_items_are_reshaped_on_the_way_in_and_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = FIXED.replace("dims: [4]", "dims: [1]")
    setup = Setup(monkeypatch, tmp_path, identity_model(shape=("batch",)), text)
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    np.testing.assert_array_equal(setup.runner.run({"INPUT0": x})["OUTPUT0"], x)


def test_a_failed_batch_waits_for_its_copies_and_the_next_one_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    setup = Setup(monkeypatch, tmp_path, reshape_model(), None)
    with pytest.raises(Exception, match=r"(?i)reshape"):
        setup.runner.run({"INPUT0": np.ones((1, 3), np.float32)})
    assert setup.stream.synchronized == 1
    out = setup.runner.run({"INPUT0": np.ones((2, 2), np.float32)})
    assert out["OUTPUT0"].shape == (1, 4)


@pytest.mark.parametrize(
    ("dtype", "name"), [(TensorProto.BFLOAT16, "BF16"), (TensorProto.STRING, "BYTES")]
)
def test_tensors_io_binding_cannot_take_are_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dtype: int, name: str
) -> None:
    with pytest.raises(InferdError, match=f"{name} tensor 'INPUT0' is not supported on GPU"):
        Setup(monkeypatch, tmp_path, identity_model(dtype), None)


def test_ragged_batches_are_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ragged = (
        'max_batch_size: 4 input [{name: "INPUT0" data_type: TYPE_FP32 dims: [-1] '
        'allow_ragged_batch: true}] output [{name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1]}] '
        'batch_output [{target_name: "OUTPUT0" kind: BATCH_SCATTER_WITH_INPUT_SHAPE '
        'source_input: "INPUT0"}]'
    )
    with pytest.raises(InferdError, match=r"ragged batching .* not supported on GPU instances"):
        Setup(monkeypatch, tmp_path, identity_model(shape=("total",)), ragged)
