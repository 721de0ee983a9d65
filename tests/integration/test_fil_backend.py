"""Forest models (backend "fil") trained here by the installed XGBoost and LightGBM, in
Triton's FIL layout, served by a real server and driven by the real tritonclient: each model
type, classifier outputs (class ids, threshold, probabilities), regression, missing values, a
Treelite checkpoint, and load errors. Answers are compared with the frameworks' own."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.waiting import wait_for
from tests.wire import PROTOCOLS, infer, load_failure

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
treelite = pytest.importorskip("treelite")

Factory = Callable[..., RunningServer]
FEATURES = 6
RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, FEATURES)).astype(np.float32)
Y_BINARY = (X[:, 0] + X[:, 1] > 0).astype(np.int32)
Y_CLASSES = np.digitize(X[:, 2], [-0.5, 0.5]).astype(np.int32)
Y_VALUE = (X[:, 3] * 2 + X[:, 4]).astype(np.float32)
# Rows to ask about, one of them all missing (NaN: the trees' default branches).
ROWS = np.vstack([X[:7], np.full((1, FEATURES), np.nan, np.float32)])


def config(model_type: str, classifier: bool, outputs: int = 1, **parameters: str) -> str:
    params = {"model_type": model_type, "output_class": str(classifier).lower(), **parameters}
    listed = " ".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    return (
        'backend: "fil"\nmax_batch_size: 64\n'
        f'input [{{ name: "input__0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }}]\n'
        f'output [{{ name: "output__0" data_type: TYPE_FP32 dims: [ {outputs} ] }}]\n'
        "instance_group [{ kind: KIND_CPU }]\ndynamic_batching { }\n" + listed + "\n"
    )


def write(repo: Path, name: str, text: str) -> Path:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(text)
    return repo / name / "1"


def xgb_train(objective: str, labels: np.ndarray, **extra: object) -> Any:
    parameters = {"objective": objective, "max_depth": 3, **extra}
    return xgb.train(parameters, xgb.DMatrix(X, label=labels), num_boost_round=12)


def predict(booster: Any, rows: np.ndarray) -> np.ndarray:
    """The framework's own answer: probabilities for classifiers, values for regressors."""
    found: np.ndarray = booster.predict(
        xgb.DMatrix(rows) if hasattr(booster, "feature_names") else rows
    )
    return found


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    """Boosters of the frameworks' own APIs (their scikit-learn ones would need scikit-learn)."""
    return {
        "xgb_binary": xgb_train("binary:logistic", Y_BINARY),
        "xgb_classes": xgb_train("multi:softprob", Y_CLASSES, num_class=3),
        "xgb_value": xgb_train("reg:squarederror", Y_VALUE),
        "lgb_binary": lgb.train(
            {"objective": "binary", "num_leaves": 7, "verbose": -1},
            lgb.Dataset(X, Y_BINARY),
            num_boost_round=12,
        ),
    }


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, trained: dict[str, Any]
) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("fil")
    binary, classes, value = trained["xgb_binary"], trained["xgb_classes"], trained["xgb_value"]
    # XGBoost 3 writes `xgboost.model` as UBJSON (and warns): model_type xgboost reads it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        binary.save_model(write(repo, "binary", config("xgboost", True)) / "xgboost.model")
    binary.save_model(
        write(repo, "binary_proba", config("xgboost_json", True, 2, predict_proba="true"))
        / "xgboost.json"
    )
    binary.save_model(
        write(repo, "binary_strict", config("xgboost_ubj", True, threshold="0.9")) / "xgboost.ubj"
    )
    classes.save_model(write(repo, "classes", config("xgboost_json", True)) / "xgboost.json")
    classes.save_model(
        write(repo, "classes_proba", config("xgboost_json", True, 3, predict_proba="true"))
        / "xgboost.json"
    )
    value.save_model(write(repo, "value", config("xgboost_json", False)) / "xgboost.json")
    trained["lgb_binary"].save_model(
        write(repo, "lightgbm", config("lightgbm", True, 2, predict_proba="true")) / "model.txt"
    )
    # A Treelite checkpoint, under a file name of the config's choosing.
    folder = write(
        repo,
        "checkpoint",
        config("treelite_checkpoint", False) + 'default_model_filename: "forest.tl"\n',
    )
    value.save_model(folder / "source.json")
    forest = treelite.frontend.load_xgboost_model(str(folder / "source.json"), format_choice="json")
    forest.serialize(str(folder / "forest.tl"))
    (folder / "source.json").unlink()
    running = start_server(replace(TEST_SETTINGS, model_repositories=(repo,)))
    yield running
    running.stop()


