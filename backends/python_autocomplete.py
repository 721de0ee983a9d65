"""Config auto-complete by a python model: its `TritonPythonModel.auto_complete_config()` gets
the config as a dict behind Triton's ModelConfig methods, and what it returns replaces the
config (strictly parsed again, so a misspelt field is a load error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as pb

from inferd.repository.config import ModelConfigProto, config_to_json
from inferd.server.errors import invalid

_TENSOR_PROPERTIES = ("name", "data_type", "dims", "optional")


class AutoCompleteConfig:
    """The config under completion. Methods raise ValueError where the model contradicts the
    config, as Triton's do; the load then fails with that message."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config

    def as_dict(self) -> dict[str, Any]:
        return self._config

    @property
    def _name(self) -> str:
        return str(self._config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        configured = int(self._config.get("max_batch_size", 0))
        if configured > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {configured}, but auto_complete_config "
                f"of model '{self._name}' sets max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(
                    f"configuration specified '{other}', but auto_complete_config of model "
                    f"'{self._name}' sets 'dynamic_batching'"
                )
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:  # Triton names the parameter so
        self._add_tensor("input", input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add_tensor("output", output)

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        unknown = set(transaction_policy_dict) - {"decoupled"}
        if unknown:
            raise ValueError(
                f"model transaction policy from auto_complete_config of model '{self._name}' "
                f"has properties other than 'decoupled': {sorted(unknown)}"
            )
        policy = self._config.setdefault("model_transaction_policy", {})
        wanted = bool(transaction_policy_dict.get("decoupled", False))
        if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
            raise ValueError(
                f"configuration specified decoupled {policy['decoupled']}, but "
                f"auto_complete_config of model '{self._name}' sets decoupled {wanted}"
            )
        policy["decoupled"] = wanted

    def _add_tensor(self, kind: str, tensor: dict[str, Any]) -> None:
        label = f"{kind} '{tensor.get('name', '')}' from auto_complete_config of '{self._name}'"
        allowed = _TENSOR_PROPERTIES if kind == "input" else _TENSOR_PROPERTIES[:3]
        unknown = set(tensor) - set(allowed)
        if unknown:
            raise ValueError(
                f"{label} has properties other than {list(allowed)}: {sorted(unknown)}"
            )
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                raise ValueError(f"{label} is missing the '{key}' property")
        tensors: list[dict[str, Any]] = self._config.setdefault(kind, [])
        for existing in tensors:
            if existing.get("name") != tensor["name"]:
                continue
            configured_type = existing.get("data_type", "TYPE_INVALID")
            if configured_type not in ("TYPE_INVALID", tensor["data_type"]):
                raise ValueError(
                    f"{label}: the configuration says {configured_type}, the model "
                    f"{tensor['data_type']}"
                )
            configured_dims = list(existing.get("dims", []))
            if configured_dims and configured_dims != list(tensor["dims"]):
                raise ValueError(
                    f"{label}: the configuration says dims {configured_dims}, the model "
                    f"{list(tensor['dims'])}"
                )
            existing.update(tensor)
            return
        tensors.append(dict(tensor))


def run_auto_complete(
    config: ModelConfigProto, model_class: type, model_name: str, model_file: Path
) -> None:
    """Let the model's auto_complete_config() (if it has one) fill in `config`."""
    hook = getattr(model_class, "auto_complete_config", None)
    if hook is None:
        return
    data = config_to_json(config)
    data["name"] = data.get("name") or model_name  # models name it in their messages
    editable = AutoCompleteConfig(data)
    try:
        returned = hook(editable)
    except Exception as exc:
        raise invalid(
            f"{model_file}: auto_complete_config() failed: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(returned, AutoCompleteConfig):  # Triton's words
        raise invalid(
            f"{model_file}: auto_complete_config function in model '{model_name}' must return "
            "a valid pb.ModelConfig object."
        )
    completed = returned
    try:
        parsed = json_format.ParseDict(
            completed.as_dict(), pb.ModelConfig(), ignore_unknown_fields=False
        )
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise invalid(
            f"{model_file}: auto_complete_config() left an invalid config: {exc}"
        ) from None
    config.CopyFrom(parsed)
