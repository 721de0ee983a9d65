"""PyTorch 2 models compiled ahead of time (`platform: "torch_aoti"`, file model.pt2), as
Triton's PyTorch backend serves them since 26.03: a package that
`torch._inductor.aoti_compile_and_package(torch.export.export(...))` wrote, run by its AOTI
runner, with no Python model code and no TorchScript.

Tensors are named by the package's call spec, as Triton 26.05 names them: the inputs
`ARGS[0]`, `ARGS[1][key]`..., `KWARGS[name]`; the outputs `RESULT` (one tensor) or
`RESULT[0]`, `RESULT[key]`...; and, by their place among them, `INPUT__<i>` and `OUTPUT__<i>`.
The config must declare every tensor: a package keeps no datatypes or shapes to complete it
from (Triton completes nothing either). A package runs on the device it was compiled for.

Parameters, Triton's: INFERENCE_MODE (true), CACHE_CLEANING_ENABLED, DISABLE_CUDNN,
ENABLE_WEIGHT_SHARING, INTRA_OP_THREAD_COUNT and INTER_OP_THREAD_COUNT.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferd.backends.base import Device, ModelInstance
from inferd.backends.pytorch import (
    AOTI_PLATFORM,
    SHARED_MODULES,
    import_torch,
    read_flags,
    read_thread_counts,
    set_threads,
    to_array,
    to_tensor,
    torch_dtype,
)
from inferd.repository.config import ModelConfig
from inferd.server.errors import internal, invalid, unsupported

_ORDINAL = {"input": re.compile(r"^INPUT__(\d+)$"), "output": re.compile(r"^OUTPUT__(\d+)$")}


@dataclass(frozen=True, slots=True)
class AotiParameters:
    inference_mode: bool = True
    cache_cleaning: bool = False
    cudnn: bool = True  # DISABLE_CUDNN=true turns cuDNN off for the whole process
    weight_sharing: bool = False
    intra_op_threads: int = 0
    inter_op_threads: int = 0


def parse_parameters(parameters: Mapping[str, str], model: str) -> AotiParameters:
    if parameters.get("MODEL_INIT_LIBRARY"):
        raise unsupported(
            f"model '{model}': MODEL_INIT_LIBRARY (a native library run before the package "
            "loads) is not supported by inferd"
        )
    keys = ("INFERENCE_MODE", "CACHE_CLEANING_ENABLED", "DISABLE_CUDNN", "ENABLE_WEIGHT_SHARING")
    flags = read_flags(parameters, keys, model)
    intra, inter = read_thread_counts(parameters, model)
    return AotiParameters(
        inference_mode=flags.get("INFERENCE_MODE", True),
        cache_cleaning=flags.get("CACHE_CLEANING_ENABLED", False),
        cudnn=not flags.get("DISABLE_CUDNN", False),
        weight_sharing=flags.get("ENABLE_WEIGHT_SHARING", False),
        intra_op_threads=intra,
        inter_op_threads=inter,
    )


def tensor_names(pytree: Any, in_spec: str, out_spec: str) -> tuple[list[str], list[str]]:
    """The package's inputs and outputs, named from its call spec (torch's pytree specs: the
    inputs are the tuple (args, kwargs)), in the order the runner takes and returns them."""
    inputs = []
    for path in _leaf_paths(pytree, in_spec):
        head, rest = path[0], path[1:]
        inputs.append(("ARGS" if getattr(head, "idx", 0) == 0 else "KWARGS") + _keys(rest))
    outputs = ["RESULT" + _keys(path) for path in _leaf_paths(pytree, out_spec)]
    return inputs, outputs


def _leaf_paths(pytree: Any, spec_text: str) -> list[tuple[Any, ...]]:
    spec = pytree.treespec_loads(spec_text)
    tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    paths: list[tuple[Any, ...]] = [path for path, _ in pytree.tree_flatten_with_path(tree)[0]]
    return paths


def _keys(path: Sequence[Any]) -> str:
    return "".join(f"[{getattr(key, 'idx', getattr(key, 'key', key))}]" for key in path)


def places(names: Sequence[str], model_names: Sequence[str], kind: str, model: str) -> list[int]:
    """Where each config tensor is among the package's: by its call-spec name, or by
    `INPUT__<i>`/`OUTPUT__<i>`. A name that is neither fails the load, in Triton's words."""
    found = []
    for name in names:
        ordinal = _ORDINAL[kind].match(name)
        if name in model_names:
            found.append(model_names.index(name))
        elif ordinal and int(ordinal[1]) < len(model_names):
            found.append(int(ordinal[1]))
        else:
            raise invalid(
                f'{kind.capitalize()} "{name}" for model instance "{model}" is not found in model '
                f"{kind} map. The model's {kind}s are: {', '.join(model_names)}"
            )
    return found


