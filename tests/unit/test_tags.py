"""Reading tags from every supported container, merging with the request, required fields."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest

from earmark_ingest.tags import TrackTags, merge, missing_fields, read_tags

ISRC = "US-ABC-12-34567"
TITLE = "Tïtle — ünïcode"
ARTIST = "The Artist"
ALBUM = "An Album"


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _write(path: Path, *args: str, meta: dict[str, str] | None = None) -> bytes:
    meta = (
        meta
        if meta is not None
        else {"title": TITLE, "artist": ARTIST, "album": ALBUM, "ISRC": ISRC}
    )
    tags = [a for k, v in meta.items() for a in ("-metadata", f"{k}={v}")]
    cmd = [
        _ffmpeg(),
        "-y",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=0.5:sample_rate=44100",
        *tags,
        *args,
        str(path),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return path.read_bytes()


FORMATS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus", "-b:a", "32k"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
    "wav": [],  # RIFF LIST/INFO
    "aiff": ["-write_id3v2", "1"],  # ID3 chunk, as taggers write it
}


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_reads_title_artist_album_from_every_format(tmp_path: Path, ext: str) -> None:
    tags = read_tags(_write(tmp_path / f"t.{ext}", *FORMATS[ext]))
    assert (tags.title, tags.artist, tags.album) == (TITLE, ARTIST, ALBUM)
    if ext != "m4a":  # ffmpeg's mp4 muxer has no ISRC atom; see the mutagen test below
        assert tags.isrc == "USABC1234567"


def test_wav_with_id3_chunk(tmp_path: Path) -> None:
    tags = read_tags(_write(tmp_path / "t.wav", "-write_id3v2", "1"))
    assert (tags.title, tags.artist, tags.isrc) == (TITLE, ARTIST, "USABC1234567")


def test_plain_aiff_text_chunks(tmp_path: Path) -> None:
    # Without ID3 ffmpeg writes the AIFF NAME and AUTH chunks.
    tags = read_tags(_write(tmp_path / "t.aiff", meta={"title": "Name", "author": "Auth"}))
    assert (tags.title, tags.artist) == ("Name", "Auth")


def test_m4a_isrc_and_extras_written_by_mutagen(tmp_path: Path) -> None:
    from mutagen.mp4 import MP4, MP4FreeForm

    path = tmp_path / "t.m4a"
    _write(path, *FORMATS["m4a"], meta={"title": TITLE})
    f = MP4(path)
    assert f.tags is not None
    f.tags["----:com.apple.iTunes:ISRC"] = [MP4FreeForm(b"GBAYE0601498")]
    f.tags["\xa9ART"] = [ARTIST]
    f.tags["trkn"] = [(3, 12)]
    f.tags["\xa9day"] = ["1999"]
    f.save()
    tags = read_tags(path.read_bytes())
    assert (tags.title, tags.artist, tags.isrc) == (TITLE, ARTIST, "GBAYE0601498")
    assert tags.extra["track_number"] == "3/12"
    assert tags.extra["date"] == "1999"


def test_id3_extras_and_cover_art_is_skipped(tmp_path: Path) -> None:
    from mutagen.id3 import APIC, ID3, TCON, TXXX

    path = tmp_path / "t.mp3"
    _write(path, *FORMATS["mp3"])
    id3 = ID3(path)
    id3.add(APIC(encoding=3, mime="image/png", type=3, desc="cover", data=b"\x89PNG" + bytes(5000)))
    id3.add(TCON(encoding=3, text=["Jazz"]))
    id3.add(TXXX(encoding=3, desc="CATALOGNUMBER", text=["CAT-001"]))
    id3.save()
    tags = read_tags(path.read_bytes())
    assert tags.title == TITLE
    assert tags.extra["genre"] == "Jazz"
    assert tags.extra["catalognumber"] == "CAT-001"
    assert not any("PNG" in v for v in tags.extra.values())


def test_untagged_audio_gives_empty_tags(tmp_path: Path) -> None:
    tags = read_tags(_write(tmp_path / "t.flac", meta={}))
    assert (tags.title, tags.artist, tags.album, tags.isrc) == ("", "", "", "")


GARBAGE = [
    b"",
    b"\x00",
    b"hello, world\n" * 100,
    b"\x7fELF\x02\x01\x01" + bytes(200),
    b"PK\x03\x04" + bytes(100),
    b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",  # ID3 header claiming a huge tag
    b"fLaC\x00\x00\x00\x22" + bytes(10),
    b"OggS" + bytes(60),
    b"RIFF\xff\xff\xff\xffWAVELIST\xff\xff\xff\x7fINFO",
    b"FORM\x00\x00\x00\x20AIFFNAME\xff\xff\xff\xff",
    b"\x00\x00\x00\x18ftypM4A " + bytes(40),
    np.random.default_rng(4).bytes(4096),  # seeded so that a failure reproduces
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_never_raises(data: bytes) -> None:
    tags = read_tags(data)
    assert isinstance(tags, TrackTags)
    assert tags.title == "" and tags.artist == ""


def test_truncated_and_corrupted_files_never_raise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for ext in ("mp3", "flac", "ogg", "m4a", "wav"):
        data = _write(tmp_path / f"c.{ext}", *FORMATS[ext])
        for cut in (4, 11, 40, 100, len(data) // 2):
            assert isinstance(read_tags(data[:cut]), TrackTags)
        for _ in range(10):
            buf = bytearray(data)
            pos = rng.integers(0, min(len(buf), 600), 8)
            for p in pos:
                buf[p] = int(rng.integers(0, 256))
            assert isinstance(read_tags(bytes(buf)), TrackTags)


def test_merge_request_overrides_non_empty_values_only() -> None:
    tags = TrackTags(
        title="File title", artist="File artist", album="File album", extra={"genre": "Rock"}
    )
    merged = merge(
        tags, {"title": "Request title", "artist": "  ", "isrc": "", "extra": {"label": "L"}}
    )
    assert merged.title == "Request title"
    assert merged.artist == "File artist"
    assert merged.album == "File album"
    assert merged.isrc == ""
    assert merged.extra == {"genre": "Rock", "label": "L"}


def test_merge_accepts_a_track_metadata_message() -> None:
    from earmark.v1 import common_pb2

    req = common_pb2.TrackMetadata(artist="Req", extra={"genre": "Pop"})
    merged = merge(TrackTags(title="T", artist="A", extra={"genre": "Rock"}), req)
    assert (merged.title, merged.artist, merged.extra["genre"]) == ("T", "Req", "Pop")


def test_missing_fields() -> None:
    assert missing_fields(TrackTags()) == ["title", "artist"]
    assert missing_fields(TrackTags(title="x")) == ["artist"]
    assert missing_fields({"title": "x", "artist": " "}) == ["artist"]
    assert missing_fields(TrackTags(title="x", artist="y")) == []
    assert missing_fields(TrackTags(title="x"), required=("title", "isrc", "label")) == [
        "isrc",
        "label",
    ]
    assert missing_fields(TrackTags(title="x", extra={"label": "L"}), required=("label",)) == []
    assert missing_fields(merge(TrackTags(), {"title": "t", "artist": "a"})) == []


def test_reads_from_memory_without_a_file_name(tmp_path: Path) -> None:
    data = _write(tmp_path / "t.ogg", *FORMATS["ogg"])
    assert read_tags(io.BytesIO(data).getvalue()).artist == ARTIST
