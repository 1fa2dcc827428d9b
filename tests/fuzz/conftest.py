"""The live servicers, shared by the proto fuzzers and the corpus replay."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.fuzz.live import LiveServicers
from tests.fuzz.make_seeds import write_seeds

# The seed files are generated, not kept in git; the fuzz modules read them when
# they are collected, so they must exist before that.
write_seeds(overwrite=False)


@pytest.fixture(scope="session")
def channel() -> Iterator[grpc.Channel]:
    with (
        tempfile.TemporaryDirectory(prefix="earmark-fuzz-blobs-") as blob_dir,
        LiveServicers(Path(blob_dir)) as live,
        grpc.insecure_channel(live.address) as chan,
    ):
        yield chan
