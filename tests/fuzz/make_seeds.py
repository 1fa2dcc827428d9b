"""Make the files of tests/fuzz/corpus/audio (generated, ignored by git).

The fuzz suite's conftest makes any that are missing before the tests are
collected; `python -m tests.fuzz.make_seeds` rewrites them all: a short tone in every
container the service decodes, tagged files, files that reference other media,
a video with an audio track, and an ALAC file whose header asks the decoder
for 1.5 GB (refused by the ffmpeg memory limit). Each stays a few KB so the
fuzzers can mutate them quickly. The audio findings of earlier fuzzing runs
are written there too, from the bytes kept in FINDINGS, so that git tracks no
media file.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np

AUDIO = Path(__file__).parent / "corpus" / "audio"
RATE = 8000


def tone(seconds: float = 0.5, rate: int = RATE) -> bytes:
    """16-bit mono WAV of two notes, with the fmt/data chunks every parser expects."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 660 * t)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def ffmpeg(args: list[str], data: bytes = b"") -> bytes:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *args]
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def encoded(fmt: str, codec: str, *extra: str) -> bytes:
    return ffmpeg(["-f", "wav", "-i", "pipe:0", "-c:a", codec, *extra, "-f", fmt, "pipe:1"], tone())


def via_file(suffix: str, args: list[str], data: bytes) -> bytes:
    """ffmpeg output that needs a seekable file (MP4 family, Matroska)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"out{suffix}"
        ffmpeg([*args, str(path)], data)
        return path.read_bytes()


def alac_bomb() -> bytes:
    """8-channel ALAC whose config claims 16 M samples per frame: ~1.5 GB of buffers."""
    data = bytearray(
        via_file(".m4a", ["-f", "wav", "-i", "pipe:0", "-ac", "8", "-c:a", "alac"], tone(0.1))
    )
    sample_entry = data.find(b"alac", data.find(b"stsd"))
    config = data.find(b"alac", sample_entry + 4)
    # After the atom type: version/flags (4 bytes), then frameLength (big-endian u32).
    data[config + 8 : config + 12] = (4096 * 4096).to_bytes(4, "big")
    return bytes(data)


def video_with_audio() -> bytes:
    return via_file(
        ".mkv",
        [
            "-f", "lavfi", "-i", "testsrc=size=32x32:rate=5:duration=0.4",
            "-f", "wav", "-i", "pipe:0", "-c:v", "mjpeg", "-c:a", "pcm_s16le", "-shortest",
        ],
        tone(0.4),
    )  # fmt: skip


def wav_with_info() -> bytes:
    """A WAV with a RIFF LIST/INFO chunk (title, artist) after the data."""
    body = tone(0.25)[12:]
    info = b"INFO"
    for cid, text in ((b"INAM", b"Seed Title\0"), (b"IART", b"Seed Artist\0")):
        info += cid + len(text).to_bytes(4, "little") + text + b"\0" * (len(text) & 1)
    chunks = body + b"LIST" + len(info).to_bytes(4, "little") + info
    return b"RIFF" + (len(chunks) + 4).to_bytes(4, "little") + b"WAVE" + chunks


SEEDS = {
    "tone.wav": tone,
    "tone-float.wav": lambda: ffmpeg(
        ["-f", "wav", "-i", "pipe:0", "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"], tone(0.25)
    ),
    "tone.mp3": lambda: encoded("mp3", "libmp3lame", "-b:a", "32k"),
    "tagged.mp3": lambda: encoded(
        "mp3", "libmp3lame", "-b:a", "32k", "-metadata", "title=Seed", "-metadata", "artist=Fuzz"
    ),
    "tone.flac": lambda: encoded("flac", "flac", "-metadata", "title=Seed"),
    "tone.ogg": lambda: encoded("ogg", "libvorbis", "-q:a", "0", "-metadata", "artist=Fuzz"),
    "tone.opus": lambda: encoded("ogg", "libopus", "-b:a", "16k"),
    "tone.m4a": lambda: via_file(
        ".m4a", ["-f", "wav", "-i", "pipe:0", "-c:a", "aac", "-b:a", "32k"], tone()
    ),
    "info.wav": wav_with_info,
    "alac-bomb.m4a": alac_bomb,
    "video.mkv": video_with_audio,
    "playlist.m3u8": lambda: (
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nfile:///etc/passwd\n"
        b"#EXTINF:10.0,\nhttp://169.254.169.254/latest/meta-data/\n#EXT-X-ENDLIST\n"
    ),
    "concat.ffconcat": lambda: (
        b"ffconcat version 1.0\nfile '/etc/passwd'\nfile 'http://example.com/a.mp3'\n"
    ),
}


# Inputs that once broke the audio path (corpus/README.md says what each found),
# byte for byte as the fuzzer wrote them.
FINDINGS = {
    # An 8 kHz mono 16-bit WAV header whose data chunk claims 4 GiB and holds one byte.
    "wav-one-byte-of-data.wav": bytes.fromhex(
        "524946462500000057415645666d74201000000001000100401f0000803e00000200100064617461ffffffff00"
    ),
    # The same header with a zero byte before "fmt ", which cuts the data chunk's size short.
    "wav-truncated-data-chunk.wav": bytes.fromhex(
        "52494646f80f00005741564500666d74201000000001000100401f0000803e00000200100064617461a00f00"
    ),
}


def write_seeds(*, overwrite: bool) -> list[Path]:
    """Write the seeds and the findings (only the missing ones unless `overwrite`);
    returns those written."""
    AUDIO.mkdir(parents=True, exist_ok=True)
    written = []
    files = {
        **{f"seed-{name}": make for name, make in SEEDS.items()},
        **{name: (lambda data=data: data) for name, data in FINDINGS.items()},
    }
    for name, make in files.items():
        path = AUDIO / name
        if overwrite or not path.exists():
            # Written beside the corpus folders (no fuzzer reads there), then moved
            # in: a run cut short leaves no half-written seed.
            partial = AUDIO.parent / f".{path.name}.partial"
            partial.write_bytes(make())
            partial.replace(path)
            written.append(path)
    return written


def main() -> None:
    for path in write_seeds(overwrite=True):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
