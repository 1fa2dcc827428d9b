"""The real embedded stack — nats-server, PostgreSQL and every service — on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from earmark import Earmark
from earmark_stack import StackInfo, down, up

# Small enough that a test can exceed it cheaply.
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="session")
def ingest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ingest-root")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, ingest_root: Path) -> Iterator[StackInfo]:
    home: Path = tmp_path_factory.mktemp("earmark-home")
    info = up(
        home,
        extra_env={
            "EARMARK_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
            # Most tests upload generated, untagged audio; test_submission_checks.py
            # runs its own stack with the default tag rule.
            "EARMARK_REQUIRED_TAGS": "",
            "EARMARK_INGEST_ROOT": str(ingest_root),
            "EARMARK_LOG_LEVEL": "INFO",
        },
    )
    try:
        yield info
    finally:
        down(home)


@pytest.fixture(scope="session")
def client(stack: StackInfo) -> Iterator[Earmark]:
    with Earmark(
        ingest=stack.addr("ingest"),
        search=stack.addr("search"),
        features=stack.addr("features"),
        monitor=stack.addr("monitor"),
    ) as em:
        yield em
