"""OpenVINO models, served as Triton's openvino backend serves them: `backend: "openvino"`, an
IR (`model.xml` beside `model.bin`) or any file OpenVINO reads (ONNX, TensorFlow, TensorFlow
Lite, PaddlePaddle) named by `default_model_filename`, on the CPU.

Unlike Triton's, a batching model takes any batch size up to max_batch_size: its inputs' first
dim is made dynamic, where Triton fixes it at max_batch_size and needs ENABLE_BATCH_PADDING to
run smaller batches."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from tritonclient.grpc import model_config_pb2 as pb

from inferd.backends.autocomplete import (
    TensorSpec,
    check_batch_inputs,
    check_tensors,
    complete_max_batch_size,
    complete_tensors,
    model_dims_of,
    regular_tensors,
    restore_item_dims,
    scalar_items,
)
from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.shared_objects import SharedObjects
from inferd.repository.config import ModelConfig, ModelConfigProto
from inferd.repository.sequence_config import generated_names, sequence_tensors
from inferd.server.errors import InferdError, internal, invalid
from inferd.server.types import DataType

# OpenVINO's element types that Triton's backend serves, by OpenVINO's names.
_TYPES: Mapping[str, DataType] = {
    "boolean": DataType.BOOL,
    "u8": DataType.UINT8,
    "u16": DataType.UINT16,
    "u32": DataType.UINT32,
    "u64": DataType.UINT64,
    "i8": DataType.INT8,
    "i16": DataType.INT16,
    "i32": DataType.INT32,
    "i64": DataType.INT64,
    "f16": DataType.FP16,
    "f32": DataType.FP32,
}
_ELEMENT_TYPES: Mapping[DataType, ov.Type] = {
    datatype: ov.Type(datatype.numpy) for datatype in _TYPES.values()
}


@dataclass(frozen=True, slots=True)
class OpenVinoParameters:
    """The config's `parameters` that Triton's backend reads (values in any case); it
    ignores any other key, and so does inferd."""

    device: str = "CPU"  # TARGET_DEVICE
    properties: Mapping[str, str] | None = None  # compile properties; None: the defaults
    reshape_io_layers: bool = False  # inputs take the config's dims
    extension: str = ""  # CPU_EXTENSION_PATH: a library of custom operations


def parse_parameters(parameters: Mapping[str, str]) -> OpenVinoParameters:
    values = {key: value.strip().lower() for key, value in parameters.items()}
    properties: dict[str, str] = {}
    streams = values.get("NUM_STREAMS")
    if streams is not None:
        if streams not in ("auto", "numa") and not streams.isdigit():
            raise invalid(
                "expected the parameter 'NUM_STREAMS' to be either AUTO/NUMA/<int_value>, "
                f"got {parameters['NUM_STREAMS']}"
            )
        properties["NUM_STREAMS"] = streams.upper()
    hint = values.get("PERFORMANCE_HINT")
    if hint is not None:
        if hint not in ("latency", "throughput", "cumulative_throughput"):
            raise invalid(
                "expected the parameter 'PERFORMANCE_HINT' to be "
                f"LATENCY/THROUGHPUT/CUMULATIVE_THROUGHPUT, got {parameters['PERFORMANCE_HINT']}"
            )
        properties["PERFORMANCE_HINT"] = hint.upper()
    for key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS"):
        if key in values:
            if not values[key].isdigit():
                raise invalid(
                    f"expected the parameter '{key}' to be a non-negative number, "
                    f"got {parameters[key]}"
                )
            properties[key] = values[key]
    if "HINT_BF16" in values:
        if values["HINT_BF16"] != "yes":
            raise invalid(
                f"expected the parameter 'HINT_BF16' to be YES, got {parameters['HINT_BF16']}"
            )
        properties["INFERENCE_PRECISION_HINT"] = "bf16"
    return OpenVinoParameters(
        device=values.get("TARGET_DEVICE", "cpu").upper(),
        properties=properties,
        reshape_io_layers=values.get("RESHAPE_IO_LAYERS") == "yes",
        extension=parameters.get("CPU_EXTENSION_PATH", "").strip(),
    )


def serving_properties(parameters: OpenVinoParameters, cpu_instances: int) -> dict[str, str]:
    """What the model is compiled with, once for all its instances: its parameters, and where
    they say nothing, inferd's serving default, as for ONNX Runtime: a stream per instance
    (each runs one batch at a time) and half the cores, the other half left to the front
    doors. OpenVINO's own default, every core, makes its threads and the event loop take
    turns."""
    properties = dict(parameters.properties or {})
    if parameters.device != "CPU":
        return properties
    if "PERFORMANCE_HINT" not in properties:
        properties.setdefault("NUM_STREAMS", str(cpu_instances))
    cores = os.cpu_count() or 1
    # OpenVINO runs no more streams than threads.
    properties.setdefault("INFERENCE_NUM_THREADS", str(max(cpu_instances, cores // 2)))
    return properties


def tensor_specs(ports: Iterable[Any]) -> list[TensorSpec]:
    """OpenVINO's ports as specs; dynamic dims are variable (-1)."""
    specs = []
    for port in ports:
        type_name = port.get_element_type().get_type_name()
        shape = port.get_partial_shape()
        dims = (
            ()
            if shape.rank.is_dynamic
            else tuple(d.get_length() if d.is_static else -1 for d in shape)
        )
        specs.append(TensorSpec(port.get_any_name(), type_name, _TYPES.get(type_name), dims))
    return specs


