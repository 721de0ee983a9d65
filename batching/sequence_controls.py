"""The inputs the sequence batcher feeds a stateful model besides the request's own: the
control tensors (START, END, READY, CORRID) and the implicit state, per batch row; and the
sequence parameters of a request (`sequence_id`, `sequence_start`, `sequence_end`), checked
against them with Triton's messages."""

from __future__ import annotations

import numpy as np

from inferd.repository.sequence_config import ControlKind, SequenceBatching
from inferd.server.errors import invalid
from inferd.server.types import DataType, InferRequest, ParamValue

SequenceId = int | str
Inputs = dict[str, np.ndarray]


class SequenceControls:
    """Made once per model version: the control rows are shared, read-only, by every batch."""

    def __init__(self, model_name: str, config: SequenceBatching, batched: bool) -> None:
        self._name = model_name
        self._iterative = config.iterative
        self._item_shape: tuple[int, ...] = (1, 1) if batched else (1,)
        corrid = config.control(ControlKind.CORRID)
        self._corrid = corrid
        self._numeric_corrid = corrid is not None and corrid.datatype is not DataType.BYTES
        # The largest ID the CORRID tensor holds (2**64 - 1 is what the protocols carry).
        self._corrid_max = (
            int(np.iinfo(corrid.datatype.numpy).max)
            if self._numeric_corrid and corrid
            else 2**64 - 1
        )
        # Control tensors per row, made once: (name, kind, false row, true row).
        self._flags = [
            (
                c.name,
                c.kind,
                _readonly(np.full(self._item_shape, c.false_value, c.datatype.numpy)),
                _readonly(np.full(self._item_shape, c.true_value, c.datatype.numpy)),
            )
            for c in config.controls
            if c.kind is not ControlKind.CORRID
        ]
        self._initial = {
            s.input_name: s.initial[None] if batched else s.initial for s in config.states
        }

    def sequence_of(
        self, request: InferRequest | None, batch_size: int
    ) -> tuple[SequenceId | None, bool, bool]:
        """The request's sequence ID, START and END flags. An iterative sequence model's
        request may come without an ID (None): it starts a sequence of its own."""
        params = request.parameters if request is not None else {}
        key = params.get("sequence_id", 0)
        if (
            isinstance(key, bool)
            or not isinstance(key, int | str)
            or (isinstance(key, int) and key < 0)
        ):
            raise invalid(
                f"Unable to parse 'sequence_id': expected an unsigned integer or a string, "
                f"got {key!r}"
            )
        if key in (0, ""):
            if self._iterative:
                _check_batch_size(self._name, batch_size)
                return None, True, False
            raise invalid(
                f"inference request to model '{self._name}' must specify a non-zero or "
                "non-empty correlation ID"
            )
        if isinstance(key, str) and self._numeric_corrid:
            assert self._corrid is not None
            raise invalid(
                f"inference request to model '{self._name}' has the string sequence_id "
                f"'{key}', but its CONTROL_SEQUENCE_CORRID input '{self._corrid.name}' is "
                f"{self._corrid.datatype.config_name}: send an unsigned integer ID"
            )
        if isinstance(key, int) and key > self._corrid_max:
            assert self._corrid is not None
            raise invalid(
                f"sequence_id {key} does not fit the {self._corrid.datatype.config_name} "
                f"CONTROL_SEQUENCE_CORRID input '{self._corrid.name}' of model '{self._name}'"
            )
        _check_batch_size(self._name, batch_size)
        return key, _flag(params, "sequence_start"), _flag(params, "sequence_end")

    def row(
        self, inputs: Inputs, key: SequenceId, start: bool, end: bool, state: Inputs | None
    ) -> Inputs:
        """A request's row: its inputs, the controls (READY true) and the sequence's state
        (`state` None: the initial one)."""
        row = dict(inputs)
        for name, kind, false, true in self._flags:
            if kind is ControlKind.START:
                row[name] = true if start else false
            elif kind is ControlKind.END:
                row[name] = true if end else false
            else:
                row[name] = true
        if self._corrid is not None:
            row[self._corrid.name] = self._corrid_tensor(key)
        self._add_state(row, state)
        return row

    def padding(self, filler: Inputs, state: Inputs | None) -> Inputs:
        """A row without a request: another row's inputs, every control false, CORRID 0."""
        row = dict(filler)
        for name, _, false, _ in self._flags:
            row[name] = false
        if self._corrid is not None:
            row[self._corrid.name] = self._corrid_tensor(0)
        self._add_state(row, state)
        return row

    def _add_state(self, row: Inputs, state: Inputs | None) -> None:
        for name, initial in self._initial.items():
            row[name] = initial if state is None else state.get(name, initial)

    def _corrid_tensor(self, key: SequenceId) -> np.ndarray:
        assert self._corrid is not None
        if self._numeric_corrid:
            return np.full(self._item_shape, key, self._corrid.datatype.numpy)
        text = key if isinstance(key, str) else str(key) if key else ""
        return np.full(self._item_shape, text.encode(), np.object_)


def _check_batch_size(model_name: str, batch_size: int) -> None:
    if batch_size != 1:
        raise invalid(
            f"inference request to model '{model_name}' must specify batch-size 1 due to "
            "requirements of sequence batcher"
        )


def _flag(params: dict[str, ParamValue], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise invalid(f"Unable to parse '{name}': expected a boolean, got {value!r}")
    return value


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # shared by every batch
    return array
