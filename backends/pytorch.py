"""PyTorch backend, as Triton's libtorch backend: TorchScript models (`platform:
"pytorch_libtorch"` or `backend: "pytorch"`, file model.pt), one loaded module per instance.

The config names the tensors (TorchScript keeps no names): inputs by the forward() argument
names, else by `<name>__<index>`, else in config order; outputs by `<name>__<index>`, else in
config order of what forward() returns (a tensor, or a tuple or list of them). A single
`Dict[str, Tensor]` argument takes the inputs by their config names. BYTES tensors are 1-D
lists of strings. torch is an optional extra (inferd[pytorch]), imported only when a model of
this backend loads; its objects are typed Any so that this module type-checks without it.

The config's `parameters` follow Triton's: INFERENCE_MODE, DISABLE_OPTIMIZED_EXECUTION,
ENABLE_CACHE_CLEANING, ENABLE_WEIGHT_SHARING, INTRA_OP_THREAD_COUNT and INTER_OP_THREAD_COUNT
(process-wide in PyTorch: the first model that sets them wins, as in Triton).

PyTorch 2 packages (`platform: "torch_aoti"`, model.pt2) run in pytorch_aoti.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.gpu import GpuInfo
from inferd.backends.registry import INSTALL_HINTS
from inferd.backends.shared_objects import SharedObjects
from inferd.repository.config import ModelConfig, ModelConfigProto, OutputOrder
from inferd.repository.sequence_config import sequence_tensors
from inferd.server.errors import ErrorCode, InferdError, internal, invalid, unsupported
from inferd.server.types import DataType

log = logging.getLogger(__name__)

PLATFORM = "pytorch_libtorch"
AOTI_PLATFORM = "torch_aoti"  # PyTorch 2 packages: pytorch_aoti.py
AOTI_MODEL_FILE = "model.pt2"
_NAMED_INDEX = re.compile(r"^.*__(\d+)$")
_BOOLEAN_PARAMETERS = (
    "INFERENCE_MODE",
    "DISABLE_OPTIMIZED_EXECUTION",
    "ENABLE_CACHE_CLEANING",
    "ENABLE_WEIGHT_SHARING",
    # Accepted as Triton's are; the Python API runs TorchScript's default executor with them.
    "ENABLE_JIT_EXECUTOR",
    "ENABLE_JIT_PROFILING",
    "ENABLE_TENSOR_FUSER",
    "ENABLE_NVFUSER",
)
_THREAD_PARAMETERS = ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT")
# PyTorch's thread pools are the process's: pool -> who sized it ("explicit": a model's
# parameter, which later models cannot change; "default": inferd's serving default).
_threads_sized: dict[str, str] = {}
_threads_lock = threading.Lock()


def import_torch() -> Any:
    """The torch module, or a load error that says what to install."""
    if "torch" not in sys.modules:
        # PyTorch's OpenMP threads spin after each operator by default, taking the CPU from
        # the event loop and the other instances (ten times fewer answers at one request in
        # flight on 2 cores, measured): a server wants them asleep. Read when OpenMP loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError as exc:
        raise unsupported(f"PyTorch is not installed ({exc}); {INSTALL_HINTS['pytorch']}") from None
    return torch


def torch_dtype(torch: Any, datatype: DataType) -> Any:
    """The torch dtype of a config data type; None where libtorch has none (BYTES: lists)."""
    return {
        DataType.BOOL: torch.bool,
        DataType.UINT8: torch.uint8,
        DataType.INT8: torch.int8,
        DataType.INT16: torch.int16,
        DataType.INT32: torch.int32,
        DataType.INT64: torch.int64,
        DataType.FP16: torch.float16,
        DataType.FP32: torch.float32,
        DataType.FP64: torch.float64,
        DataType.BF16: torch.bfloat16,
    }.get(datatype)


@dataclass(frozen=True, slots=True)
class TorchParameters:
    inference_mode: bool = False
    optimized_execution: bool = True
    cache_cleaning: bool = False
    weight_sharing: bool = False  # a model's instances on one device share one loaded module
    intra_op_threads: int = 0  # 0: inferd's default (set_threads)
    inter_op_threads: int = 0


def parse_parameters(parameters: Mapping[str, str], model: str) -> TorchParameters:
    """The config's parameters this backend reads; a malformed value fails the load."""
    flags = read_flags(parameters, _BOOLEAN_PARAMETERS, model)
    intra, inter = read_thread_counts(parameters, model)
    return TorchParameters(
        inference_mode=flags.get("INFERENCE_MODE", False),
        optimized_execution=not flags.get("DISABLE_OPTIMIZED_EXECUTION", False),
        cache_cleaning=flags.get("ENABLE_CACHE_CLEANING", False),
        weight_sharing=flags.get("ENABLE_WEIGHT_SHARING", False),
        intra_op_threads=intra,
        inter_op_threads=inter,
    )