@dataclass(frozen=True, slots=True)
class _Layout:
    """What the config asks of the model's tensors, from either form of the config."""

    batched: bool
    dims: Mapping[str, Sequence[int]]  # input -> dims the model takes (RESHAPE_IO_LAYERS only)
    types: Mapping[str, DataType]  # tensor -> datatype the config gives it


def _openvino_error(what: str, exc: Exception) -> InferdError:
    return internal(f"openvino error in {what} : {exc}")


def _not_found(model_file: Path, model: str) -> InferdError:
    return invalid(f"unable to find '{model_file}' for model '{model}'")


def _read(core: Any, model_file: Path, model: str, extension: str) -> Any:
    if not model_file.exists():
        raise _not_found(model_file, model)
    if extension:
        try:
            core.add_extension(extension)
        except Exception as exc:
            raise _openvino_error("loading custom CPU extensions", exc) from None
    try:
        return core.read_model(str(model_file))
    except Exception as exc:  # OpenVINO raises its own types for a bad file
        raise _openvino_error("reading model", exc) from None


def _fit(model: Any, layout: _Layout) -> Any:
    """The model as the config uses it: a batching model's inputs take any batch size; with
    RESHAPE_IO_LAYERS its inputs take the config's dims; tensors whose config datatype
    differs from the model's are converted to it (Triton's pre/post-processing)."""
    shapes: dict[str, Any] = {}
    for port in model.inputs:
        name = port.get_any_name()
        shape = port.get_partial_shape()
        if name in layout.dims:
            dims = [-1] * layout.batched + list(layout.dims[name])
        elif layout.batched and shape.rank.is_static and len(shape) > 0:
            dims = [-1, *(d.get_length() if d.is_static else -1 for d in list(shape)[1:])]
        else:
            continue
        shapes[name] = ov.PartialShape([ov.Dimension.dynamic() if d == -1 else d for d in dims])
    if shapes:
        try:
            model.reshape(shapes)
        except Exception as exc:
            raise _openvino_error("setting shape", exc) from None
    processing = None
    for ports, side in ((model.inputs, "input"), (model.outputs, "output")):
        for port in ports:
            name = port.get_any_name()
            want = layout.types.get(name)
            if want is None or _TYPES.get(port.get_element_type().get_type_name()) is want:
                continue
            if want not in _ELEMENT_TYPES:
                raise internal(
                    f"unsupported datatype {want.config_name} for {side} '{name}' for model "
                    f"'{model.friendly_name}'"
                )
            processing = processing or ov.preprocess.PrePostProcessor(model)
            stage = processing.input(name) if side == "input" else processing.output(name)
            stage.tensor().set_element_type(_ELEMENT_TYPES[want])
    if processing is None:
        return model
    try:
        return processing.build()
    except Exception as exc:
        raise _openvino_error("apply model input preprocessing", exc) from None


def _check_names(
    model_name: str, inputs: Sequence[str], outputs: Sequence[str], model: Any
) -> None:
    """Triton's checks, in its words: as many inputs as the model has, each one of them; every
    output one of the model's."""
    have_inputs = sorted({p.get_any_name() for p in model.inputs})
    if len(inputs) != len(have_inputs):
        raise invalid(
            f"unable to load model '{model_name}', configuration expects {len(inputs)} inputs, "
            f"model provides {len(have_inputs)}"
        )
    have_outputs = sorted({p.get_any_name() for p in model.outputs})
    for kind, names, have in (("input", inputs, have_inputs), ("output", outputs, have_outputs)):
        for name in names:
            if name not in have:
                raise invalid(
                    f"unexpected inference {kind} '{name}', allowed {kind}s are: " + ", ".join(have)
                )


