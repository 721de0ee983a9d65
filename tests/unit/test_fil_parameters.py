"""The FIL backend's parameters: FIL's keys, old and new, and its defaults."""

from __future__ import annotations

import pytest

pytest.importorskip("treelite")

from inferd.backends.fil import FilParameters, parse_parameters
from inferd.server.errors import InferdError


def test_old_and_new_spellings_and_defaults() -> None:
    assert parse_parameters({"output_class": "true"}) == FilParameters(classifier=True)
    assert parse_parameters({"is_classifier": "False", "output_class": "true"}).classifier is False
    full = parse_parameters(
        {
            "model_type": "lightgbm",
            "output_class": "true",
            "threshold": "0.25",
            "predict_proba": "true",
            "cpu_nthread": "3",
            # FIL's GPU knobs: accepted and ignored on the CPU.
            "algo": "ALGO_AUTO",
            "storage_type": "AUTO",
            "threads_per_tree": "1",
            "blocks_per_sm": "0",
            "transfer_threshold": "0",
            "use_experimental_optimizations": "false",
        }
    )
    assert full == FilParameters("lightgbm", True, 0.25, True, 3)
    assert parse_parameters({"output_class": "false", "cpu_nthread": "-1"}).threads == 0


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"output_class": "yes"}, "Bad input for parameter output_class"),
        ({"output_class": "true", "threshold": "half"}, "Bad input for parameter threshold"),
        ({}, "Required parameter is_classifier not found in config"),
        ({"output_class": "true", "model_type": "onnx"}, "onnx not recognized"),
    ],
)
def test_bad_parameters(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(InferdError, match=message):
        parse_parameters(parameters)
