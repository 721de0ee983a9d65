"""The checksum repository agent on real files, with Triton's messages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from inferd.repository.config import parse_config_text
from inferd.repository.repo_agents import run_agents
from inferd.server.errors import ErrorCode, InferdError


def agents(*parameters: tuple[str, str], name: str = "checksum") -> object:
    params = " ".join(f'parameters {{ key: "{k}" value: "{v}" }}' for k, v in parameters)
    return parse_config_text(
        f'model_repository_agents {{ agents [{{ name: "{name}" {params} }}] }}', "test"
    )


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"weights")
    return tmp_path


def test_matching_digests_pass(model_dir: Path) -> None:
    digest = hashlib.md5(b"weights").hexdigest()
    run_agents(agents(("MD5:1/model.onnx", digest), ("md5:1/model.onnx", digest)), model_dir)
    run_agents(parse_config_text("", "test"), model_dir)  # no agents: nothing to check


@pytest.mark.parametrize(
    ("parameter", "code", "words"),
    [
        (
            ("MD5:1/model.onnx", "0" * 32),
            ErrorCode.INVALID_ARG,
            "Mismatched MD5 hash for file "
            f"1/model.onnx, expect: {'0' * 32}, got: {hashlib.md5(b'weights').hexdigest()}",
        ),
        (
            ("MD5:1/missing.onnx", "x"),
            ErrorCode.INVALID_ARG,
            "failed to open text file for read 1/missing.onnx: No such file or directory",
        ),
        (("1/model.onnx", "x"), ErrorCode.INVALID_ARG, "failed to parse key: 1/model.onnx"),
        (("SHA1:1/model.onnx", "x"), ErrorCode.UNSUPPORTED, "Unsupported checksum algorithm: SHA1"),
        (("MD5:../secret", "x"), ErrorCode.INVALID_ARG, "must be inside the model folder"),
    ],
)
def test_failures_say_why(
    model_dir: Path, parameter: tuple[str, str], code: ErrorCode, words: str
) -> None:
    with pytest.raises(InferdError) as info:
        run_agents(agents(parameter), model_dir)
    assert info.value.code is code
    assert words in info.value.message


def test_an_agent_inferd_lacks_fails_the_load(model_dir: Path) -> None:
    with pytest.raises(InferdError, match="repository agent 'relocation' is not available"):
        run_agents(agents(name="relocation"), model_dir)