class OpenVinoBackend(Backend):
    name = "openvino"
    default_model_filename = "model.xml"

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        parameters = parse_parameters({k: v.string_value for k, v in config.parameters.items()})
        model = _read(ov.Core(), model_path, config.name, parameters.extension)
        inputs, outputs = tensor_specs(model.inputs), tensor_specs(model.outputs)
        if not config.platform and not config.backend:  # found by its model.xml
            config.backend = cls.name
        if settings.auto_complete:
            complete_max_batch_size(config, [*inputs, *outputs], settings.default_max_batch_size)
            regular_inputs, regular_outputs = regular_tensors(config, inputs, outputs)
            complete_tensors(config.input, regular_inputs, config.max_batch_size, model_path)
            complete_tensors(config.output, regular_outputs, config.max_batch_size, model_path)
        # The sequence batcher's controls and states and the batch inputs are inputs too.
        generated, _ = generated_names(config)
        generated |= {target for item in config.batch_input for target in item.target_name}
        _check_names(
            config.name,
            [t.name for t in config.input] + sorted(generated),
            [t.name for t in config.output],
            model,
        )
        types = {
            t.name: DataType.from_config_name(pb.DataType.Name(t.data_type))
            for t in (*config.input, *config.output)
        }
        batched = config.max_batch_size > 0
        dims = (
            {t.name: model_dims_of(t) for t in config.input} if parameters.reshape_io_layers else {}
        )
        model = _fit(model, _Layout(batched, dims, types))
        inputs, outputs = tensor_specs(model.inputs), tensor_specs(model.outputs)
        check_tensors("input", config.input, inputs, batched, model_path)
        scattered = {target for item in config.batch_output for target in item.target_name}
        check_tensors("output", config.output, outputs, batched, model_path, scattered)
        check_batch_inputs(config, inputs, model_path)

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        if device.kind == "model":
            raise invalid(
                f"unable to load model '{config.name}', Triton openVINO backend supports only "
                "CPU device"
            )
        return OpenVinoInstance(config, model_path, settings.total_cpu_instances)


class OpenVinoInstance(ModelInstance):
    runs_on_any_thread = True  # an infer request may be run from any thread, one at a time

    def __init__(self, config: ModelConfig, model_file: Path, cpu_instances: int = 1) -> None:
        parameters = parse_parameters(config.parameters)
        layout = _Layout(
            config.max_batch_size > 0,
            {t.name: t.reshape or t.dims for t in config.inputs}
            if parameters.reshape_io_layers
            else {},
            {t.name: t.datatype for t in (*config.inputs, *config.outputs)},
        )
        properties = serving_properties(parameters, max(1, cpu_instances))

        def compile_model() -> Any:  # by the model's first instance only
            core = ov.Core()
            model = _fit(_read(core, model_file, config.name, parameters.extension), layout)
            try:
                return core.compile_model(model, parameters.device, properties)
            except Exception as exc:
                raise _openvino_error("loading model", exc) from None

        try:
            stat = model_file.stat()  # the file as it is now: a reload compiles it anew
        except OSError:
            raise _not_found(model_file, config.name) from None
        key = (
            str(model_file),
            stat.st_mtime_ns,
            stat.st_size,
            parameters.device,
            tuple(sorted(properties.items())),
            repr(layout),
        )
        compiled = _COMPILED.acquire(key, compile_model)  # held from here on
        self._shared_key: tuple[object, ...] | None = key
        try:
            self._request: Any = compiled.create_infer_request()
        except Exception as exc:
            self._release()
            raise _openvino_error("creating infer request object", exc) from None
        # Tensors by port index: OpenVINO's name-keyed infer() costs a third more per call.
        self._inputs = {port.get_any_name(): i for i, port in enumerate(compiled.inputs)}
        outputs = {port.get_any_name(): i for i, port in enumerate(compiled.outputs)}
        _, state_outputs = sequence_tensors(config.sequence_batching)
        self._outputs = [(n, outputs[n]) for n in [t.name for t in config.outputs] + state_outputs]
        # Per-item scalars the config writes as dims [1]: reshaped on the way in and out.
        self._scalar_items = scalar_items(
            (*config.inputs, *config.outputs),
            tensor_specs([*compiled.inputs, *compiled.outputs]),
            layout.batched,
        )

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._request
        assert request is not None, "execute() after close()"
        try:
            for name, array in inputs.items():
                if name in self._scalar_items:
                    array = array.reshape(array.shape[:-1])
                # Copied into the request's own input memory: OpenVINO shares only writable
                # arrays, and requests' are read-only views of the wire.
                tensor = request.get_input_tensor(self._inputs[name])
                tensor.shape = array.shape
                tensor.data[...] = array
            request.infer()
        except Exception as exc:
            raise _openvino_error("running inference", exc) from None
        # Copied out: the next batch reuses the request's output memory.
        outputs = {name: request.get_output_tensor(i).data.copy() for name, i in self._outputs}
        restore_item_dims(outputs, self._scalar_items)
        return outputs

    def close(self) -> None:
        self._request = None
        self._release()

    def _release(self) -> None:
        if self._shared_key is not None:
            _COMPILED.release(self._shared_key)
            self._shared_key = None


# Compiled models are the process's, as OpenVINO's own caches are: Triton compiles a model
# once for all its instances, each of which runs its own infer request on it.
_COMPILED = SharedObjects()
