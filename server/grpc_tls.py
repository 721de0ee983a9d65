"""TLS on the gRPC port, from Triton's flags: --grpc-use-ssl with --grpc-server-cert,
--grpc-server-key and --grpc-root-cert (PEM files), and --grpc-use-ssl-mutual, which also
turns TLS on, as in Triton, and requires clients to present a certificate the root signed.

Both stacks take the same files: grpc.aio as server credentials, inferd's own HTTP/2 layer as
an `ssl.SSLContext` that offers only HTTP/2 through ALPN, as gRPC clients require.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsError(Exception):
    """The certificate files cannot be used (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class GrpcTls:
    cert: Path
    key: Path
    root: Path | None = None
    mutual: bool = False  # clients must present a certificate signed by `root`

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # gRPC's floor
        try:
            context.load_cert_chain(self.cert, self.key)
            if self.root is not None:
                context.load_verify_locations(self.root)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"gRPC TLS: cannot use {self._files()}: {exc}") from None
        if self.mutual:
            context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["h2"])
        return context

    def credentials(self) -> grpc.ServerCredentials:
        try:
            key, cert = self.key.read_bytes(), self.cert.read_bytes()
            root = self.root.read_bytes() if self.root is not None else None
        except OSError as exc:
            raise TlsError(f"gRPC TLS: cannot read {exc.filename}: {exc.strerror}") from None
        # grpc reads the PEM only as the port opens, and then fails without a reason: ssl's
        # reading of the same files says what is wrong first.
        self.ssl_context()
        return grpc.ssl_server_credentials([(key, cert)], root, require_client_auth=self.mutual)

    def _files(self) -> str:
        files = [f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.root is not None:
            files.append(f"--grpc-root-cert={self.root}")
        return ", ".join(files)


def grpc_tls(
    use_ssl: bool, mutual: bool, cert: str | None, key: str | None, root: str | None
) -> GrpcTls | None:
    """The TLS settings the flags ask for, or None; ValueError for a combination that cannot
    work (checked when the flags are parsed, so the server never starts half-configured)."""
    if not (use_ssl or mutual):
        return None
    flag = "--grpc-use-ssl-mutual=true" if mutual else "--grpc-use-ssl=true"
    if not cert or not key:
        raise ValueError(f"{flag} needs --grpc-server-cert and --grpc-server-key")
    if mutual and not root:
        raise ValueError(f"{flag} needs --grpc-root-cert, the CA that signs client certificates")
    return GrpcTls(Path(cert), Path(key), Path(root) if root else None, mutual)
