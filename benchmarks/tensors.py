"""Request tensors for load generation, encoded for the v2 HTTP (JSON, binary) and gRPC APIs."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import triton_to_np_dtype

RANDOM_SAMPLES = 8


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray[Any, Any]

    def raw(self) -> bytes:
        """The binary-extension / raw_input_contents encoding."""
        if self.datatype == "BYTES":  # each element: 4-byte little-endian length, then the bytes
            items = [x if isinstance(x, bytes) else str(x).encode() for x in self.array.flat]
            return b"".join(struct.pack("<I", len(x)) + x for x in items)
        return np.ascontiguousarray(self.array).tobytes()

    def json_data(self) -> list[Any]:
        if self.datatype == "BYTES":
            return [x.decode() if isinstance(x, bytes) else str(x) for x in self.array.flat]
        if self.datatype == "BF16":  # a numpy extension type; JSON carries it as plain floats
            return self.array.astype(np.float32).ravel().tolist()
        return self.array.ravel().tolist()


Sample = list[Tensor]


def parse_shapes(specs: Sequence[str]) -> dict[str, list[int]]:
    """``NAME:d1,d2`` (perf_analyzer's --shape spelling) -> {NAME: [d1, d2]}."""
    shapes = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        if not name:
            raise ValueError(f"--shape {spec!r}: expected NAME:d1,d2,...")
        shapes[name] = [int(d) for d in dims.split(",") if d]
    return shapes


def request_shapes(
    metadata_inputs: Sequence[Mapping[str, Any]], overrides: Mapping[str, list[int]]
) -> dict[str, tuple[str, list[int]]]:
    """name -> (datatype, shape): the override (full request shape), else dynamic dims as 1."""
    unknown = set(overrides) - {m["name"] for m in metadata_inputs}
    if unknown:
        raise ValueError(f"--shape names no input of the model: {sorted(unknown)}")
    return {
        m["name"]: (m["datatype"], overrides.get(m["name"]) or [max(1, int(d)) for d in m["shape"]])
        for m in metadata_inputs
    }


def random_samples(shapes: Mapping[str, tuple[str, list[int]]], seed: int = 0) -> list[Sample]:
    """A few samples of sensible values: N(0,1) floats, small integers, short strings."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(RANDOM_SAMPLES):
        sample = []
        for name, (datatype, shape) in shapes.items():
            if datatype == "BYTES":
                values = np.array([str(v).encode() for v in rng.integers(0, 1000, shape).flat])
                array = values.astype(object).reshape(shape)
            elif datatype == "BOOL":
                array = rng.integers(0, 2, shape).astype(bool)
            elif datatype.startswith(("FP", "BF")):
                array = rng.standard_normal(shape).astype(triton_to_np_dtype(datatype))
            else:
                array = rng.integers(0, 16, shape).astype(triton_to_np_dtype(datatype))
            sample.append(Tensor(name, datatype, array))
        samples.append(sample)
    return samples


def file_samples(path: Path, shapes: Mapping[str, tuple[str, list[int]]]) -> list[Sample]:
    """perf_analyzer's --input-data JSON: {"data": [{NAME: [values] | {"content": [...]}}]}."""
    steps = json.loads(path.read_text())["data"]
    samples = []
    for step in steps:
        sample = []
        for name, (datatype, shape) in shapes.items():
            values = step[name]["content"] if isinstance(step[name], dict) else step[name]
            if isinstance(step[name], dict) and "shape" in step[name]:
                shape = step[name]["shape"]
            dtype = object if datatype == "BYTES" else triton_to_np_dtype(datatype)
            sample.append(Tensor(name, datatype, np.array(values, dtype=dtype).reshape(shape)))
        samples.append(sample)
    return samples


def http_json(sample: Sample) -> bytes:
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.array.shape),
            "data": t.json_data(),
        }
        for t in sample
    ]
    return json.dumps({"inputs": inputs}).encode()


def http_binary(sample: Sample) -> tuple[bytes, int]:
    """(body, JSON header length) for the binary tensor extension, asking for binary outputs."""
    raws = [t.raw() for t in sample]
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.array.shape),
            "parameters": {"binary_data_size": len(raw)},
        }
        for t, raw in zip(sample, raws, strict=True)
    ]
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(raws), len(header)


def grpc_request(sample: Sample, model: str, version: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for t in sample:
        request.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.array.shape))
        request.raw_input_contents.append(t.raw())
    return request
