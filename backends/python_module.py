"""Loading a python model's model.py: a fresh module object per load, and Triton's
`triton_python_backend_utils` import resolved to inferd's implementation of it."""

from __future__ import annotations

import importlib.util
import re
import sys
import uuid
from pathlib import Path
from types import ModuleType

from inferd.backends import python_api
from inferd.server.errors import invalid, unavailable

PB_UTILS = "triton_python_backend_utils"
MODEL_CLASS = "TritonPythonModel"


def describe(exc: BaseException) -> str:
    """An exception from model code as one line: its type and message."""
    if isinstance(exc, python_api.TritonError | python_api.TritonModelException):
        return exc.message()
    return f"{type(exc).__name__}: {exc}"


def register_api() -> None:
    """Make `import triton_python_backend_utils` give python_api.

    Triton's stub process provides that module to model code. Here it goes into sys.modules
    when a python model loads (never when inferd is imported): an import statement looks
    there before any finder, so no import hook is needed, and since python_api holds no state
    one entry serves every model. setdefault makes it idempotent and safe from several loader
    threads. A different module already under that name (another package imported first)
    would break models in odd ways, so it is refused instead.
    """
    current = sys.modules.setdefault(PB_UTILS, python_api)
    if current is not python_api:
        raise unavailable(
            f"another module is already imported as '{PB_UTILS}' ({current!r}); inferd's "
            "python backend provides that module itself"
        )


def load_model_module(model_file: Path, model_name: str) -> ModuleType:
    """Execute model.py as a new module. Triton runs each instance in its own process; a module
    object per load gives each instance (and each of several models that are all called
    model.py) its own globals. The module is listed in sys.modules under a unique name while
    it lives, because dataclasses, pickle and typing look classes' modules up there."""
    if not model_file.is_file():
        raise invalid(f"model file {model_file} does not exist")
    register_api()
    safe_name = re.sub(r"\W", "_", model_name)
    module_name = f"inferd_python_model_{safe_name}_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    if spec is None:
        raise invalid(f"failed to load {model_file}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        # Compiled here rather than by the loader: no __pycache__ is written into the model
        # repository (which may be read-only, and which the poller watches).
        code = compile(model_file.read_bytes(), str(model_file), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:  # model code may fail in any way: a load error
        unload_model_module(module)
        raise invalid(
            f"failed to load {model_file}: {describe(exc)}{_hint(exc, model_file)}"
        ) from None
    return module


def unload_model_module(module: ModuleType) -> None:
    if sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]


def model_class(module: ModuleType, model_file: Path) -> type:
    cls = getattr(module, MODEL_CLASS, None)
    if not isinstance(cls, type):
        raise invalid(f"{model_file} defines no class {MODEL_CLASS}")
    if not callable(getattr(cls, "execute", None)):
        raise invalid(f"{model_file}: {MODEL_CLASS} has no execute() method")
    return cls


def _hint(exc: BaseException, model_file: Path) -> str:
    """Triton puts the model's folder on sys.path of its per-model process; one process for all
    models cannot do that without sibling files of different models colliding by name."""
    name = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if not name:
        return ""
    top = name.partition(".")[0]
    folder = model_file.parent
    if (folder / f"{top}.py").exists() or (folder / top).is_dir():
        return (
            f" (inferd does not put {folder} on sys.path: import files beside model.py "
            "through their path, or install them as a package)"
        )
    return ""
