"""onnxruntime-gpu as Python sees it, on a machine without a GPU: the installed CPU onnxruntime
with a CUDA (and TensorRT) provider in its provider list, and sessions that answer
`get_providers()` as a GPU session does but compute on the CPU.

With the fake cupy, "device" memory is host memory, so bindings to device "cuda" are bound to
"cpu" and the real CPU session reads and writes them by address. `cuda_starts=False` plays
onnxruntime-gpu whose CUDA libraries fail to load: sessions silently get the CPU provider only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort
import pytest

CUDA, TENSORRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


@dataclass
class Record:
    """The GPU sessions the code created: what it asked for."""

    sessions: list[FakeGpuSession] = field(default_factory=list)


class FakeBinding:
    def __init__(self, real: Any) -> None:
        self.real = real

    def bind_input(self, name: str, device: str, *rest: Any) -> None:
        assert device == "cuda", f"GPU inputs are bound on the device, not on {device}"
        self.real.bind_input(name, "cpu", *rest)

    def bind_output(self, name: str, device: str, *rest: Any) -> None:
        assert device == "cuda", f"GPU outputs are bound on the device, not on {device}"
        self.real.bind_output(name, "cpu", *rest)

    def get_outputs(self) -> Any:
        return self.real.get_outputs()

    def clear_binding_inputs(self) -> None:
        self.real.clear_binding_inputs()

    def clear_binding_outputs(self) -> None:
        self.real.clear_binding_outputs()


class FakeGpuSession:
    def __init__(
        self,
        real_session: type[ort.InferenceSession],
        model: Any,
        sess_options: ort.SessionOptions | None,
        providers: Sequence[Any],
        cuda_starts: bool,
    ) -> None:
        self.providers = list(providers)
        self.options = sess_options
        self.fallback_disabled = False
        self.runs = 0
        self._real = real_session(model, sess_options=sess_options, providers=[CPU])
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        self._active = names if cuda_starts else [CPU]

    def get_providers(self) -> list[str]:
        return list(self._active)

    def disable_fallback(self) -> None:
        self.fallback_disabled = True

    def get_inputs(self) -> Any:
        return self._real.get_inputs()

    def get_outputs(self) -> Any:
        return self._real.get_outputs()

    def io_binding(self) -> FakeBinding:
        return FakeBinding(self._real.io_binding())

    def run_with_iobinding(self, binding: FakeBinding, run_options: Any = None) -> None:
        self.runs += 1
        self._real.run_with_iobinding(binding.real, run_options)


def install(
    monkeypatch: pytest.MonkeyPatch, *, cuda_starts: bool = True, tensorrt: bool = False
) -> Record:
    """Make the onnxruntime module look like onnxruntime-gpu's for this test."""
    record = Record()
    real_session = ort.InferenceSession
    available = [TENSORRT, CUDA, CPU] if tensorrt else [CUDA, CPU]

    def session(model: Any, sess_options: Any = None, providers: Any = None) -> Any:
        names = [p[0] if isinstance(p, tuple) else p for p in providers or []]
        if CUDA not in names:
            return real_session(model, sess_options=sess_options, providers=providers)
        created = FakeGpuSession(real_session, model, sess_options, providers, cuda_starts)
        record.sessions.append(created)
        return created

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
    return record
