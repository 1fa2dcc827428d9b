"""Milvus connections, shared by features (similarity index) and search (neural segments).

A URI is a Milvus server ("http://milvus:19530", Kubernetes) or a Milvus Lite
file ("/path/name.db", the embedded stack); both go through the same pymilvus
calls. pymilvus is imported here only when a connection is made: it is a
dependency of those two services, not of the runtime.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .config import ConfigError

log = logging.getLogger(__name__)

_SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")
# Every data call carries a deadline: pymilvus waits forever by default, and one
# call stuck on a wedged server would hold an event consumer (and its events) with it.
CALL_TIMEOUT_S = 60.0
# Health probes give up after 3 s; the thread a probe runs in must not outlive it by much.
PING_TIMEOUT_S = 3.0


def is_lite(uri: str) -> bool:
    return uri.endswith(".db")


def check_uri(uri: str, setting: str) -> str:
    """`uri` if Milvus can open it; ConfigError naming `setting` otherwise."""
    if not (is_lite(uri) or uri.startswith(_SERVER_SCHEMES)):
        raise ConfigError(
            f"{setting} must be http(s)://HOST:PORT or a Milvus Lite file *.db, got {uri!r}"
        )
    return uri


def connect(uri: str) -> Any:
    """A MilvusClient for `uri` (a Lite file's folder is created), with EARMARK_MILVUS_TOKEN."""
    from pymilvus import MilvusClient

    if is_lite(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    token = os.environ.get("EARMARK_MILVUS_TOKEN", "").strip()
    return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)


def close(client: Any, uri: str) -> None:
    """Close the client and, for Milvus Lite, stop the server pymilvus started for the file."""
    try:
        client.close()
    finally:
        if is_lite(uri):
            try:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(uri)
            except Exception:
                log.debug("could not stop Milvus Lite", exc_info=True)
