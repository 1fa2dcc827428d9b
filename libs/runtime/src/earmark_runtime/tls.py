"""TLS for every gRPC server and, with a CA, mutual TLS between all parties.

Files come from EARMARK_TLS_CERT / EARMARK_TLS_KEY (this process's certificate
and key, PEM) and EARMARK_TLS_CA (the CA that signs peers). A server with a CA
requires client certificates signed by it (mTLS); a client with a CA verifies
the server and presents its own certificate when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    cert: bytes | None
    key: bytes | None
    ca: bytes | None

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None and self.key is not None


def _read(path: str, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {path}: {exc}") from exc


def load_tls(cert: str, key: str, ca: str) -> TlsFiles | None:
    """None when no TLS file is configured."""
    if not (cert or key or ca):
        return None
    if bool(cert) != bool(key):
        raise TlsConfigError("EARMARK_TLS_CERT and EARMARK_TLS_KEY go together")
    return TlsFiles(_read(cert, "certificate"), _read(key, "key"), _read(ca, "CA"))


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    assert tls.cert is not None and tls.key is not None
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=tls.ca is not None
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )
