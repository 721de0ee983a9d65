"""A python model's imports of its own files, as Triton allows them: `import helpers` or
`from .helpers import f` finds `helpers.py` (or a `helpers/` package) beside model.py, then in the
model's folder.

Triton runs each instance in a process of its own and appends the version and model folders to
its `sys.path`. inferd runs every model in one process, where two models' `helpers.py` would
collide on such a path. So each load of model.py gets a package of its own (a unique name in
`sys.modules` whose `__path__` is those two folders), and the model's files run with an
`__import__` of their own (their `__builtins__`) that sends a top-level name found there to that
package. As on Triton's path, where those folders come last, a module the server itself can
import wins over a model's file of the same name. Each file is compiled here, so that no
`__pycache__` appears in the repository (which may be read-only, and which the poller watches).
`importlib.import_module()` calls bypass `__import__` and do not see a model's files.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Mapping, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

_real_import = builtins.__import__


class ModelPackage:
    """The package one load of a model.py lives in, and the import function of its files."""

    def __init__(self, name: str, folders: Sequence[Path]) -> None:
        self.name = name
        self._folders = [str(folder) for folder in folders]
        self._lock = threading.RLock()
        self._ours: dict[str, bool] = {}  # top-level name -> a file of the model's
        self.builtins: dict[str, Any] = dict(vars(builtins))
        self.builtins["__import__"] = self._import
        root = ModuleType(name, "the files of a python model's folders")
        root.__path__ = list(self._folders)
        root.__package__ = name
        root.__spec__ = ModuleSpec(name, None, is_package=True)
        root.__spec__.submodule_search_locations = root.__path__
        sys.modules[name] = root

    def load(self, module_file: Path) -> ModuleType:
        """Run `module_file` (model.py) as a module of the package."""
        return self._load(f"{self.name}.{module_file.stem}", module_file)

    def _import(
        self,
        name: str,
        globals: Mapping[str, Any] | None = None,
        locals: Mapping[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        if level == 0:
            top = name.partition(".")[0]
            if not self._is_ours(top):
                return _real_import(name, globals, locals, fromlist, level)
            full = f"{self.name}.{name}"
        else:
            package = (globals or {}).get("__package__") or ""
            if package != self.name and not package.startswith(self.name + "."):
                return _real_import(name, globals, locals, fromlist, level)
            full = importlib.util.resolve_name("." * level + name, package)
        with self._lock:
            module = self._module(full)
            if not fromlist:  # `import a.b` binds `a`
                return sys.modules[f"{self.name}.{name.partition('.')[0]}"]
            for item in fromlist:  # `from a import b`, where b may be a submodule
                if item != "*" and not hasattr(module, item) and hasattr(module, "__path__"):
                    self._submodule_if_any(f"{full}.{item}")
            return module

    def _is_ours(self, top: str) -> bool:
        known = self._ours.get(top)
        if known is None:
            global_ = top in sys.modules or importlib.util.find_spec(top) is not None
            known = not global_ and self._find(self._folders, top) is not None
            self._ours[top] = known
        return known

    def _module(self, full: str) -> ModuleType:
        """The module `full` of the package, loaded (with its parents) if it is not yet."""
        module = sys.modules.get(full)
        if module is not None:
            return module
        parent_name, _, last = full.rpartition(".")
        parent = self._module(parent_name)
        found = self._find(getattr(parent, "__path__", ()), last)
        if found is None:
            shown = full.removeprefix(self.name + ".")
            raise ModuleNotFoundError(f"No module named '{shown}'", name=shown)
        module = self._load(full, found)
        setattr(parent, last, module)
        return module

    def _submodule_if_any(self, full: str) -> None:
        try:
            self._module(full)
        except ModuleNotFoundError as exc:
            if exc.name != full.removeprefix(self.name + "."):
                raise  # the submodule exists, and an import inside it failed

    @staticmethod
    def _find(folders: Sequence[str], name: str) -> Path | None:
        """`name.py`, or a `name/` folder (a package, with or without `__init__.py`)."""
        for folder in folders:
            source = Path(folder) / f"{name}.py"
            if source.is_file():
                return source
            if (Path(folder) / name).is_dir():
                return Path(folder) / name
        return None

    def _load(self, full: str, found: Path) -> ModuleType:
        package = found.is_dir()
        source = found / "__init__.py" if package else found
        spec = importlib.util.spec_from_file_location(
            full,
            source,
            loader=_NoLoader(),
            submodule_search_locations=[str(found)] if package else None,
        )
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__builtins__ = self.builtins  # type: ignore[attr-defined]
        sys.modules[full] = module
        try:
            if source.is_file():  # a folder without __init__.py is a namespace package
                code = compile(source.read_bytes(), str(source), "exec", dont_inherit=True)
                exec(code, module.__dict__)
        except BaseException:
            del sys.modules[full]
            raise
        return module


class _NoLoader(importlib.abc.Loader):
    """The spec's loader: the package runs the code itself (see _load)."""

    def exec_module(self, module: ModuleType) -> None:
        return None


def forget_package(name: str) -> None:
    """Drop a model's package and every module loaded into it from sys.modules."""
    prefix = name + "."
    # list() copies the keys at once (in C, under the GIL): other threads import meanwhile.
    for loaded in [n for n in list(sys.modules) if n == name or n.startswith(prefix)]:
        sys.modules.pop(loaded, None)