def read_flags(parameters: Mapping[str, str], keys: Sequence[str], model: str) -> dict[str, bool]:
    """The boolean parameters among `keys` that the config sets."""
    flags: dict[str, bool] = {}
    for key in keys:
        raw = parameters.get(key)
        if raw is None:
            continue
        if raw.strip().lower() not in ("true", "false"):
            raise invalid(f"model '{model}': parameter {key} must be true or false, got '{raw}'")
        flags[key] = raw.strip().lower() == "true"
    return flags


def read_thread_counts(parameters: Mapping[str, str], model: str) -> tuple[int, int]:
    """INTRA_OP_THREAD_COUNT and INTER_OP_THREAD_COUNT; 0 where the config leaves them."""
    counts: list[int] = []
    for key in _THREAD_PARAMETERS:
        raw = parameters.get(key)
        if raw is not None and (not raw.strip().isdigit() or int(raw) < 1):
            raise invalid(
                f"model '{model}': parameter {key} must be a positive integer, got '{raw}'"
            )
        counts.append(int(raw) if raw is not None else 0)
    return counts[0], counts[1]


def set_threads(torch: Any, intra: int, inter: int, cpu_instances: int) -> None:
    """Size PyTorch's process-wide pools: the first model that sets a count wins, as in
    Triton. Without one (and without OMP_NUM_THREADS), the intra-op pool gets what inferd
    gives ONNX Runtime: half the cores, shared among the model's CPU instances. PyTorch's own
    default, every core, makes its threads and the event loop take turns on a small machine."""
    with _threads_lock:
        if intra and _threads_sized.get("intra") != "explicit":
            torch.set_num_threads(intra)
            _threads_sized["intra"] = "explicit"
        elif not intra and "intra" not in _threads_sized and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // (2 * max(1, cpu_instances))))
            _threads_sized["intra"] = "default"
        if inter and "inter" not in _threads_sized:
            try:
                torch.set_num_interop_threads(inter)
            except RuntimeError as exc:  # PyTorch allows it once, before any parallel work
                log.warning("INTER_OP_THREAD_COUNT not applied: %s", exc)
            _threads_sized["inter"] = "explicit"


def index_map(names: Sequence[str], forward_arguments: Sequence[str]) -> dict[str, int]:
    """Where each config tensor goes: its forward() argument's position when every name is
    one, else the index in `<name>__<index>` when every name has one, else config order
    (Triton's three naming conventions, tried in that order)."""
    if forward_arguments and all(name in forward_arguments for name in names):
        return {name: forward_arguments.index(name) for name in names}
    indexed = [_NAMED_INDEX.match(name) for name in names]
    if all(indexed):
        return {name: int(found[1]) for name, found in zip(names, indexed, strict=True) if found}
    return {name: position for position, name in enumerate(names)}


class PyTorchBackend(Backend):
    name = "pytorch"
    output_order = OutputOrder.NAME
    platforms = (PLATFORM, AOTI_PLATFORM)
    default_model_filename = "model.pt"

    @classmethod
    def model_filename(cls, config: ModelConfigProto) -> str:
        if config.platform == AOTI_PLATFORM and not config.default_model_filename:
            return AOTI_MODEL_FILE
        return super().model_filename(config)

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        # Triton's PyTorch backend completes nothing: TorchScript keeps no tensor names, and
        # an AOTInductor package no datatypes or shapes.
        if not config.platform and not config.backend:
            config.platform = PLATFORM

    @classmethod
    def gpu_unavailable_reason(cls, gpus: GpuInfo) -> str:
        try:
            torch = import_torch()
        except InferdError as error:
            return error.message
        if torch.version.cuda is None:
            return f"this PyTorch ({torch.__version__}) is a CPU-only build"
        if not torch.cuda.is_available():
            return f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU"
        return ""

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        if config.platform == AOTI_PLATFORM:
            from inferd.backends.pytorch_aoti import AotiInstance

            return AotiInstance(config, model_path, device, settings.total_cpu_instances)
        return PyTorchInstance(config, model_path, device, settings.total_cpu_instances)


