"""TensorFlow backend: SavedModels (one loaded signature per instance, run eagerly) and frozen
GraphDefs (tensorflow_graphdef.py). TensorFlow is an optional extra, imported only when a model
of this backend loads; its objects are typed Any so that this module type-checks without it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from inferd.backends.autocomplete import restore_item_dims, scalar_items
from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.gpu import GpuInfo
from inferd.backends.registry import INSTALL_HINTS
from inferd.backends.tensorflow_autocomplete import (
    INTER_OP_THREADS,
    INTRA_OP_THREADS,
    Signature,
    TfParameters,
    TfTensor,
    complete_and_check,
    parse_parameters,
    pick_signature,
    proto_parameters,
    tf_shape,
    to_spec,
)
from inferd.repository.config import ModelConfig, ModelConfigProto, OutputOrder
from inferd.repository.sequence_config import sequence_tensors
from inferd.server.errors import InferdError, invalid, unavailable, unsupported

log = logging.getLogger(__name__)

SAVEDMODEL_PLATFORM = "tensorflow_savedmodel"
GRAPHDEF_PLATFORM = "tensorflow_graphdef"


def import_tensorflow() -> Any:
    """The tensorflow module, or a load error that says what to install."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise unsupported(
            f"TensorFlow is not installed ({exc}); {INSTALL_HINTS['tensorflow']}"
        ) from None
    return tf


def resolve_model(platform: str, model_path: Path) -> tuple[bool, Path]:
    """(is it a GraphDef, its path). The loader passes the backend's one default file name,
    model.savedmodel; a GraphDef's default is model.graphdef."""
    graphdef_path = model_path.with_name("model.graphdef")
    if platform:
        graphdef = platform == GRAPHDEF_PLATFORM
    else:  # a SavedModel is a folder, a GraphDef a file
        graphdef = model_path.is_file() or (not model_path.exists() and graphdef_path.is_file())
    if graphdef and model_path.name == "model.savedmodel":
        model_path = graphdef_path
    return graphdef, model_path


class TensorFlowBackend(Backend):
    name = "tensorflow"
    output_order = OutputOrder.NAME
    platforms = (SAVEDMODEL_PLATFORM, GRAPHDEF_PLATFORM)
    # One name per backend: resolve_model() turns it into model.graphdef for GraphDefs.
    default_model_filename = "model.savedmodel"

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        graphdef, model_path = resolve_model(config.platform, model_path)
        tf = import_tensorflow()
        if not config.platform and not config.backend:
            config.platform = GRAPHDEF_PLATFORM if graphdef else SAVEDMODEL_PLATFORM
        try:
            params = parse_parameters(proto_parameters(config))
            if graphdef:
                from inferd.backends.tensorflow_graphdef import graphdef_signature

                signature = graphdef_signature(tf, config, model_path)
            else:
                signature = read_signature(tf, model_path, params)
            complete_and_check(
                config,
                signature,
                model_path,
                auto_complete=settings.auto_complete,
                default_max_batch_size=settings.default_max_batch_size,
                every_input=not graphdef,
            )
        except InferdError as exc:  # say which model: the checks only know the tensors
            name = config.name or model_path.parent.parent.name
            raise InferdError(exc.code, f"TensorFlow model '{name}': {exc.message}") from None
        accelerators = config.optimization.execution_accelerators
        if accelerators.gpu_execution_accelerator or accelerators.cpu_execution_accelerator:
            # Speed-ups only (TF-TRT, mixed precision): the model computes the same without.
            log.warning(
                "model '%s': TensorFlow execution accelerators are not supported by inferd and "
                "are ignored",
                config.name or model_path.parent.parent.name,
            )

    @classmethod
    def gpu_unavailable_reason(cls, gpus: GpuInfo) -> str:
        try:
            tf = import_tensorflow()
        except InferdError as exc:
            return exc.message
        if not tf.test.is_built_with_cuda():
            return (
                "this TensorFlow build has no CUDA support (tensorflow-cpu); install the "
                "tensorflow package with its and-cuda extra for KIND_GPU models"
            )
        if not tf.config.list_physical_devices("GPU"):
            return (
                "TensorFlow finds no usable GPU (its CUDA and cuDNN libraries may be missing "
                "or not match the driver; see TensorFlow's log)"
            )
        return ""

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        graphdef, model_path = resolve_model(config.platform, model_path)
        tf = import_tensorflow()
        params = parse_parameters(config.parameters)
        configure_runtime(tf, params, config.name)
        device_name = tf_device_name(tf, device)
        if graphdef:
            from inferd.backends.tensorflow_graphdef import GraphDefInstance

            return GraphDefInstance(tf, config, model_path, device_name, params, settings)
        return SavedModelInstance(tf, config, model_path, device_name, params)


