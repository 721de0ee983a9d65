"""Forest models (XGBoost, LightGBM, Treelite checkpoints) served as Triton's FIL backend serves
them (`backend: "fil"`), on the CPU through Treelite's tree inference library (GTIL).

The conventions are FIL's: one FP32 input `[num_features]` (NaN = missing), the output
`output__0`; a classifier answers class ids (binary: 1 when the probability is above
`threshold`) or, with `predict_proba`, every class's probability (a binary model with dims
[2] as (1 - p, p)); anything else answers the model's prediction. An output of dims [1]
answers one value per row, shape [batch], as FIL does."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import treelite

from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.shared_objects import SharedObjects
from inferd.repository.config import ModelConfig, ModelConfigProto
from inferd.server.errors import internal, invalid, unsupported
from inferd.server.types import DataType

# model_type -> the file FIL reads when the config names none.
MODEL_FILES: Mapping[str, str] = {
    "xgboost": "xgboost.model",
    "xgboost_json": "xgboost.json",
    "xgboost_ubj": "xgboost.ubj",
    "lightgbm": "model.txt",
    "treelite_checkpoint": "checkpoint.tl",
}
OUTPUT = "output__0"


@dataclass(frozen=True, slots=True)
class FilParameters:
    model_type: str = "xgboost"
    classifier: bool = False
    threshold: float = 0.5
    predict_proba: bool = False
    threads: int = 0  # cpu_nthread; 0: the serving default
    allow_unknown_field: bool = False  # xgboost_allow_unknown_field


def parse_parameters(parameters: Mapping[str, str]) -> FilParameters:
    """FIL's keys. Its GPU tuning keys (algo, storage_type, threads_per_tree, blocks_per_sm,
    transfer_threshold, layout, chunk_size, use_experimental_optimizations) and unknown keys
    are ignored, as FIL ignores unknown keys."""
    model_type = parameters.get("model_type", "xgboost").strip()
    if model_type not in MODEL_FILES:
        raise unsupported(f"{model_type} not recognized as a valid serialization format.")
    # `is_classifier` is FIL's name since 25.09; the repositories out there say `output_class`.
    key = "is_classifier" if "is_classifier" in parameters else "output_class"
    if key not in parameters:
        raise invalid("Required parameter is_classifier not found in config")
    classifier = _bool(parameters, key, False)
    try:
        threshold = float(parameters.get("threshold", "0.5"))
        threads = int(parameters.get("cpu_nthread", "-1"))
    except ValueError as exc:
        raise invalid(f"Bad input for parameter threshold or cpu_nthread: {exc}") from None
    return FilParameters(
        model_type=model_type,
        classifier=classifier,
        threshold=threshold,
        predict_proba=_bool(parameters, "predict_proba", False),
        threads=max(0, threads),
        allow_unknown_field=_bool(parameters, "xgboost_allow_unknown_field", False),
    )


def _bool(parameters: Mapping[str, str], key: str, default: bool) -> bool:
    value = parameters.get(key)
    if value is None:
        return default
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise invalid(f"Bad input for parameter {key}: expected true or false, got '{value}'")
    return text == "true"


def load_model(path: Path, parameters: FilParameters) -> Any:
    """The forest, read by Treelite (blocking)."""
    if not path.is_file():
        raise invalid(f"unable to find '{path}' for model of type {parameters.model_type}")
    frontend = treelite.frontend
    try:
        if parameters.model_type == "lightgbm":
            return frontend.load_lightgbm_model(str(path))
        if parameters.model_type == "treelite_checkpoint":
            return treelite.Model.deserialize(str(path))
        if parameters.model_type == "xgboost" and not _starts_like_json(path):
            return frontend.load_xgboost_model_legacy_binary(str(path))
        # XGBoost 3 writes `xgboost.model` as UBJSON: told apart from JSON by its content.
        return frontend.load_xgboost_model(
            str(path),
            format_choice={"xgboost_json": "json", "xgboost_ubj": "ubjson"}.get(
                parameters.model_type, "inspect"
            ),
            allow_unknown_field=parameters.allow_unknown_field,
        )
    except treelite.TreeliteError as exc:
        raise invalid(f"failed to load {path}: {exc}") from None


def _starts_like_json(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(1) == b"{"


class FilBackend(Backend):
    name = "fil"
    default_model_filename = MODEL_FILES["xgboost"]

    @classmethod
    def model_filename(cls, config: ModelConfigProto) -> str:
        """FIL's file for the config's model_type, unless the config names one (an unknown
        model_type fails the load when the instance reads its parameters)."""
        if config.default_model_filename or "model_type" not in config.parameters:
            return super().model_filename(config)
        model_type = config.parameters["model_type"].string_value.strip()
        return MODEL_FILES.get(model_type, cls.default_model_filename)

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        return FilInstance(config, model_path, settings.total_cpu_instances)


class FilInstance(ModelInstance):
    runs_on_any_thread = True  # GTIL keeps no state per thread and runs without the GIL

    def __init__(self, config: ModelConfig, model_path: Path, cpu_instances: int = 1) -> None:
        parameters = parse_parameters(config.parameters)
        try:
            stat = model_path.stat()  # the file as it is now: a reload reads it anew
        except OSError:
            stat = None  # load_model says what is missing
        # One forest for the model's instances (GTIL predicts from several threads at once).
        key = (str(model_path), stat and (stat.st_mtime_ns, stat.st_size), parameters)
        self._model = _FORESTS.acquire(key, lambda: load_model(model_path, parameters))
        self._key: tuple[object, ...] | None = key
        self._parameters = parameters
        try:
            self._input = _check_tensors(config, self._model)
        except Exception:
            self.close()
            raise
        header = self._model.get_header_accessor()
        self._classes = int(header.get_field("num_class")[0])
        self._output_dims = next(t.dims for t in config.outputs if t.name == OUTPUT)
        # FIL's default, every core, leaves none to the front doors: as for ONNX Runtime,
        # half of them shared among the model's instances. Never more than OpenMP has.
        cores = os.cpu_count() or 1
        default = max(1, cores // (2 * max(1, cpu_instances)))
        self._threads = min(parameters.threads or default, cores)

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.ascontiguousarray(inputs[self._input], dtype=np.float32)
        try:
            raw = treelite.gtil.predict(self._model, rows, nthread=self._threads)
        except treelite.TreeliteError as exc:
            raise internal(f"FIL prediction failed: {exc}") from None
        # (rows, targets, classes) -> (rows, classes): FIL serves single-target forests.
        scores = raw.reshape(rows.shape[0], -1).astype(np.float32, copy=False)
        return {OUTPUT: self._answer(scores)}

    def _answer(self, scores: np.ndarray) -> np.ndarray:
        parameters = self._parameters
        if parameters.classifier and not parameters.predict_proba:
            if self._classes > 1:
                classes: np.ndarray = np.argmax(scores, axis=1).astype(np.float32)
                return classes
            return (scores[:, 0] > parameters.threshold).astype(np.float32)
        if parameters.classifier and self._classes == 1 and self._output_dims == (2,):
            p = scores[:, 0]
            return np.stack([1 - p, p], axis=1)
        if self._output_dims == (1,):
            return scores[:, 0]  # squeezed to [batch], as FIL answers
        return scores

    def close(self) -> None:
        self._model = None
        if self._key is not None:
            _FORESTS.release(self._key)
            self._key = None


# Forests are the process's: a model's instances share one (as Treelite's GTIL allows).
_FORESTS = SharedObjects()


def _check_tensors(config: ModelConfig, model: Any) -> str:
    """FIL's layout: one FP32 input of the model's feature count (FIL does not check it;
    Treelite would pad short rows with NaN and misread long ones), and `output__0`."""
    if config.max_batch_size <= 0:
        raise invalid(f"model '{config.name}': FIL models batch: max_batch_size must be > 0")
    if len(config.inputs) != 1:
        raise invalid(f"model '{config.name}': FIL models have one input, input__0")
    [tensor] = config.inputs
    if tensor.datatype is not DataType.FP32:
        raise invalid(
            f"input '{tensor.name}' is {tensor.datatype.config_name}: FIL models take TYPE_FP32"
        )
    features = int(model.num_feature)
    if tensor.dims != (features,):
        raise invalid(
            f"input '{tensor.name}' has dims {list(tensor.dims)}, but the model reads "
            f"{features} features: dims must be [ {features} ]"
        )
    names = [t.name for t in config.outputs]
    if "treeshap_output" in names:
        raise unsupported("treeshap_output (SHAP values) is not supported on the CPU here")
    if OUTPUT not in names:
        raise invalid(f"model '{config.name}': FIL models answer in output '{OUTPUT}'")
    output = next(t for t in config.outputs if t.name == OUTPUT)
    if output.datatype is not DataType.FP32:
        raise invalid(f"output '{OUTPUT}' must be TYPE_FP32, got {output.datatype.config_name}")
    return tensor.name