class PyTorchInstance(ModelInstance):
    def __init__(
        self, config: ModelConfig, model_path: Path, device: Device, cpu_instances: int = 1
    ) -> None:
        torch = self._torch = import_torch()
        self._parameters = parse_parameters(config.parameters, config.name)
        parameters = self._parameters
        set_threads(torch, parameters.intra_op_threads, parameters.inter_op_threads, cpu_instances)
        self._device = torch.device("cuda", device.index) if device.kind == "gpu" else None
        # A CPU module may be called from any thread: short batches then run on the event loop
        # instead of paying a thread hop (CUDA work stays on the instance's thread).
        self.runs_on_any_thread = self._device is None and device.kind != "model"
        if not model_path.is_file():
            raise invalid(f"model file {model_path} does not exist")
        # KIND_MODEL: the module stays where it was saved and places its tensors itself.
        location = None if device.kind == "model" else (self._device or "cpu")
        self._shared_key: tuple[object, ...] | None = None
        if self._parameters.weight_sharing:  # the file as it is now: a reload reads it anew
            stat = model_path.stat()
            self._shared_key = (str(model_path), stat.st_mtime_ns, stat.st_size, str(location))
            module = SHARED_MODULES.acquire(
                self._shared_key, lambda: _load(torch, model_path, location, config.name)
            )
        else:
            module = _load(torch, model_path, location, config.name)
        self._module: Any = module
        controls, state_outputs = sequence_tensors(config.sequence_batching)
        batch_inputs = [name for item in config.batch_inputs for name in item.targets]
        names = [t.name for t in config.inputs] + batch_inputs + controls
        arguments, self._dict_input = _forward_arguments(module, config.name)
        if not self._dict_input and len(arguments) != len(names):
            raise invalid(
                f"unable to load model '{config.name}', configuration expects {len(names)} "
                f"inputs, model provides {len(arguments)}"
            )
        self._inputs = index_map(names, arguments)
        types = {t.name: t.datatype for t in (*config.inputs, *config.outputs)}
        if config.sequence_batching is not None:
            types |= {c.name: c.datatype for c in config.sequence_batching.controls}
            types |= {s.output_name: s.datatype for s in config.sequence_batching.states}
            types |= {s.input_name: s.datatype for s in config.sequence_batching.states}
        for name in (*names, *(t.name for t in config.outputs)):
            datatype = types.get(name)
            if datatype not in (None, DataType.BYTES) and torch_dtype(torch, datatype) is None:
                raise internal(
                    f"unsupported datatype {datatype.config_name} for '{name}' for model "
                    f"'{config.name}'"
                )
        batched = int(config.max_batch_size > 0)
        for tensor in (*config.inputs, *config.outputs):  # strings are lists: one dim
            shape = tensor.reshape if tensor.reshape is not None else tensor.dims
            if tensor.datatype is DataType.BYTES and len(shape) + batched > 1:
                raise internal(
                    "Triton only supports 1 dimensional List of String as input or output for "
                    f"'{tensor.name}' for model '{config.name}'"
                )
        self._types = types
        # What each output must come back as (None: strings, or a tensor the config leaves
        # untyped), looked up once rather than per batch.
        self._output_dtypes = {
            name: torch_dtype(torch, datatype) for name, datatype in types.items()
        }
        output_names = [t.name for t in config.outputs] + state_outputs
        self._outputs = index_map(output_names, ())
        self._model = config.name

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        try:
            with self._mode():
                if self._dict_input:
                    result = self._module(
                        {name: self._tensor(array) for name, array in inputs.items()}
                    )
                else:
                    arguments: list[Any] = [None] * len(self._inputs)
                    for name, array in inputs.items():
                        arguments[self._inputs[name]] = self._tensor(array)
                    result = self._module(*arguments)
        except InferdError:
            raise
        except Exception as exc:
            raise internal(f"PyTorch execute failure: {exc}") from None
        finally:
            if self._parameters.cache_cleaning and self._device is not None:
                torch.cuda.empty_cache()
        returned = list(result) if isinstance(result, tuple | list) else [result]
        outputs: dict[str, np.ndarray] = {}
        for name, index in self._outputs.items():
            if not 0 <= index < len(returned):
                raise InferdError(
                    ErrorCode.INVALID_ARG,
                    f"The output {name} in the model configuration refers to an output index "
                    f"which doesn't exist. This model has {len(returned)} outputs",
                )
            outputs[name] = self._array(name, returned[index])
        return outputs

    @contextlib.contextmanager
    def _mode(self) -> Iterator[None]:
        torch = self._torch
        grad = torch.inference_mode() if self._parameters.inference_mode else torch.no_grad()
        with grad, torch.jit.optimized_execution(self._parameters.optimized_execution):
            yield

    def _tensor(self, array: np.ndarray) -> Any:
        """An input as forward() takes it: a tensor on the instance's device, or a list of
        strings (BYTES)."""
        torch = self._torch
        if array.dtype == object:  # BYTES: 1-D, as Triton allows
            return [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in array.reshape(-1)
            ]
        return to_tensor(torch, array, self._device)

    def _array(self, name: str, value: Any) -> np.ndarray:
        """An output as the wire takes it, its type checked against the config's."""
        torch = self._torch
        datatype = self._types.get(name)
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            if datatype is not DataType.BYTES:
                raise internal(f"output '{name}' of model '{self._model}' is a list of strings")
            return np.array([v.encode() for v in value], dtype=object)
        if not isinstance(value, torch.Tensor):
            raise internal(
                f"output '{name}' of model '{self._model}' is a {type(value).__name__}, not a "
                "tensor"
            )
        tensor = value.detach().cpu().contiguous()
        if datatype is not None and tensor.dtype != self._output_dtypes[name]:
            raise internal(
                f"unexpected datatype {tensor.dtype} for inference output '{name}', expecting "
                f"{datatype.config_name}"
            )
        return to_array(torch, tensor)

    def close(self) -> None:
        self._module = None
        if self._shared_key is not None:
            SHARED_MODULES.release(self._shared_key)
        if self._device is not None:
            self._torch.cuda.empty_cache()


