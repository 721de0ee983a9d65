"""MLServer model folders (`model-settings.json`, no config.pbtxt) read as model configs, so
that an MLServer repository serves unchanged: the model runs its MLModel `implementation`
(backends/mlserver.py), behind inferd's front doors and batcher.

What the settings give: the name (else the folder's), `inputs`/`outputs` (MLServer's
metadata: name, datatype, shape; a first dim of -1 is the batch) and adaptive batching
(`max_batch_size`, `max_batch_time` in seconds), which becomes the dynamic batcher. Without both
inputs and outputs the model is schemaless, as MLServer's are: any tensors go in and come out,
and requests are not joined (there is no declared batch dim to join them on).

A repository with no models in it is served, as MLServer serves it, as the one model that the
MLSERVER_MODEL_* environment variables describe, when they name an implementation (KServe's
kserve-mlserver runtime and `mlflow models serve --enable-mlserver` set them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as pb

from inferd.repository.config import ModelConfigProto
from inferd.server.errors import invalid
from inferd.server.types import DATATYPES

SETTINGS_FILE = "model-settings.json"
BACKEND = "mlserver"
UNLIMITED_BATCH = 2**31 - 1  # a config's max_batch_size is an int32
# The config parameter that says whether a batch's requests reach predict() joined (MLServer's
# adaptive batching) or one by one.
JOIN_REQUESTS = "mlserver.adaptive_batching"
# The repository the model was found in: importable, as under `mlserver start REPOSITORY`.
REPOSITORY = "mlserver.repository"
# The config parameter that says the settings come from the MLSERVER_MODEL_* variables.
FROM_ENVIRONMENT = "mlserver.environment"
ENV_PREFIX = "MLSERVER_MODEL_"
ENV_SOURCE = "the MLSERVER_MODEL_* environment variables"


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def boolean(value: Any) -> bool:
    """As pydantic (MLServer's settings) reads a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def holds_settings(folder: Path) -> bool:
    """Whether settings_in(folder) finds any (it stops at the first)."""
    return next(_settings_folders(folder), None) is not None


def settings_in(folder: Path) -> list[Path]:
    """The folders under `folder` (itself included) that hold MLServer settings, as MLServer's
    repository finds them (anywhere below; hidden folders skipped), in their paths' natural
    order (numbers within names counted as numbers: `v0.10.0` after `v0.2.0`)."""
    found = _settings_folders(folder)
    return sorted(found, key=lambda d: natural_key(d.relative_to(folder).as_posix()))


def _settings_folders(folder: Path) -> Iterator[Path]:
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        if SETTINGS_FILE in files:
            yield Path(current)


def settings_name(folder: Path) -> str:
    """The name MLServer serves the settings in `folder` under: their `name`, else the
    folder's (also when they cannot be read: the load then says why). Settings of one name are
    versions of one model."""
    try:
        return _name(read_settings(folder), folder)
    except Exception:
        return folder.name


def _version_label(settings_folder: Path) -> str:
    """The version MLServer gives a version folder: its settings' `parameters.version`, else the
    folder's name (requests may name it instead of its number)."""
    try:
        version = _version(read_settings(settings_folder))
    except Exception:
        version = ""
    return version or settings_folder.name


def _version(settings: Mapping[str, Any]) -> str:
    version = (settings.get("parameters") or {}).get("version")
    return version if isinstance(version, str) else ""


def environment_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The model the MLSERVER_MODEL_* variables describe (any case, as MLServer reads them),
    shaped as its model-settings.json; None unless they name an implementation. Only what the
    config is made of is read here: the model itself gets MLServer's own reading of them."""
    values = _environment_values(environ)
    if not values.get("implementation"):
        return None
    settings: dict[str, Any] = {
        key: values[key]
        for key in ("name", "implementation", "max_batch_size", "max_batch_time")
        if key in values
    }
    for key in ("inputs", "outputs"):  # lists, which settings read from JSON
        if key in values:
            try:
                settings[key] = json.loads(values[key])
            except ValueError as exc:
                raise invalid(f"{ENV_PREFIX}{key.upper()} is not JSON: {exc}") from None
    settings["parameters"] = {key: values[key] for key in ("uri", "version") if key in values}
    return settings


def natural_key(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def read_settings(model_dir: Path) -> dict[str, Any]:
    path = model_dir / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"failed to read {path}: {exc}") from None
    if not isinstance(settings, dict):
        raise invalid(f"failed to read {path}: the settings are not a JSON object")
    return settings


def _name(settings: Mapping[str, Any], model_dir: Path) -> str:
    name = settings.get("name")
    return name if isinstance(name, str) and name else model_dir.name


def mlserver_config(
    model_dir: Path, folders: Mapping[int, Path], repository: Path
) -> tuple[ModelConfigProto, dict[int, str]]:
    """The config of the model in `model_dir` (its version `folders`), from its latest
    version's settings, and MLServer's names of its versions; `repository` is where it was
    found, which its code may import from. Each settings file is read once."""
    number = max(folders)
    latest = folders[number]
    settings = read_settings(latest)
    names = {n: _version_label(folder) for n, folder in folders.items() if n != number}
    names[number] = _version(settings) or latest.name
    return _config(settings, f"{latest / SETTINGS_FILE}", model_dir, repository), names


def environment_config(repository: Path) -> tuple[ModelConfigProto, dict[int, str]]:
    """The config of the model the MLSERVER_MODEL_* variables describe, served from
    `repository` (its files), and its one version's MLServer name ("" for none)."""
    settings = environment_settings()
    if settings is None:
        raise invalid(f"{ENV_PREFIX}IMPLEMENTATION is no longer set")
    config = _config(settings, ENV_SOURCE, repository, repository)
    config.parameters[FROM_ENVIRONMENT].string_value = "true"
    return config, {1: _version(settings)}


def environment_model_name(
    repository: Path, environ: Mapping[str, str] | None = None
) -> str | None:
    """The name of the model the MLSERVER_MODEL_* variables describe (else the repository
    folder's), or None when they describe none."""
    values = _environment_values(environ)
    if not values.get("implementation"):
        return None
    return values.get("name") or repository.name


def _environment_values(environ: Mapping[str, str] | None) -> dict[str, str]:
    given = os.environ if environ is None else environ
    return {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in given.items()
        if key.upper().startswith(ENV_PREFIX)
    }


def _config(
    settings: Mapping[str, Any], where: str, model_dir: Path, repository: Path
) -> ModelConfigProto:
    config = pb.ModelConfig(name=_name(settings, model_dir), backend=BACKEND)
    config.version_policy.all.SetInParent()  # MLServer serves every version it finds
    config.parameters[REPOSITORY].string_value = str(repository)
    inputs, outputs = settings.get("inputs") or [], settings.get("outputs") or []
    tensors = [*inputs, *outputs]
    # MLServer's convention: a first dim of -1 is the batch. Requests of any batch size are
    # taken, as MLServer takes them, and joined only where adaptive batching is on.
    batched = bool(inputs and outputs) and all(_shape(t, where)[:1] == [-1] for t in tensors)
    try:
        max_batch = int(settings.get("max_batch_size") or 0)
        batch_time = float(settings.get("max_batch_time") or 0)
    except (TypeError, ValueError):
        raise invalid(f"{where}: max_batch_size and max_batch_time must be numbers") from None
    if batched:
        config.max_batch_size = UNLIMITED_BATCH
        # The requests that queue while the model runs go to its instance together, each
        # still to a predict() of its own unless adaptive batching joins them: one hand-over
        # to the instance's thread for all of them.
        config.dynamic_batching.SetInParent()
        adaptive = max_batch > 1 and batch_time > 0
        config.parameters[JOIN_REQUESTS].string_value = "true" if adaptive else "false"
        if adaptive:
            # MLServer's max_batch_size counts requests, not rows: a request of any size is
            # taken, and a batch stops growing once it holds that many rows.
            config.dynamic_batching.max_queue_delay_microseconds = int(batch_time * 1_000_000)
            config.dynamic_batching.preferred_batch_size.append(max_batch)
    for target, declared in ((config.input, inputs), (config.output, outputs)):
        for tensor in declared:
            target.add(**_tensor(tensor, batched, where))
    # One instance, as MLServer's default of one worker; the instance runs the model on its
    # own event loop.
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    try:  # MLServer's response cache, used where the server's settings enable one
        cached = boolean(settings.get("cache_enabled", False))
    except ValueError as exc:
        raise invalid(f"{where}: cache_enabled: {exc}") from None
    if cached:
        config.response_cache.enable = True
    return config


def _shape(tensor: Any, where: str) -> list[int]:
    if not isinstance(tensor, dict) or not tensor.get("name"):
        raise invalid(f"{where}: each of `inputs` and `outputs` needs a name")
    try:
        return [int(d) for d in tensor.get("shape") or [-1]]
    except (TypeError, ValueError):
        raise invalid(
            f"{where}: tensor '{tensor['name']}' has a shape that is not numbers"
        ) from None


def _tensor(tensor: Any, batched: bool, where: str) -> dict[str, Any]:
    shape = _shape(tensor, where)
    datatype = DATATYPES.get(str(tensor.get("datatype", "")))
    if datatype is None:
        raise invalid(
            f"{where}: tensor '{tensor['name']}' has datatype {tensor.get('datatype')!r}; "
            f"expected one of {', '.join(DATATYPES)}"
        )
    dims = shape[1:] if batched else shape
    return {
        "name": tensor["name"],
        "data_type": pb.DataType.Value(datatype.config_name),
        "dims": dims or [1],
    }
