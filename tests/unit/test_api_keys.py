"""API keys: hashed storage, roles per method, open health checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earmark_runtime.auth import METHOD_ROLES, KeysFileError, KeyStore, hash_key


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    entries = [
        {"name": "player", "role": "identify", "sha256": hash_key("k-identify")},
        {"name": "label", "role": "ingest", "sha256": hash_key("k-ingest")},
        {"name": "ops", "role": "admin", "sha256": hash_key("k-admin")},
    ]
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(entries))
    loaded = KeyStore.load(str(path))
    assert loaded is not None
    return loaded


IDENTIFY = "/earmark.v1.SearchService/Identify"
UPLOAD = "/earmark.v1.IngestService/Upload"
DELETE = "/earmark.v1.SearchService/DeleteTrack"


def test_keys_file_holds_no_key_in_clear(tmp_path: Path, store: KeyStore) -> None:
    text = (tmp_path / "keys.json").read_text()
    assert "k-identify" not in text and hash_key("k-identify") in text


@pytest.mark.parametrize(
    "key,method,expected",
    [
        ("", IDENTIFY, "UNAUTHENTICATED"),
        ("wrong", IDENTIFY, "UNAUTHENTICATED"),
        ("k-identify", IDENTIFY, ""),
        ("k-identify", UPLOAD, "PERMISSION_DENIED"),
        ("k-ingest", UPLOAD, ""),
        ("k-ingest", IDENTIFY, "PERMISSION_DENIED"),
        ("k-ingest", DELETE, "PERMISSION_DENIED"),
        ("k-admin", DELETE, ""),
        ("k-admin", UPLOAD, ""),
        ("k-identify", "/earmark.v1.SearchService/NewMethodNobodyMapped", "PERMISSION_DENIED"),
    ],
)
def test_roles(store: KeyStore, key: str, method: str, expected: str) -> None:
    decision = store.authorize(method, {"x-api-key": key} if key else {})
    assert decision.allowed == (expected == "")
    assert decision.code == expected


def test_bearer_header_and_open_health(store: KeyStore) -> None:
    assert store.authorize(IDENTIFY, {"authorization": "Bearer k-identify"}).allowed
    assert store.authorize("/grpc.health.v1.Health/Check", {}).allowed
    assert store.authorize(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", {}
    ).allowed


def test_every_rpc_of_the_contract_has_a_role() -> None:
    import importlib
    import pkgutil

    import earmark.v1

    names = [m.name for m in pkgutil.iter_modules(earmark.v1.__path__) if m.name.endswith("_pb2")]
    assert "search_pb2" in names
    for name in names:
        module = importlib.import_module(f"earmark.v1.{name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"/{service.full_name}/{method.name}" in METHOD_ROLES


def test_bad_keys_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"name": "x", "role": "root", "sha256": "00"}]))
    with pytest.raises(KeysFileError):
        KeyStore.load(str(path))
    assert KeyStore.load("") is None
