"""A python model imports the files beside it, as on Triton (whose per-model process has the
version and model folders on sys.path), without two models' files of one name colliding."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest

from inferd.backends.python_module import load_model_module, unload_model_module
from inferd.server.errors import InferdError

MODEL = """
import json
import helpers
import lib.sub
from helpers import VALUE
from .helpers import VALUE as RELATIVE
from . import helpers as same
from lib import sub
from shared import WHERE

def at_runtime():
    import helpers as late
    from lib.sub import twice
    return late.VALUE, twice(2)

class TritonPythonModel:
    def execute(self, requests):
        return []
"""


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def model(repo: Path, name: str, value: int) -> Path:
    version = repo / name / "1"
    write(
        version,
        {
            "model.py": MODEL,
            "helpers.py": f"import other\nVALUE = {value}\nOTHER = other.NAME\n"
            "class Box:\n    def __init__(self, x):\n        self.x = x\n",
            "other.py": f"NAME = '{name}'\n",
            "lib/__init__.py": "",
            "lib/sub.py": "from .. import helpers\ndef twice(x):\n    return 2 * x\n",
            "json.py": "raise AssertionError('the server can import json: it wins')\n",
        },
    )
    write(repo / name, {"shared.py": f"WHERE = 'beside config.pbtxt of {name}'\n"})
    return version / "model.py"


def ours() -> set[str]:
    return {name for name in sys.modules if name.startswith("inferd_python_model_")}


def test_files_beside_model_py_import_every_way_triton_allows(tmp_path: Path) -> None:
    before = ours()
    module = load_model_module(model(tmp_path, "m", 7), "m")
    assert (module.VALUE, module.RELATIVE, module.helpers.OTHER) == (7, 7, "m")
    assert module.same is module.helpers
    assert module.sub is module.lib.sub and module.sub.helpers is module.helpers
    assert module.WHERE == "beside config.pbtxt of m"
    assert module.json is sys.modules["json"]  # the installed module, as on Triton's path
    assert module.at_runtime() == (7, 4)  # functions import through the model's files too
    # Classes of its files pickle: their modules are in sys.modules while the model lives.
    box = module.helpers.Box(3)
    assert pickle.loads(pickle.dumps(box)).x == 3
    assert not list(tmp_path.rglob("__pycache__"))  # the repository is left as it was
    unload_model_module(module)
    assert ours() == before


def test_two_models_with_files_of_one_name_each_see_their_own(tmp_path: Path) -> None:
    first = load_model_module(model(tmp_path, "a", 1), "a")
    second = load_model_module(model(tmp_path, "b", 2), "b")
    again = load_model_module(tmp_path / "a" / "1" / "model.py", "a")  # another instance
    assert (first.VALUE, second.VALUE, again.VALUE) == (1, 2, 1)
    assert (first.helpers.OTHER, second.helpers.OTHER) == ("a", "b")
    assert first.helpers is not again.helpers  # instances share no globals
    for module in (first, second, again):
        unload_model_module(module)
    assert "helpers" not in sys.modules


def test_a_missing_module_fails_the_load_with_its_name(tmp_path: Path) -> None:
    before = ours()
    source = model(tmp_path, "m", 1)
    source.write_text("import helpers\nfrom helpers import missing_one\n")
    with pytest.raises(InferdError, match="cannot import name 'missing_one'"):
        load_model_module(source, "m")
    source.write_text("import nothing_here_at_all\n")
    with pytest.raises(InferdError, match="No module named 'nothing_here_at_all'"):
        load_model_module(source, "m")
    source.write_text("from lib import absent\n")
    with pytest.raises(InferdError, match="cannot import name 'absent'"):
        load_model_module(source, "m")
    assert ours() == before
