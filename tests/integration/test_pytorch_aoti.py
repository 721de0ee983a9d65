"""PyTorch 2 packages (`platform: "torch_aoti"`, model.pt2, compiled by AOTInductor) through a
real server and the real clients. One package is compiled per run (about 20 s on 2 cores);
skipped where torch is not installed: run tools/extra-check pytorch."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inferd.backends import pytorch  # noqa: E402
from inferd.backends.pytorch_aoti import tensor_names  # noqa: E402
from tests.conftest import RunningServer  # noqa: E402
from tests.torch_models import Mixed, compile_mixed  # noqa: E402
from tests.wire import PROTOCOLS, fails, infer, load_failure  # noqa: E402

Factory = Callable[..., RunningServer]

# torch.export and AOTInductor touch TorchScript's deprecated parts on their own.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def mixed_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {
        "x": rng.random((batch, 4), np.float32),
        "y": rng.random((batch, 4), np.float32),
        "scale": rng.random((batch, 4), np.float32),
        "bias": rng.random((batch, 4), np.float32),
    }


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixed, exported with a dynamic batch dim and compiled for the CPU."""
    sample = {k: torch.from_numpy(v) for k, v in mixed_inputs(2).items()}
    return compile_mixed(tmp_path_factory.mktemp("aoti") / "model.pt2", sample)


