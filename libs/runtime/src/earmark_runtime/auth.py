"""API keys and roles.

Keys are never stored: the keys file (EARMARK_API_KEYS_FILE, a Kubernetes
Secret in production) lists each key's SHA-256 with a name and a role. Every
call carries its key in the `x-api-key` metadata (or `authorization: Bearer`).
Roles: `identify` (identify, scan, read the catalog and features), `ingest`
(upload and follow submissions, download), `admin` (everything, including
deletes). Health and reflection stay open for probes and grpcurl. Without a
keys file authentication is off, as in the embedded stack.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

ROLES: Final = ("identify", "ingest", "admin")
OPEN_PREFIXES: Final = ("/grpc.health.v1.", "/grpc.reflection.")

# The role each method needs; admin may call everything.
METHOD_ROLES: Final[dict[str, str]] = {
    "/earmark.v1.IngestService/Upload": "ingest",
    "/earmark.v1.IngestService/GetSubmission": "ingest",
    "/earmark.v1.IngestService/BatchGetSubmissions": "ingest",
    "/earmark.v1.IngestService/WatchSubmission": "ingest",
    "/earmark.v1.IngestService/LookupSubmissions": "ingest",
    "/earmark.v1.IngestService/Download": "ingest",
    "/earmark.v1.SearchService/Identify": "identify",
    "/earmark.v1.SearchService/Scan": "identify",
    "/earmark.v1.SearchService/GetTrack": "identify",
    "/earmark.v1.SearchService/ListTracks": "identify",
    "/earmark.v1.SearchService/DeleteTrack": "admin",
    "/earmark.v1.SearchService/Monitor": "identify",
    "/earmark.v1.IngestService/Reindex": "admin",
    "/earmark.v1.MonitorService/RegisterStream": "admin",
    "/earmark.v1.MonitorService/RemoveStream": "admin",
    "/earmark.v1.MonitorService/ListStreams": "identify",
    "/earmark.v1.MonitorService/ListPlays": "identify",
    "/earmark.v1.FingerprintService/ExtractFingerprint": "identify",
    "/earmark.v1.FeaturesService/GetFeatures": "identify",
    "/earmark.v1.FeaturesService/Similar": "identify",
    "/earmark.v1.FeaturesService/SimilarToAudio": "identify",
}


class KeysFileError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: str = ""  # "UNAUTHENTICATED" or "PERMISSION_DENIED" when refused
    message: str = ""
    principal: Principal | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "emk_" + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, entries: dict[str, Principal]) -> None:
        self._by_hash = entries

    @classmethod
    def load(cls, path: str) -> KeyStore | None:
        """None when `path` is empty: authentication is off."""
        if not path:
            return None
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise KeysFileError(f"cannot read API keys file {path}: {exc}") from exc
        entries: dict[str, Principal] = {}
        for n, item in enumerate(raw if isinstance(raw, list) else []):
            name, role, digest = item.get("name", ""), item.get("role", ""), item.get("sha256", "")
            if role not in ROLES or len(digest) != 64:
                raise KeysFileError(f"{path}: entry {n} needs name, role in {ROLES} and sha256")
            entries[digest.lower()] = Principal(name or f"key-{n}", role)
        return cls(entries)

    def authorize(self, method: str, metadata: dict[str, str]) -> Decision:
        if method.startswith(OPEN_PREFIXES):
            return Decision(True)
        key = metadata.get("x-api-key", "")
        bearer = metadata.get("authorization", "")
        if not key and bearer.lower().startswith("bearer "):
            key = bearer[7:].strip()
        if not key:
            return Decision(False, "UNAUTHENTICATED", "an API key is required (x-api-key metadata)")
        digest = hash_key(key)
        principal = next(
            (p for h, p in self._by_hash.items() if hmac.compare_digest(h, digest)), None
        )
        if principal is None:
            return Decision(False, "UNAUTHENTICATED", "unknown API key")
        needed = METHOD_ROLES.get(method, "admin")
        if principal.role not in (needed, "admin"):
            return Decision(
                False,
                "PERMISSION_DENIED",
                f"role {principal.role!r} may not call {method.rsplit('/', 1)[-1]} "
                f"(needs {needed!r})",
                principal,
            )
        return Decision(True, principal=principal)
