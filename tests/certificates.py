"""Test certificates made with the openssl command: a CA, a server certificate it signed for
localhost and 127.0.0.1, and a client one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def make_certificates(folder: Path) -> Path:
    """ca.crt, server.crt/.key and client.crt/.key in `folder`; skips without openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    commands = [
        ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test-ca"],
        ["req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ["req", *key, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=client"],
    ]
    for who, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        sign = ["x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"]
        commands.append([*sign, "-CAcreateserial", "-out", f"{who}.crt", "-days", "1", *extra])
    for command in commands:
        subprocess.run(["openssl", *command], cwd=folder, check=True, capture_output=True)
    return folder