def tf_device_name(tf: Any, device: Device) -> str:
    """TensorFlow's name for the instance's device. Never a silent CPU: a GPU instance needs
    TensorFlow to see that GPU (the loader has already applied --gpu-fallback)."""
    if device.kind != "gpu":
        return "/CPU:0"
    visible = tf.config.list_logical_devices("GPU")
    if device.index >= len(visible):
        raise unavailable(
            f"the instance asks for GPU {device.index}, but TensorFlow sees {len(visible)} "
            "GPU(s)" + ("" if tf.test.is_built_with_cuda() else " (a build without CUDA)")
        )
    return f"/GPU:{device.index}"


def configure_runtime(tf: Any, params: TfParameters, model: str) -> None:
    """TensorFlow's eager thread pools and GPU memory settings are process-wide and fixed once
    its runtime starts: the first TensorFlow model to load sets them, and a later model that
    asks for other thread counts gets a warning. Default: half the cores for the shared
    intra-op pool, so that instances do not oversubscribe the CPU and the front doors keep
    theirs, and one inter-op thread per core, so that instances run side by side."""
    cores = os.cpu_count() or 1
    intra = params.intra_op_threads
    inter = params.inter_op_threads
    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(max(1, cores // 2) if intra is None else intra)
        threading.set_inter_op_parallelism_threads(cores if inter is None else inter)
        for gpu in tf.config.list_physical_devices("GPU"):
            # As Triton's default (allow_growth): take GPU memory as needed, not all at once.
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # the runtime has started: keep what the first model set
        current = {
            INTRA_OP_THREADS: threading.get_intra_op_parallelism_threads(),
            INTER_OP_THREADS: threading.get_inter_op_parallelism_threads(),
        }
        for key, wanted in ((INTRA_OP_THREADS, intra), (INTER_OP_THREADS, inter)):
            if wanted is not None and wanted != current[key]:
                log.warning(
                    "model '%s': %s=%d does not apply: TensorFlow's thread pools are "
                    "process-wide and already have %d threads",
                    model,
                    key,
                    wanted,
                    current[key],
                )


def read_signature(tf: Any, model_path: Path, params: TfParameters) -> Signature:
    """The chosen signature's keys, types and shapes, read from saved_model.pb without loading
    the model (no variables restored, no runtime started)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    if not model_path.is_dir():
        raise invalid(f"SavedModel folder {model_path} does not exist")
    saved = saved_model_pb2.SavedModel()
    binary, text = model_path / "saved_model.pb", model_path / "saved_model.pbtxt"
    try:
        if binary.is_file():
            saved.ParseFromString(binary.read_bytes())
        elif text.is_file():
            text_format.Parse(text.read_text(encoding="utf-8"), saved)
        else:
            raise invalid(f"{model_path} is not a SavedModel: it has no saved_model.pb")
    except (OSError, DecodeError, text_format.ParseError) as exc:
        raise invalid(f"failed to read the SavedModel {model_path}: {exc}") from None
    graphs = [g for g in saved.meta_graphs if params.graph_tag in g.meta_info_def.tags]
    if not graphs:
        tags = sorted({tag for g in saved.meta_graphs for tag in g.meta_info_def.tags})
        raise invalid(
            f"the SavedModel {model_path} has no graph tagged '{params.graph_tag}' "
            f"(parameter TF_GRAPH_TAG); its tags are: {', '.join(tags) or 'none'}"
        )
    signatures = graphs[0].signature_def
    key = pick_signature(signatures.keys(), params.signature_def)
    definition = signatures[key]

    def tensors(infos: Mapping[str, Any]) -> tuple[TfTensor, ...]:
        out = []
        for name, info in sorted(infos.items()):
            # Sparse and ragged (composite) tensors have no dense dtype inferd can feed.
            dense = info.WhichOneof("encoding") == "name"
            dtype = types_pb2.DataType.Name(info.dtype) if dense else "a composite tensor"
            shape = info.tensor_shape
            dims = None if shape.unknown_rank else tuple(int(d.size) for d in shape.dim)
            out.append(TfTensor(name, dtype, dims))
        return tuple(out)

    return Signature(key, tensors(definition.inputs), tensors(definition.outputs))


class SavedModelInstance(ModelInstance):
    """One loaded SavedModel and its signature function, placed on one device. Inputs become
    tensors with one copy (TensorFlow owns its buffers); outputs come back as numpy views of
    the result tensors, without a copy. Not `runs_on_any_thread`: a signature call costs more
    CPU than the loop may spend inline, and it releases the GIL while it runs, which only a
    thread of its own turns into concurrency."""

    def __init__(
        self, tf: Any, config: ModelConfig, model_path: Path, device: str, params: TfParameters
    ) -> None:
        self._tf = tf
        self._device = device
        try:
            with tf.device(device):
                self._model: Any = tf.saved_model.load(str(model_path), tags=[params.graph_tag])
        except Exception as exc:  # TensorFlow raises many types for bad or foreign files
            raise invalid(f"failed to load the SavedModel {model_path}: {exc}") from None
        key = pick_signature(self._model.signatures.keys(), params.signature_def)
        self._function: Any = self._model.signatures[key]
        # Sequence models: the implicit state comes back to the scheduler too.
        states = sequence_tensors(config.sequence_batching)[1]
        self._output_names = (*(t.name for t in config.outputs), *states)
        batched = config.max_batch_size > 0
        _, declared = self._function.structured_input_signature
        outputs = self._function.structured_outputs
        dims = {t.name: list(t.dims) for t in (*config.inputs, *config.outputs)}
        specs = [
            to_spec(TfTensor(name, "", tf_shape(spec.shape)), dims.get(name), batched)
            for name, spec in (*declared.items(), *outputs.items())
        ]
        self._scalar_items = scalar_items((*config.inputs, *config.outputs), specs, batched)

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._function is not None, "execute() after close()"
        tf = self._tf
        feed = {}
        for name, array in inputs.items():
            if name in self._scalar_items:
                array = array.reshape(array.shape[:-1])
            feed[name] = tf.convert_to_tensor(array)
        try:
            with tf.device(self._device):
                results = self._function(**feed)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            raise invalid(f"TensorFlow rejected the inputs: {tf_error_text(exc)}") from None
        outputs = {name: np.asarray(results[name]) for name in self._output_names}
        restore_item_dims(outputs, self._scalar_items)
        return outputs

    def close(self) -> None:
        self._function = None
        self._model = None


def tf_error_text(exc: BaseException) -> str:
    """The line of a TensorFlow error that says what went wrong, with the node: its message
    also holds a header, graph stack traces and op names that mean nothing to a client."""
    text = getattr(exc, "message", "") or str(exc)
    node = ""
    for line in text.splitlines():
        if line.startswith("Detected at node "):
            node = line.removeprefix("Detected at node ").split(" ", 1)[0]
        elif line and not line[0].isspace() and line[0] not in "<[" and not line.endswith(":"):
            return f"{line} (node {node})" if node else line
    return text.strip() or type(exc).__name__
