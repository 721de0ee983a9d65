"""`model_warmup`: sample requests run on every instance before a model version is READY.

Data is zeros, random values, or the raw contents of a file in the model's `warmup` folder (as
Triton: row-major, BYTES elements 4-byte length-prefixed), one sample repeated `batch_size`
times. Warmup executions count in the version's statistics (executions, inferences, compute
time) but not as requests: nobody sent them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as pb

from inferd.backends.base import ModelInstance, Rescheduled
from inferd.batching.scheduler import record_batch
from inferd.batching.stats import ModelStats
from inferd.batching.tensors import BatchLayout
from inferd.batching.worker import Timings
from inferd.repository.config import ModelConfig, ModelConfigProto, TensorConfig
from inferd.server.errors import invalid
from inferd.server.tensor_codec import tensor_from_bytes
from inferd.server.types import DataType, InferRequest

WARMUP_FOLDER = "warmup"


@dataclass(frozen=True, slots=True)
class WarmupSample:
    name: str
    batch_size: int
    count: int  # executions per instance
    inputs: dict[str, np.ndarray]  # ready to execute: batched when the model batches


def warmup_samples(
    proto: ModelConfigProto, config: ModelConfig, model_dir: Path
) -> list[WarmupSample]:
    """The config's warmup samples with their data (reads files: call off the event loop)."""
    rng = np.random.default_rng()
    return [_sample(w, config, model_dir, rng) for w in proto.model_warmup]


def run_warmup(
    samples: Sequence[WarmupSample],
    instances: Sequence[ModelInstance],
    stats: ModelStats,
    layout: BatchLayout | None = None,
) -> None:
    """Run every sample `count` times on every instance, laid out as a batch of one (`layout`:
    the model's, when it is not plain concatenation and the instance takes batches); the first
    failure is raised."""
    for index, instance in enumerate(instances):
        joins = layout is not None and not instance.takes_requests
        for sample in samples:
            inputs = layout.join([sample.inputs]) if joins and layout else sample.inputs
            for _ in range(sample.count):
                start = time.monotonic_ns()
                try:
                    instance.execute(inputs)
                except Rescheduled:
                    pass  # an iterative model's first run: the execution path is warm
                except Exception as exc:
                    raise invalid(
                        f"model warmup '{sample.name}' failed on instance {index}: {exc}"
                    ) from None
                _record(stats, sample.batch_size, start, time.monotonic_ns())


@dataclass(frozen=True, slots=True)
class _WarmupRequest:
    """One request of a warmup sample, as record_batch() reads it: never queued."""

    enqueued_ns: int
    batch_size: int = 1
    request: InferRequest | None = None


def _record(stats: ModelStats, batch_size: int, start_ns: int, end_ns: int) -> None:
    """Count a sample's run as Triton 2.51 does, in the statistics and the metrics: as
    `batch_size` successful requests of one item each, run as one batch."""
    took = end_ns - start_ns
    record_batch(
        stats, [_WarmupRequest(start_ns)] * batch_size, Timings(start_ns, infer_ns=took), end_ns
    )
    stats.success.add(took * batch_size, batch_size)
    stats.request_us.observe(took / 1000, batch_size)


def _sample(
    warmup: Any, config: ModelConfig, model_dir: Path, rng: np.random.Generator
) -> WarmupSample:
    where = f"model '{config.name}' warmup '{warmup.name}'"
    batching = config.max_batch_size > 0
    size = warmup.batch_size
    if batching and not 1 <= size <= config.max_batch_size:
        raise invalid(f"{where}: batch_size must be in 1..{config.max_batch_size}, got {size}")
    if not batching and size != 1:
        raise invalid(f"{where}: batch_size must be 1 for a model that does not batch")
    inputs: dict[str, np.ndarray] = {}
    for name, spec in warmup.inputs.items():
        tensor = config.input_by_name.get(name)
        if tensor is None:
            raise invalid(f"{where}: the model has no input '{name}'")
        one = _data(f"{where} input '{name}'", spec, tensor, model_dir, rng)
        inputs[name] = np.repeat(one[np.newaxis], size, axis=0) if batching else one
    missing = [t.name for t in config.inputs if not t.optional and t.name not in inputs]
    if missing:
        raise invalid(f"{where}: no data for input(s) {missing}")
    return WarmupSample(warmup.name, size, max(1, warmup.count), inputs)


def _data(
    where: str, spec: Any, tensor: TensorConfig, model_dir: Path, rng: np.random.Generator
) -> np.ndarray:
    datatype = DataType.from_config_name(pb.DataType.Name(spec.data_type))
    if datatype is not tensor.datatype:
        raise invalid(
            f"{where}: data_type {datatype.config_name} differs from the model's "
            f"{tensor.datatype.config_name}"
        )
    dims = tuple(spec.dims)
    if len(dims) != len(tensor.dims) or any(
        d < 1 or want not in (-1, d) for want, d in zip(tensor.dims, dims, strict=True)
    ):
        raise invalid(f"{where}: dims {list(dims)} do not fit the model's {list(tensor.dims)}")
    kind = spec.WhichOneof("input_data_type")
    if kind == "input_data_file":
        data = _read(where, model_dir, spec.input_data_file)
        return tensor_from_bytes(data, where, datatype, dims)
    if kind is None:
        raise invalid(f"{where}: give zero_data, random_data or input_data_file")
    if datatype is DataType.BYTES:
        return np.full(dims, b"", dtype=object)  # random strings mean nothing: zeros, as Triton
    if kind == "zero_data":
        return np.zeros(dims, datatype.numpy)
    if datatype is DataType.BOOL:
        return rng.integers(0, 2, dims).astype(np.bool_)
    if datatype.numpy.kind in "iu":
        return rng.integers(0, 100, dims).astype(datatype.numpy)
    return rng.random(dims).astype(datatype.numpy)


def _read(where: str, model_dir: Path, relative: str) -> bytes:
    folder = (model_dir / WARMUP_FOLDER).resolve()
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder):
        raise invalid(f"{where}: input_data_file '{relative}' is outside the warmup folder")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise invalid(f"{where}: cannot read input_data_file {path}: {exc.strerror}") from None
