"""Every file of tests/fuzz/corpus, replayed on every `make test`: the seeds and
each input that once crashed, hung or slipped past a check. The file's folder
says what it is fed to (see corpus/README.md)."""

from __future__ import annotations

import struct
from pathlib import Path

import grpc
import numpy as np
import pytest

from earmark.v1 import common_pb2
from earmark_ingest.tags import TrackTags, merge, read_tags
from earmark_ingest.validation import check_audio, check_content
from earmark_runtime.audio import AudioDecodeError, DecodedAudio, pcm16_to_float
from tests.fuzz.live import KINDS, call, unpack
from tests.fuzz.support import CORPUS, corpus_files
from tests.fuzz.test_fuzz_audio import decode_or_refuse
from tests.fuzz.test_fuzz_intake import assert_bounded

pytestmark = pytest.mark.timeout(120)
RATE = 8000


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CORPUS)) for p in paths]


def _checks(audio: DecodedAudio) -> None:
    refusal = check_audio(audio, min_duration_s=0.0, max_duration_s=7200.0)
    if refusal is None:
        refusal = check_content(audio, max_clipping=0.2, music_check=True)
    assert refusal is None or refusal.message


AUDIO = corpus_files("audio")


@pytest.mark.parametrize("path", AUDIO, ids=_ids(AUDIO))
def test_audio_file(path: Path) -> None:
    data = path.read_bytes()
    assert_bounded(read_tags(data))
    decoded = decode_or_refuse(data, max_seconds=60.0)
    if decoded is not None:
        _checks(decoded)


PCM = corpus_files("pcm")


@pytest.mark.parametrize("path", PCM, ids=_ids(PCM))
def test_raw_pcm(path: Path) -> None:
    blob = path.read_bytes()
    rate, channels = struct.unpack_from("<II", blob)
    try:
        out = pcm16_to_float(blob[8:], rate, channels, RATE)
    except AudioDecodeError:
        return
    assert out.dtype == np.float32 and np.isfinite(out).all()


METADATA = corpus_files("metadata")


@pytest.mark.parametrize("path", METADATA, ids=_ids(METADATA))
def test_upload_metadata(path: Path) -> None:
    request = common_pb2.TrackMetadata.FromString(path.read_bytes())
    assert_bounded(merge(TrackTags(), request))


SAMPLES = corpus_files("samples")


@pytest.mark.parametrize("path", SAMPLES, ids=_ids(SAMPLES))
def test_decoded_samples(path: Path) -> None:
    samples = np.frombuffer(path.read_bytes(), dtype="<f4").astype(np.float32)
    _checks(DecodedAudio(samples=samples, sample_rate_hz=RATE, container="wav"))


PROTO = corpus_files("proto")


@pytest.mark.parametrize("path", PROTO, ids=_ids(PROTO))
def test_request(channel: grpc.Channel, path: Path) -> None:
    method = (
        "/" + ".".join(path.parent.name.split(".")[:-1]) + "/" + path.parent.name.split(".")[-1]
    )
    assert method in KINDS, f"{path.parent.name} names no fuzzed method"
    call(channel, method, unpack(path.read_bytes()))


def test_the_corpus_is_there() -> None:
    """A corpus that silently vanished would make every replay above vacuous."""
    assert len(AUDIO) >= 10 and PCM and METADATA and SAMPLES and PROTO
    assert any(p.name.startswith("seed-alac-bomb") for p in AUDIO)
