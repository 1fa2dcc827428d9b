"""Mutual TLS: every server requires a client certificate from the CA, and the
services reach each other (search -> fingerprint) over it."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.synthetic import song, wav_bytes
from earmark import Earmark
from earmark_stack import StackInfo, down, up

SR = 22050


def _cert(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, ca: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder: Path = tmp_path_factory.mktemp("pki")
    ca = _cert("earmark test CA", None, ca=True)
    _write(folder, "ca", *ca)
    _write(folder, "service", *_cert("earmark services", ca, ca=False))
    _write(folder, "client", *_cert("earmark client", ca, ca=False))
    _write(folder, "rogue-ca", *_cert("someone else", None, ca=True))
    return folder


@pytest.fixture(scope="module")
def secured(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home: Path = tmp_path_factory.mktemp("earmark-tls")
    info = up(
        home,
        extra_env={
            "EARMARK_TLS_CERT": str(pki / "service.crt"),
            "EARMARK_TLS_KEY": str(pki / "service.key"),
            "EARMARK_TLS_CA": str(pki / "ca.crt"),
            "EARMARK_REQUIRED_TAGS": "",
        },
    )
    try:
        yield info
    finally:
        down(home)


def _client(info: StackInfo, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Earmark:
    for name in ("EARMARK_TLS_CA", "EARMARK_TLS_CERT", "EARMARK_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Earmark(ingest=info.addr("ingest"), search=info.addr("search"), timeout_s=10)


def test_mutual_tls_end_to_end(
    secured: StackInfo, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = song(950, seconds=10)
    good = {
        "EARMARK_TLS_CA": str(pki / "ca.crt"),
        "EARMARK_TLS_CERT": str(pki / "client.crt"),
        "EARMARK_TLS_KEY": str(pki / "client.key"),
    }
    with _client(secured, monkeypatch, good) as em:
        sub = em.upload(wav_bytes(audio), external_id="tls-song")
        (final,) = em.wait([sub.submission_id], timeout_s=90)
        assert final.state == "INDEXED"
        match = em.identify(
            wav_bytes(audio[2 * SR : 7 * SR])
        ).match  # search -> fingerprint over mTLS
        assert match is not None and match.track_id == final.track_id
    refused = [
        {},  # plaintext
        {"EARMARK_TLS_CA": str(pki / "ca.crt")},  # no client certificate
        {**good, "EARMARK_TLS_CA": str(pki / "rogue-ca.crt")},  # does not trust the server
    ]
    for env in refused:
        with _client(secured, monkeypatch, env) as em, pytest.raises(grpc.RpcError) as err:
            list(em.tracks())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, env