CONFIG = """
platform: "torch_aoti"
max_batch_size: 8
input [
  { name: "ARGS[1]" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "ARGS[0]" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "ARGS[2][scale]" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT__3" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "RESULT[parts][1]" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "RESULT[sum]" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""


INIT_LIBRARY = 'key: "MODEL_INIT_LIBRARY" value: { string_value: "init.so" }'


def write_model(root: Path, package: Path, name: str, config: str, file: str = "model.pt2") -> None:
    (root / name / "1").mkdir(parents=True)
    shutil.copy(package, root / name / "1" / file)
    (root / name / "config.pbtxt").write_text(config)


def wire_inputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {"x": "ARGS[0]", "y": "ARGS[1]", "scale": "ARGS[2][scale]", "bias": "INPUT__3"}
    return {names[k]: v for k, v in inputs.items()}


def test_the_call_spec_names_every_tensor(package: Path) -> None:
    loaded = torch._inductor.aoti_load_package(str(package))
    inputs, outputs = tensor_names(torch.utils._pytree, *loaded.loader.get_call_spec())
    assert inputs == ["ARGS[0]", "ARGS[1]", "ARGS[2][scale]", "KWARGS[bias]"]
    assert outputs == ["RESULT[sum]", "RESULT[parts][0]", "RESULT[parts][1]"]
    pytree = torch.utils._pytree
    single = pytree.treespec_dumps(pytree.tree_flatten(torch.zeros(1))[1])
    assert tensor_names(pytree, pytree.treespec_dumps(pytree.tree_flatten(((), {}))[1]), single)[
        1
    ] == ["RESULT"]  # one tensor, no path


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_package_answers_as_its_module_would(
    server_factory: Factory, tmp_path: Path, package: Path, protocol: str
) -> None:
    write_model(tmp_path, package, "mixed", CONFIG)
    server = server_factory(model_repositories=(tmp_path,))
    for batch in (1, 3):
        inputs = mixed_inputs(batch)
        expected = Mixed()(
            torch.from_numpy(inputs["x"]),
            torch.from_numpy(inputs["y"]),
            {"scale": torch.from_numpy(inputs["scale"])},
            bias=torch.from_numpy(inputs["bias"]),
        )
        outputs = infer(server, protocol, "mixed", wire_inputs(inputs))
        np.testing.assert_allclose(outputs["RESULT[sum]"], expected["sum"].numpy(), rtol=1e-6)
        np.testing.assert_allclose(outputs["OUTPUT__1"], expected["parts"][0].numpy(), rtol=1e-6)
        np.testing.assert_allclose(
            outputs["RESULT[parts][1]"], expected["parts"][1].numpy(), rtol=1e-6
        )


def test_instances_and_batches_share_one_package_with_weight_sharing(
    server_factory: Factory, tmp_path: Path, package: Path
) -> None:
    sharing = 'parameters [{ key: "ENABLE_WEIGHT_SHARING" value: { string_value: "true" } }]'
    config = CONFIG + "instance_group [{ count: 2 kind: KIND_CPU }]\n" + sharing
    write_model(tmp_path, package, "shared", config, file="weights.pt2")
    config_file = tmp_path / "shared" / "config.pbtxt"
    config_file.write_text(config_file.read_text() + 'default_model_filename: "weights.pt2"\n')
    server = server_factory(model_repositories=(tmp_path,))
    assert pytorch.SHARED_MODULES.users() == [2]  # one package, two instances

    def one(seed: int) -> None:
        inputs = mixed_inputs(1 + seed % 3)
        outputs = infer(server, "grpc", "shared", wire_inputs(inputs))
        np.testing.assert_allclose(
            outputs["OUTPUT__1"], inputs["x"] - inputs["y"], rtol=1e-6
        )  # each request gets its own rows back out of the batch

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(32)))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            ('"ARGS[1]"', '"ARGS[9]"'),
            'Input "ARGS[9]" for model instance "bad" is not found in model input map.',
        ),
        (
            ('"OUTPUT__1"', '"OUTPUT__7"'),
            'Output "OUTPUT__7" for model instance "bad" is not found in model output map.',
        ),
        (
            (',\n  { name: "INPUT__3" data_type: TYPE_FP32 dims: [ 4 ] }', ""),
            "configuration expects 3 inputs, but model expects 4 inputs.",
        ),
        (
            ("TYPE_FP32", "TYPE_STRING"),
            'Unsupported datatype TYPE_STRING for "ARGS[1]" for model instance "bad".',
        ),
        (
            ("max_batch_size: 8", 'max_batch_size: 8 default_model_filename: "none.pt2"'),
            "is unreachable or inaccessible.",
        ),
        (
            ("dynamic_batching { max_queue_delay_microseconds: 2000 }", "sequence_batching { }"),
            "Sequence batching is not supported yet.",
        ),
        (
            ("platform", f"parameters [{{ {INIT_LIBRARY} }}]\nplatform"),
            "MODEL_INIT_LIBRARY",
        ),
    ],
)
def test_models_that_cannot_load_say_why(
    server_factory: Factory, tmp_path: Path, package: Path, change: tuple[str, str], reason: str
) -> None:
    write_model(tmp_path, package, "bad", CONFIG.replace(*change, 1))
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    assert reason in load_failure(server)


def test_a_file_that_is_no_package_says_so(server_factory: Factory, tmp_path: Path) -> None:
    (tmp_path / "junk" / "1").mkdir(parents=True)
    (tmp_path / "junk" / "1" / "model.pt2").write_bytes(b"not a zip")
    (tmp_path / "junk" / "config.pbtxt").write_text(CONFIG)
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    assert "as an AOTInductor package" in load_failure(server)


def test_an_output_of_another_datatype_fails_its_request(
    server_factory: Factory, tmp_path: Path, package: Path
) -> None:
    config = CONFIG.replace(
        '{ name: "RESULT[sum]" data_type: TYPE_FP32', '{ name: "RESULT[sum]" data_type: TYPE_FP64'
    )
    write_model(tmp_path, package, "typed", config)
    server = server_factory(model_repositories=(tmp_path,))
    message = fails(
        lambda: infer(server, "http", "typed", wire_inputs(mixed_inputs(1))), "http", "internal"
    )
    assert (
        'Inductor model instance "typed" output tensor "RESULT[sum]" has datatype torch.float32 '
        "but model configuration expects TYPE_FP64." in message
    )


def test_kind_gpu_falls_back_to_the_cpu_package_where_allowed(
    server_factory: Factory, tmp_path: Path, package: Path
) -> None:
    config = CONFIG + "instance_group [{ kind: KIND_GPU }]\n"
    write_model(tmp_path, package, "gpu", config)
    server = server_factory(model_repositories=(tmp_path,), gpu_fallback_to_cpu=True)
    inputs = mixed_inputs(2)
    outputs = infer(server, "http", "gpu", wire_inputs(inputs))
    np.testing.assert_allclose(outputs["OUTPUT__1"], inputs["x"] - inputs["y"], rtol=1e-6)
