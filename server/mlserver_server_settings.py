"""MLServer's server settings, read as `mlserver start FOLDER` reads them: FOLDER's
`settings.json`, over `MLSERVER_*` variables (any case). Those inferd has a flag for become
that flag's default, below the command line and inferd's own INFERD_* variables, so that a
folder MLServer serves on its ports is served the same by `inferd serve --model-repository=
FOLDER`, and an image swapped into a runtime that sets MLServer's variables listens where the
runtime expects."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferd.repository.mlserver_settings import boolean, environment_settings, holds_settings
from inferd.server.cache_config import LocalCacheConfig
from inferd.server.cors import CorsSettings
from inferd.server.flag_parser import ENV_PREFIX as INFERD_PREFIX

SETTINGS_FILE = "settings.json"
ENV_PREFIX = "MLSERVER_"
_MODEL_PREFIX = "MLSERVER_MODEL_"  # a model's settings (repository/mlserver_settings.py)


def _port(value: Any) -> int:
    port = _integer(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"not a port: {value!r}")
    return port


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueError(f"not an integer: {value!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    return value


def _path(value: Any) -> str:
    path = _text(value)
    if not path.startswith("/"):
        raise ValueError(f"not a path (it starts with '/'): {value!r}")
    return path


def _texts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"not a list of strings: {value!r}")
    return tuple(value)


_CORS_FIELDS: dict[str, Callable[[Any], Any]] = {
    "allow_origins": _texts,
    "allow_origin_regex": _text,
    "allow_credentials": boolean,
    "allow_methods": _texts,
    "allow_headers": _texts,
    "expose_headers": _texts,
    "max_age": _integer,
}


def _cors(value: Any) -> CorsSettings | None:
    """`cors_settings`: an object (settings.json), or its JSON (a variable); null turns CORS
    off. As in MLServer, a key it does not know is ignored and a null keeps the default."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"not a JSON object: {value!r}") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {value!r}")
    given: dict[str, Any] = {}
    for key, reader in _CORS_FIELDS.items():
        if value.get(key) is not None:
            try:
                given[key] = reader(value[key])
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
    return CorsSettings(**given)


# MLServer's setting -> how to read it, and the flags (argparse dests) it is the default of.
_FLAGS: dict[str, tuple[Callable[[Any], Any], tuple[str, ...]]] = {
    "http_port": (_port, ("http_port",)),
    "grpc_port": (_port, ("grpc_port",)),
    "metrics_port": (_port, ("metrics_port",)),
    "host": (_text, ("http_address", "grpc_address", "metrics_address")),
    "server_name": (_text, ("id",)),
}
_OTHERS: dict[str, Callable[[Any], Any]] = {
    # False: no model loads at start, the repository API loads them (explicit mode).
    "load_models_at_startup": boolean,
    # MLServer runs models in its worker processes when 1 or more, in its own when 0.
    "parallel_workers": _integer,
    # MLServer's response cache, for the models whose settings enable it: at most
    # cache_size answers (100 by default).
    "cache_enabled": boolean,
    "cache_size": _integer,
    # Cross-origin requests on the HTTP port (off when not given, or null).
    "cors_settings": _cors,
    # Where the metrics port answers (null or "": no metrics port, as MLServer starts none).
    "metrics_endpoint": lambda value: _path(value) if value else None,
}
# MLServer bounds its cache by answers only; inferd's holds at most this many bytes too.
CACHE_BYTES = 1 << 30
_CACHE_SIZE = 100  # MLServer's default cache_size


@dataclass(frozen=True)
class MLServerServerSettings:
    """What MLServer's server settings say that inferd uses, and what they say that it does
    not (named in a warning at start)."""

    flag_defaults: dict[str, Any] = field(default_factory=dict)  # argparse dest -> value
    parallel_workers: int | None = None  # None: not given
    cache: LocalCacheConfig | None = None  # the response cache MLServer's settings enable
    cors: CorsSettings | None = None  # cross-origin requests on the HTTP port
    metrics_path: str | None = None  # the metrics port's path (None: not given)
    unused: tuple[str, ...] = ()  # settings.json's keys inferd has no use for
    source: str = ""  # where they came from, for messages

    @property
    def mlserver_isolation(self) -> str | None:
        """MLServer models' isolation, as parallel_workers says (None: not given)."""
        if self.parallel_workers is None:
            return None
        return "process" if self.parallel_workers > 0 else "thread"


def read(folder: Path | None, environ: Mapping[str, str]) -> MLServerServerSettings:
    """The server settings for serving `folder` (None: none is local): its settings.json's,
    over the MLSERVER_* variables. Raises ValueError naming a value MLServer would refuse."""
    given: dict[str, tuple[Any, str]] = {}
    for name, value in environ.items():
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and not upper.startswith(_MODEL_PREFIX):
            given[upper[len(ENV_PREFIX) :].lower()] = (value, name)
    unused: list[str] = []
    source = "MLSERVER_* variables"
    path = None if folder is None else folder / SETTINGS_FILE
    # Only where MLServer would serve models: a Triton repository's own settings.json (any
    # file of that name) is none of MLServer's business.
    if (
        folder is not None
        and path is not None
        and path.is_file()
        and (environment_settings(environ) is not None or holds_settings(folder))
    ):
        source = f"{path}"
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not MLServer's settings: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError(f"{path}: not MLServer's settings: not a JSON object")
        for key, value in document.items():
            given[key] = (value, f"{path}: {key}")
            if key not in _FLAGS and key not in _OTHERS:
                unused.append(key)
    readers: dict[str, Callable[[Any], Any]] = {k: r for k, (r, _) in _FLAGS.items()} | _OTHERS
    values: dict[str, Any] = {}
    for key, reader in readers.items():
        if key in given:
            raw, where = given[key]
            try:
                values[key] = reader(raw)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
    defaults = {
        dest: values[key] for key, (_, dests) in _FLAGS.items() if key in values for dest in dests
    }
    try:
        cache = _cache(values)
    except ValueError as exc:
        raise ValueError(f"{given['cache_size'][1]}: {exc}") from None
    if values.get("load_models_at_startup") is False:
        defaults["model_control_mode"] = "explicit"
    if "metrics_endpoint" in values and values["metrics_endpoint"] is None:
        defaults["allow_metrics"] = False
    return MLServerServerSettings(
        # inferd's own variables win
        flag_defaults={
            k: v for k, v in defaults.items() if INFERD_PREFIX + k.upper() not in environ
        },
        parallel_workers=values.get("parallel_workers"),
        cache=cache,
        cors=values.get("cors_settings"),
        metrics_path=values.get("metrics_endpoint"),
        unused=tuple(sorted(unused)),
        source=source,
    )


def _cache(values: Mapping[str, Any]) -> LocalCacheConfig | None:
    if not values.get("cache_enabled"):
        return None
    entries = values.get("cache_size", _CACHE_SIZE)
    if entries < 1:
        raise ValueError(f"at least 1 answer, got {entries}")
    return LocalCacheConfig(size=CACHE_BYTES, entries=entries)