def to_tensor(torch: Any, array: np.ndarray, device: Any) -> Any:
    """A numeric input as a tensor, on `device` (None: the CPU)."""
    if array.dtype == ml_dtypes.bfloat16:
        tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    else:
        if not array.flags.writeable:  # torch wants a writable buffer; it never writes
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor if device is None else tensor.to(device, non_blocking=False)


def to_array(torch: Any, tensor: Any) -> np.ndarray:
    """A contiguous CPU tensor as an array, bfloat16 included."""
    if tensor.dtype == torch.bfloat16:
        bits: np.ndarray = tensor.view(torch.int16).numpy()
        return bits.view(ml_dtypes.bfloat16)
    array: np.ndarray = tensor.numpy()
    return array


_QUIET_LOAD = threading.Lock()


def _load(torch: Any, model_path: Path, location: Any, model: str) -> Any:
    try:
        # torch 2.13 deprecates TorchScript, which is what Triton's backend serves. The lock:
        # catch_warnings swaps process-wide filters, which loads on two threads would mix up.
        with _QUIET_LOAD, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(model_path), map_location=location)
    except Exception as exc:  # TorchScript raises its own types for a bad file
        raise invalid(f"failed to load model '{model}': {exc}") from None
    return module.eval()


# ENABLE_WEIGHT_SHARING: one loaded module per file and device, for every instance that asks
# (TorchScript's forward() may run on several threads).
SHARED_MODULES = SharedObjects()


def _forward_arguments(module: Any, model: str) -> tuple[list[str], bool]:
    """forward()'s argument names (self left out), and whether it takes one Dict[str, Tensor].
    Arguments of other kinds than tensors and lists fail the load, in Triton's words."""
    arguments = list(module.forward.schema.arguments)
    if arguments and arguments[0].type.kind() == "ClassType":  # the module itself
        arguments = arguments[1:]
    kinds = [a.type.kind() for a in arguments]
    if len(arguments) == 1 and kinds[0] == "DictType":
        return [], True
    if kinds.count("DictType"):
        raise internal(
            "Multiple inputs of kind DictType were detected. Only a single input of type "
            "Dict(str, Tensor) is supported."
        )
    for argument, kind in zip(arguments, kinds, strict=True):
        if kind not in ("TensorType", "ListType"):
            raise internal(
                f"An input of type '{argument.type}' was detected in the model. Only a single "
                "input of type Dict(str, Tensor) or input(s) of type Tensor are supported."
            )
    return [a.name for a in arguments], False