def answer(server: RunningServer, model: str, protocol: str = "http") -> np.ndarray:
    return infer(server, protocol, model, {"input__0": ROWS})["output__0"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classifiers_answer_class_ids(
    server: RunningServer, trained: dict[str, Any], protocol: str
) -> None:
    binary, classes = trained["xgb_binary"], trained["xgb_classes"]
    p = predict(binary, ROWS)
    ids = answer(server, "binary", protocol)
    assert ids.shape == (len(ROWS),)  # dims [1]: one value per row, as FIL answers
    np.testing.assert_array_equal(ids, (p > 0.5).astype(np.float32))
    np.testing.assert_array_equal(answer(server, "binary_strict"), (p > 0.9).astype(np.float32))
    np.testing.assert_array_equal(
        answer(server, "classes", protocol),
        np.argmax(predict(classes, ROWS), axis=1).astype(np.float32),
    )


def test_probabilities_and_predictions_match_the_frameworks(
    server: RunningServer, trained: dict[str, Any]
) -> None:
    binary, classes = trained["xgb_binary"], trained["xgb_classes"]
    value, lightgbm = trained["xgb_value"], trained["lgb_binary"]
    proba = answer(server, "binary_proba")
    assert proba.shape == (len(ROWS), 2)  # (1 - p, p)
    p = predict(binary, ROWS)
    np.testing.assert_allclose(proba, np.stack([1 - p, p], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        answer(server, "classes_proba"),
        predict(classes, ROWS),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(answer(server, "value"), predict(value, ROWS), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        answer(server, "checkpoint"),
        predict(value, ROWS),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        answer(server, "lightgbm"),
        np.stack([1 - predict(lightgbm, ROWS), predict(lightgbm, ROWS)], axis=1),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (config("xgboost_json", True).replace(f"dims: [ {FEATURES} ]", "dims: [ 5 ]"), "reads 6"),
        (config("catboost", True), "catboost not recognized as a valid serialization format."),
        (
            config("xgboost_json", True).replace('key: "output_class"', 'key: "other"'),
            "Required parameter is_classifier not found in config",
        ),
        (config("xgboost_json", True, predict_proba="yes"), "Bad input for parameter"),
        (config("lightgbm", False), "unable to find"),
        (
            config("xgboost_json", True).replace("TYPE_FP32 dims: [ 6", "TYPE_FP64 dims: [ 6"),
            "FIL models take TYPE_FP32",
        ),
    ],
)
def test_load_errors(
    tmp_path: Path,
    server_factory: Factory,
    trained: dict[str, Any],
    text: str,
    message: str,
) -> None:
    trained["xgb_binary"].save_model(write(tmp_path, "broken", text) / "xgboost.json")
    server = server_factory(model_repositories=(tmp_path,))
    assert message in load_failure(server)


def test_instances_share_one_forest(
    tmp_path: Path, server_factory: Factory, trained: dict[str, Any]
) -> None:
    from inferd.backends import fil

    text = config("xgboost_json", True).replace("{ kind: KIND_CPU }", "{ count: 3 kind: KIND_CPU }")
    trained["xgb_binary"].save_model(write(tmp_path, "shared", text) / "xgboost.json")
    before = fil._FORESTS.users()
    server = server_factory(model_repositories=(tmp_path,), model_control_mode="explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("shared")
        assert sorted(fil._FORESTS.users()) == sorted([*before, 3])  # one forest, 3 instances
        p = predict(trained["xgb_binary"], ROWS)
        np.testing.assert_array_equal(answer(server, "shared"), (p > 0.5).astype(np.float32))
        client.unload_model("shared")
        wait_for(lambda: fil._FORESTS.users() == before)  # once its instances are freed
    finally:
        client.close()
