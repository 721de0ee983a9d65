"""Tiny models for the PyTorch backend's tests, scripted (TorchScript) or exported and compiled
(AOTInductor) with the installed torch (only imported where torch is)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class AddSub(torch.nn.Module):
    """(x + y, x - y): two inputs, two outputs, as Triton's add_sub example."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + y, x - y


class Scale(torch.nn.Module):
    """One input, one output: the input times `factor` (a weight the module keeps)."""

    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.factor = torch.nn.Parameter(torch.tensor(factor), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class DictInput(torch.nn.Module):
    """A single Dict[str, Tensor] argument: the inputs by their config names."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["a"] * 10 + inputs["b"]


class Words(torch.nn.Module):
    """A list of strings in, each upper-cased out, with their lengths."""

    def forward(self, words: list[str]) -> tuple[list[str], torch.Tensor]:
        upper = [w.upper() for w in words]
        lengths = torch.tensor([len(w) for w in words], dtype=torch.int64)
        return upper, lengths


class Fails(torch.nn.Module):
    """Fails when the input holds a negative number."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return x


class TakesInt(torch.nn.Module):
    """An argument of a type the backend cannot feed."""

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x * n


def save(module: torch.nn.Module, repo: Path, name: str, config: str) -> Path:
    """Script `module` into <repo>/<name>/1/model.pt, with its config."""
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript: deprecated by torch, still what Triton serves
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 and later
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13
        scripted = torch.jit.script(module)
    scripted.save(str(folder / "1" / "model.pt"))  # type: ignore[no-untyped-call,unused-ignore]
    (folder / "config.pbtxt").write_text(config)
    return folder


class Accumulate(torch.nn.Module):
    """A sequence's running total, kept in an implicit state: reset where START is set."""

    def forward(
        self, x: torch.Tensor, start: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.where(start > 0, x, state + x)
        return total, total


class Mixed(torch.nn.Module):
    """Positional, nested and keyword inputs; a dict with a tuple inside for outputs."""

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        extra: dict[str, torch.Tensor],
        *,
        bias: torch.Tensor,
    ) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        return {"sum": x + y + bias, "parts": (x - y, x * extra["scale"])}


def compile_mixed(path: Path, sample: dict[str, torch.Tensor]) -> Path:
    """Mixed exported with a dynamic batch dim, compiled for the CPU into the package `path`."""
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(
        Mixed(),
        (sample["x"], sample["y"], {"scale": sample["scale"]}),
        {"bias": sample["bias"]},
        dynamic_shapes={
            "x": {0: batch},
            "y": {0: batch},
            "extra": {"scale": {0: batch}},
            "bias": {0: batch},
        },
    )
    torch._inductor.aoti_compile_and_package(exported, package_path=str(path))
    return path
