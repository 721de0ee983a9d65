"""`inferd-sagemaker`: the entry point of a SageMaker inference container. SageMaker starts the
container as `docker run IMAGE serve`, the model (or, for a multi-model endpoint, nothing yet)
unpacked under /opt/ml; this builds the server's flags from SageMaker's environment the way
Triton's own SageMaker image does (its `serve` script), then serves.

- A single-model endpoint serves /opt/ml/model: the model SAGEMAKER_TRITON_DEFAULT_MODEL_NAME
  names, or the only model there (anything else stops the container, in Triton's words).
- SAGEMAKER_MULTI_MODEL=true starts with no model: SageMaker loads them through /models.
- SAGEMAKER_BIND_TO_PORT and SAGEMAKER_SAFE_PORT_RANGE set the ports; SAGEMAKER_TRITON_LOG_*
  the logging; SAGEMAKER_TRITON_THREAD_COUNT, _BUFFER_MANAGER_THREAD_COUNT,
  _SHM_DEFAULT_BYTE_SIZE, _SHM_GROWTH_BYTE_SIZE and _TENSORFLOW_VERSION reach their flags
  (which inferd accepts and names in its start-up warning).

Unlike Triton's script: logging stays at info unless SAGEMAKER_TRITON_LOG_VERBOSE asks for
more (Triton's image logs verbosely by default), and model namespacing is not turned on
(inferd has none: model names are unique across the repositories SageMaker registers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

SINGLE_MODEL_REPOSITORY = Path("/opt/ml/model")
MULTI_MODEL_REPOSITORY = Path("/tmp/sagemaker")  # an empty stand-in: models come by /models

# SageMaker's variable -> the flag it sets, when given.
_PASSED_ON = (
    ("SAGEMAKER_BIND_TO_PORT", "--sagemaker-port"),
    ("SAGEMAKER_SAFE_PORT_RANGE", "--sagemaker-safe-port-range"),
    ("SAGEMAKER_TRITON_BUFFER_MANAGER_THREAD_COUNT", "--buffer-manager-thread-count"),
    ("SAGEMAKER_TRITON_THREAD_COUNT", "--sagemaker-thread-count"),
    ("SAGEMAKER_TRITON_LOG_VERBOSE", "--log-verbose"),
    ("SAGEMAKER_TRITON_LOG_INFO", "--log-info"),
    ("SAGEMAKER_TRITON_LOG_WARNING", "--log-warning"),
    ("SAGEMAKER_TRITON_LOG_ERROR", "--log-error"),
    ("SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE", "--backend-config=python,shm-default-byte-size"),
    ("SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE", "--backend-config=python,shm-growth-byte-size"),
    ("SAGEMAKER_TRITON_TENSORFLOW_VERSION", "--backend-config=tensorflow,version"),
)


class ContainerError(Exception):
    """The container cannot serve what SageMaker gave it."""


def container_setup(
    environ: Mapping[str, str],
    single_model: Path = SINGLE_MODEL_REPOSITORY,
    multi_model: Path = MULTI_MODEL_REPOSITORY,
) -> tuple[list[str], dict[str, str]]:
    """The flags of `inferd serve` for this container, and its environment (with the model
    /invocations runs, when it was found rather than named)."""
    environment = dict(environ)
    multi = environ.get("SAGEMAKER_MULTI_MODEL") == "true"
    repository = multi_model if multi else single_model
    flags = [
        "--allow-sagemaker=true",
        "--allow-grpc=false",
        "--allow-http=false",
        "--allow-metrics=false",
        "--model-control-mode=explicit",
        f"--model-repository={repository}",
    ]
    flags += [f"{flag}={environ[name]}" for name, flag in _PASSED_ON if environ.get(name)]
    if multi:
        multi_model.mkdir(parents=True, exist_ok=True)
        return flags, environment
    model = _default_model(environ, single_model)
    environment["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] = model
    return [*flags, f"--load-model={model}"], environment


def _default_model(environ: Mapping[str, str], repository: Path) -> str:
    if (repository / "config.pbtxt").is_file():
        raise ContainerError(
            "Incorrect directory structure: the model directory needs to contain the top "
            "level folder"
        )
    named = environ.get("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME")
    if named:
        if not (repository / named).is_dir():
            raise ContainerError(
                f"Directory with provided SAGEMAKER_TRITON_DEFAULT_MODEL_NAME {named} does not "
                "exist"
            )
        return named
    found = sorted(entry.name for entry in _folders(repository))
    if not found:
        raise ContainerError("No model found in model repository")
    if len(found) > 1:
        raise ContainerError(
            "More than 1 model directory found in model repository: either provide a single "
            "directory or set SAGEMAKER_TRITON_DEFAULT_MODEL_NAME to run the ensemble backend. "
            f"Directories found in model repository: {' '.join(found)}"
        )
    return found[0]


def _folders(repository: Path) -> list[Path]:
    try:
        return [entry for entry in repository.iterdir() if entry.is_dir()]
    except OSError:
        return []


def main(argv: Sequence[str] | None = None) -> int:
    """`inferd-sagemaker [serve]`: SageMaker's `serve` argument is the only one it takes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["serve"]):
        print("usage: inferd-sagemaker [serve]  (flags come from SageMaker's environment)")
        return 2
    try:
        flags, environment = container_setup(os.environ)
    except ContainerError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    from inferd.server.cli import main as serve  # the server's own start-up

    return serve(["serve", *flags], environment)


if __name__ == "__main__":
    sys.exit(main())
