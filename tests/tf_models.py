"""Tiny real TensorFlow models for tests: SavedModels written from tf.Module signatures and a
frozen GraphDef. Import only where TensorFlow is installed (pytest.importorskip first)."""

# tf.function is untyped where mypy runs (without TensorFlow).
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

WEIGHTS = np.arange(16, dtype=np.float32).reshape(4, 4) / 8


class _AddMatmul(tf.Module):  # type: ignore[misc]
    """FP32 [batch, 4] x2 -> SUM = a + b, PRODUCT = a @ WEIGHTS (two outputs); a second
    signature `double` (x -> 2x) to pick with TF_SIGNATURE_DEF."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = tf.Variable(WEIGHTS)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 4], tf.float32, name="INPUT0"),
            tf.TensorSpec([None, 4], tf.float32, name="INPUT1"),
        ]
    )
    def serve(self, a: Any, b: Any) -> dict[str, Any]:
        return {"SUM": a + b, "PRODUCT": tf.matmul(a, self.weights)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def double(self, x: Any) -> dict[str, Any]:
        return {"doubled": x * 2}


class _Strings(tf.Module):  # type: ignore[misc]
    """INT32 [batch, 2] and BYTES [batch, 2] -> COUNT = 2n, UPPER = upper(text)."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.int32, name="COUNT_IN"),
            tf.TensorSpec([None, 2], tf.string, name="TEXT"),
        ]
    )
    def serve(self, n: Any, text: Any) -> dict[str, Any]:
        return {"COUNT": n * 2, "UPPER": tf.strings.upper(text)}


class _RowSum(tf.Module):  # type: ignore[misc]
    """FP32 [batch, n] (n variable) -> SCALED = 3x [batch, n], TOTAL = row sums [batch] (a
    scalar per item, which configs write as dims [1])."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="X")])
    def serve(self, x: Any) -> dict[str, Any]:
        return {"SCALED": x * 3, "TOTAL": tf.reduce_sum(x, axis=1)}


class _Reshape(tf.Module):  # type: ignore[misc]
    """FP32 [batch, n] -> ROWS = x reshaped to [-1, 4]: fails in TensorFlow unless 4 divides
    batch * n."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="X")])
    def serve(self, x: Any) -> dict[str, Any]:
        return {"ROWS": tf.reshape(x, [-1, 4])}


class _Flat(tf.Module):  # type: ignore[misc]
    """INT64 [3] without a batch dim -> NEG = -x."""

    @tf.function(input_signature=[tf.TensorSpec([3], tf.int64, name="V")])
    def serve(self, v: Any) -> dict[str, Any]:
        return {"NEG": -v}


class _Accumulator(tf.Module):  # type: ignore[misc]
    """A sequence model: INT32 [batch, 1] OUTPUT = INPUT + STATE_IN, and STATE_OUT = OUTPUT
    (implicit state); START (a control input) is fed by the sequence batcher, unused."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 1], tf.int32, name="INPUT"),
            tf.TensorSpec([None, 1], tf.int32, name="STATE_IN"),
            tf.TensorSpec([None, 1], tf.int32, name="START"),
        ]
    )
    def serve(self, x: Any, state: Any, start: Any) -> dict[str, Any]:
        total = x + state
        return {"OUTPUT": total, "STATE_OUT": tf.identity(total)}


def _save(module: Any, path: Path, **signatures: Any) -> Path:
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def add_matmul_model(path: Path) -> Path:
    module = _AddMatmul()
    return _save(module, path, serving_default=module.serve, double=module.double)


def strings_model(path: Path) -> Path:
    module = _Strings()
    return _save(module, path, serving_default=module.serve)


def row_sum_model(path: Path) -> Path:
    module = _RowSum()
    return _save(module, path, serving_default=module.serve)


def reshape_model(path: Path) -> Path:
    module = _Reshape()
    return _save(module, path, serving_default=module.serve)


def flat_model(path: Path) -> Path:
    module = _Flat()
    return _save(module, path, serving_default=module.serve)


def accumulator_model(path: Path) -> Path:
    module = _Accumulator()
    return _save(module, path, serving_default=module.serve)


def accumulator_graphdef(path: Path) -> Path:
    """_Accumulator as a frozen graph (placeholders INPUT, STATE_IN, START)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.int32, [None, 1], name="INPUT")
        state = tf.compat.v1.placeholder(tf.int32, [None, 1], name="STATE_IN")
        tf.compat.v1.placeholder(tf.int32, [None, 1], name="START")
        total = tf.identity(x + state, name="OUTPUT")
        tf.identity(total, name="STATE_OUT")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def graphdef_model(path: Path) -> Path:
    """A frozen graph: placeholder "x" FP32 [batch, 4] -> "y" = 2x + 1."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        tf.identity(x * 2 + 1, name="y")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def graphdef_with_init_model(path: Path) -> Path:
    """A graph with a variable that an init op sets: "x" FP32 [batch, 4] -> "y" = x + v, where
    the op "init" assigns v = 10 (TF_INIT_OPS_FILE runs it once per session)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        v = tf.compat.v1.Variable(tf.fill([4], 10.0), name="v", use_resource=False)
        tf.identity(x + v, name="y")
        tf.compat.v1.variables_initializer([v], name="init")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path
