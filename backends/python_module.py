"""Loading a python model's model.py: a fresh module object per load, and Triton's
`triton_python_backend_utils` import resolved to inferd's implementation of it."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path
from types import ModuleType

from inferd.backends import python_api
from inferd.backends.python_imports import ModelPackage, forget_package
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
    model.py) its own globals. It lives in a package of its own (python_imports.py), through
    which it imports the files beside it; both are listed in sys.modules under unique names
    while they live, because dataclasses, pickle and typing look classes' modules up there."""
    if not model_file.is_file():
        raise invalid(f"model file {model_file} does not exist")
    register_api()
    safe_name = re.sub(r"\W", "_", model_name)
    package = ModelPackage(
        f"inferd_python_model_{safe_name}_{uuid.uuid4().hex[:12]}",
        (model_file.parent, model_file.parent.parent),  # Triton's order on sys.path
    )
    try:
        module = package.load(model_file)
    except (Exception, SystemExit) as exc:  # model code may fail in any way: a load error
        forget_package(package.name)
        raise invalid(f"failed to load {model_file}: {describe(exc)}") from None
    return module


def unload_model_module(module: ModuleType) -> None:
    assert module.__spec__ is not None
    forget_package(module.__spec__.name.partition(".")[0])


def model_class(module: ModuleType, model_file: Path) -> type:
    cls = getattr(module, MODEL_CLASS, None)
    if not isinstance(cls, type):
        raise invalid(f"{model_file} defines no class {MODEL_CLASS}")
    if not callable(getattr(cls, "execute", None)):
        raise invalid(f"{model_file}: {MODEL_CLASS} has no execute() method")
    return cls