class AotiInstance(ModelInstance):
    def __init__(
        self, config: ModelConfig, model_file: Path, device: Device, cpu_instances: int = 1
    ) -> None:
        torch = self._torch = import_torch()
        name = self._model = config.name
        parameters = self._parameters = parse_parameters(config.parameters, name)
        if config.sequence_batching is not None:
            raise invalid(f"model '{name}': Sequence batching is not supported yet.")
        set_threads(torch, parameters.intra_op_threads, parameters.inter_op_threads, cpu_instances)
        if not parameters.cudnn:  # PyTorch's switch is the process's, as in Triton
            torch.backends.cudnn.enabled = False
        if not model_file.is_file():
            raise invalid(
                f'PyTorch inductor model file "{model_file}" is unreachable or inaccessible.'
            )
        self._device = torch.device("cuda", device.index) if device.kind == "gpu" else None
        self.runs_on_any_thread = self._device is None
        device_index = device.index if device.kind == "gpu" else -1
        self._shared_key: tuple[object, ...] | None = None
        if parameters.weight_sharing:  # the file as it is now: a reload reads it anew
            stat = model_file.stat()
            key = (str(model_file), stat.st_mtime_ns, stat.st_size, device_index, AOTI_PLATFORM)
            self._shared_key = key
            package = SHARED_MODULES.acquire(key, lambda: _load(torch, model_file, device_index))
        else:
            package = _load(torch, model_file, device_index)
        self._runner = package.loader
        try:
            baked = self._runner.get_metadata().get("AOTI_DEVICE_KEY", "")
            wanted = "cpu" if self._device is None else "cuda"
            if baked and baked != wanted:
                raise invalid(
                    f"model '{name}': {model_file.name} was compiled for {baked}, and "
                    f"KIND_{device.kind.upper()} instances run on {wanted}: export and compile "
                    "it on the device it is to run on"
                )
            model_inputs, model_outputs = tensor_names(
                torch.utils._pytree, *self._runner.get_call_spec()
            )
            if len(config.inputs) != len(model_inputs):
                raise invalid(
                    f'Failed to load model "{name}" configuration expects {len(config.inputs)} '
                    f"inputs, but model expects {len(model_inputs)} inputs."
                )
            inputs = [t.name for t in config.inputs]
            outputs = [t.name for t in config.outputs]
            self._inputs = dict(
                zip(inputs, places(inputs, model_inputs, "input", name), strict=True)
            )
            self._outputs = dict(
                zip(outputs, places(outputs, model_outputs, "output", name), strict=True)
            )
            self._dtypes = {}
            for tensor in (*config.inputs, *config.outputs):
                dtype = torch_dtype(torch, tensor.datatype)
                if dtype is None:
                    raise invalid(
                        f"Unsupported datatype {tensor.datatype.config_name} for "
                        f'"{tensor.name}" for model instance "{name}".'
                    )
                self._dtypes[tensor.name] = (dtype, tensor.datatype.config_name)
        except BaseException:
            self.close()
            raise

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        arguments: list[Any] = [None] * len(self._inputs)
        for name, array in inputs.items():
            arguments[self._inputs[name]] = to_tensor(torch, array, self._device)
        try:
            with self._mode():
                results = self._runner.run(arguments)
        except Exception as exc:
            raise internal(
                f'Inductor model instance "{self._model}" execution failure: {exc}'
            ) from None
        finally:
            if self._parameters.cache_cleaning and self._device is not None:
                torch.cuda.empty_cache()
        outputs: dict[str, np.ndarray] = {}
        for name, index in self._outputs.items():
            tensor = results[index].detach()
            dtype, config_name = self._dtypes[name]
            if tensor.dtype != dtype:
                raise internal(
                    f'Inductor model instance "{self._model}" output tensor "{name}" has '
                    f"datatype {tensor.dtype} but model configuration expects {config_name}."
                )
            outputs[name] = to_array(torch, tensor.cpu().contiguous())
        return outputs

    @contextlib.contextmanager
    def _mode(self) -> Iterator[None]:
        torch = self._torch
        with torch.inference_mode() if self._parameters.inference_mode else torch.no_grad():
            yield

    def close(self) -> None:
        self._runner = None
        if self._shared_key is not None:
            SHARED_MODULES.release(self._shared_key)
            self._shared_key = None
        if self._device is not None:
            self._torch.cuda.empty_cache()


def _load(torch: Any, model_file: Path, device_index: int) -> Any:
    try:
        from torch._inductor import aoti_load_package

        return aoti_load_package(str(model_file), device_index=device_index)
    except Exception as exc:  # a file that is not a package, or one for another device
        raise invalid(f"failed to load '{model_file}' as an AOTInductor package: {exc}") from None
