"""Frozen GraphDefs (platform tensorflow_graphdef) in a TF1-style session, as Triton runs them:
config inputs name Placeholder nodes, outputs any other node, fed and fetched by tensor name
("x" is "x:0"). A GraphDef lists no inputs or outputs, so its config must name them; types
and shapes come from the graph where it knows them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from inferd.backends.autocomplete import restore_item_dims, scalar_items
from inferd.backends.base import BackendSettings, ModelInstance
from inferd.backends.tensorflow import tf_error_text
from inferd.backends.tensorflow_autocomplete import (
    INIT_OPS_FILE,
    Signature,
    TfParameters,
    TfTensor,
    tf_shape,
    to_spec,
)
from inferd.repository.config import ModelConfig, ModelConfigProto
from inferd.repository.sequence_config import sequence_tensors
from inferd.server.errors import invalid


def tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def read_graph_def(tf: Any, model_path: Path) -> Any:
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(model_path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise invalid(f"failed to read the GraphDef {model_path}: {exc}") from None
    if not graph_def.node:
        raise invalid(f"the GraphDef {model_path} has no nodes")
    return graph_def


def import_graph(tf: Any, graph_def: Any, device: str) -> Any:
    graph = tf.Graph()
    try:
        with graph.as_default(), tf.device(device):
            tf.graph_util.import_graph_def(graph_def, name="")
    except (ValueError, tf.errors.OpError) as exc:
        raise invalid(f"failed to import the GraphDef: {exc}") from None
    return graph


def graphdef_signature(tf: Any, config: ModelConfigProto, model_path: Path) -> Signature:
    """The config's inputs and outputs as the graph declares them; an error for a name that
    is not a Placeholder (input) or not in the graph (output)."""
    graph_def = read_graph_def(tf, model_path)
    placeholders = sorted(n.name for n in graph_def.node if n.op == "Placeholder")
    if not config.input or not config.output:
        raise invalid(
            f"a GraphDef does not list its inputs and outputs, so the config must name them "
            f"(Triton does not auto-complete GraphDefs either); its placeholders are: "
            f"{', '.join(placeholders) or 'none'}"
        )
    graph = import_graph(tf, graph_def, "/CPU:0")

    def declared(kind: str, names: Sequence[str]) -> tuple[TfTensor, ...]:
        tensors = []
        for name in names:
            node = name.partition(":")[0]
            if kind == "input" and node not in placeholders:
                raise invalid(
                    f"input '{name}' in the config is not a Placeholder of {model_path}; "
                    f"its placeholders are: {', '.join(placeholders) or 'none'}"
                )
            try:
                tensor = graph.get_tensor_by_name(tensor_name(name))
            except (KeyError, ValueError):
                raise invalid(f"{kind} '{name}' in the config is not in {model_path}") from None
            tensors.append(TfTensor(name, _dtype_name(tensor), tf_shape(tensor.shape)))
        return tuple(tensors)

    return Signature(
        "",
        declared("input", [t.name for t in config.input]),
        declared("output", [t.name for t in config.output]),
    )


def _dtype_name(tensor: Any) -> str:
    from tensorflow.core.framework import types_pb2

    name: str = types_pb2.DataType.Name(tensor.dtype.as_datatype_enum)
    return name


class GraphDefInstance(ModelInstance):
    """One session over the imported graph, with its own thread pools, and a callable made
    once for the config's feeds and fetches."""

    def __init__(
        self,
        tf: Any,
        config: ModelConfig,
        model_path: Path,
        device: str,
        params: TfParameters,
        settings: BackendSettings,
    ) -> None:
        self._tf = tf
        graph_def = read_graph_def(tf, model_path)
        if device != "/CPU:0":
            # As Triton: the instance's device decides, except for nodes pinned to the CPU.
            for node in graph_def.node:
                if node.device and "CPU" not in node.device.upper():
                    node.device = ""
        graph = import_graph(tf, graph_def, device)
        # Per-session pools, sized like inferd's ONNX sessions: the cores split among this
        # model's CPU instances, half of them kept for the front doors.
        cores = os.cpu_count() or 1
        intra = params.intra_op_threads
        if intra is None:
            intra = max(1, cores // (2 * max(1, settings.total_cpu_instances)))
        inter = 1 if params.inter_op_threads is None else params.inter_op_threads
        options = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=intra,
            inter_op_parallelism_threads=inter,
            use_per_session_threads=True,
            allow_soft_placement=True,  # Triton's default: ops without a GPU kernel run on CPU
        )
        options.gpu_options.allow_growth = True
        self._session: Any = tf.compat.v1.Session(graph=graph, config=options)
        try:
            self._run_init_ops(graph, model_path, params)
            # Sequence models: the scheduler's control and state tensors too.
            controls, states = sequence_tensors(config.sequence_batching)
            self._input_names = (*(t.name for t in config.inputs), *controls)
            self._output_names = (*(t.name for t in config.outputs), *states)
            feeds = [graph.get_tensor_by_name(tensor_name(n)) for n in self._input_names]
            fetches = [graph.get_tensor_by_name(tensor_name(n)) for n in self._output_names]
            self._call: Any = self._session.make_callable(fetches, feed_list=feeds)
        except BaseException:
            self._session.close()
            raise
        batched = config.max_batch_size > 0
        dims = {t.name: list(t.dims) for t in (*config.inputs, *config.outputs)}
        specs = [
            to_spec(TfTensor(name, "", tf_shape(t.shape)), dims.get(name), batched)
            for name, t in zip(
                (*self._input_names, *self._output_names), (*feeds, *fetches), strict=True
            )
        ]
        self._scalar_items = scalar_items((*config.inputs, *config.outputs), specs, batched)

    def _run_init_ops(self, graph: Any, model_path: Path, params: TfParameters) -> None:
        """TF_INIT_OPS_FILE: JSON {"init_ops": [names]}, looked up beside the model file
        first, then in the model folder, as Triton does."""
        if not params.init_ops_file:
            return
        candidates = [model_path.parent / params.init_ops_file]
        candidates.append(model_path.parent.parent / params.init_ops_file)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise invalid(f"parameter {INIT_OPS_FILE}: {params.init_ops_file} is not found")
        try:
            names = json.loads(path.read_text(encoding="utf-8"))["init_ops"]
            ops = [graph.get_operation_by_name(str(name)) for name in names]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise invalid(f"parameter {INIT_OPS_FILE}: cannot use {path}: {exc}") from None
        self._session.run(ops)

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None, "execute() after close()"
        feed = []
        for name in self._input_names:
            array = inputs[name]
            if name in self._scalar_items:
                array = array.reshape(array.shape[:-1])
            feed.append(array)
        try:
            results = self._call(*feed)
        except (self._tf.errors.InvalidArgumentError, ValueError) as exc:
            raise invalid(f"TensorFlow rejected the inputs: {tf_error_text(exc)}") from None
        outputs = dict(zip(self._output_names, results, strict=True))
        restore_item_dims(outputs, self._scalar_items)
        return outputs

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = None
