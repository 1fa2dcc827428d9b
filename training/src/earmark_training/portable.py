"""Carry the decoded training audio to a machine that has no corpus (a lent GPU).

A lent machine is reached only through a small file transfer, so the decoded
`AudioSet` (int16, ~390 MB with its MP3 versions) travels compressed:

- each track's clean audio as FLAC (lossless: the anchors are bit-identical);
- its MP3 versions as the MP3 bitstreams themselves, made by the same
  encoder and bitrates as `build_audio_set` (the codec views are the same
  bitstreams, decoded there by libsndfile's mpg123 instead of ffmpeg's
  decoder; the two decodings differ by ~27 dB SNR, far below the coding
  error itself, ~15 dB at 16 kbit/s);
- split into parts of at most ``--part-mb`` so each fits one transfer;
- plus the validation batch as log-mels, so the run validates on exactly
  the pairs a CPU run builds.

Usage::

    python -m earmark_training.portable pack --corpus C --out DIR   # here
    python -m earmark_training.portable unpack PART... --out audio.npz  # there (needs soundfile)
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.corpus import DEFAULT_CORPUS_DIR, ffmpeg_exe
from bench.degrade import mp3_encode
from earmark_training.data import (
    CODEC_BITRATES,
    SR,
    SYNTHETIC_SONGS,
    AudioSet,
    Int16Array,
    PairMaker,
    _to_int16,
    build_audio_set,
    corpus_split,
)

VALIDATION_FILE = "validation.npz"


def flac_bytes(clean: Int16Array) -> bytes:
    with tempfile.TemporaryDirectory(prefix="earmark-pack-") as tmp:
        out = Path(tmp) / "x.flac"
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
        cmd += ["-f", "s16le", "-ar", str(SR), "-ac", "1", "-i", "pipe:0", "-c:a", "flac"]
        proc = subprocess.run([*cmd, "-y", str(out)], input=clean.astype("<i2").tobytes(),
                              capture_output=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"flac encode failed: {proc.stderr.decode(errors='replace')}")
        return out.read_bytes()


def mp3_bytes(clean: Int16Array, bitrate: str) -> bytes:
    """`build_audio_set`'s encoder and bitrate, on the int16 clean audio."""
    return mp3_encode(clean.astype(np.float32) / 32767.0, SR, bitrate)


def _blob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def pack(audio: AudioSet, out_dir: Path, part_mb: float) -> list[Path]:
    """Write `audio` as parts of at most `part_mb` MB; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = int(part_mb * 1e6)
    parts: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    for i, (name, clean) in enumerate(zip(audio.names, audio.clean, strict=True)):
        blobs = {f"flac{i}": _blob(flac_bytes(clean))}
        for j, rate in enumerate(CODEC_BITRATES):
            blobs[f"mp3{i}_{j}"] = _blob(mp3_bytes(clean, rate))
        size = sum(b.size for b in blobs.values())
        if sizes[-1] and sizes[-1] + size > limit:
            parts.append({})
            sizes.append(0)
        parts[-1].update(blobs)
        parts[-1][f"name{i}"] = np.array(name)
        sizes[-1] += size
        print(f"pack: [{i + 1}/{len(audio.names)}] {name} {size / 1e6:.2f} MB", flush=True)
    paths = []
    for k, arrays in enumerate(parts):
        path = out_dir / f"audio-part{k}.npz"
        np.savez(path, tracks=np.array(len(audio.names)), **arrays)  # type: ignore[arg-type]
        paths.append(path)
        print(f"pack: {path} {path.stat().st_size / 1e6:.1f} MB", flush=True)
    return paths


def _decode(blob: np.ndarray, length: int) -> Int16Array:
    import soundfile  # only where the parts are unpacked

    x, rate = soundfile.read(io.BytesIO(blob.tobytes()), dtype="float32", always_2d=False)
    if rate != SR:
        raise ValueError(f"decoded at {rate} Hz, expected {SR}")
    x = x[:length]
    return _to_int16(np.pad(x, (0, length - x.size)))


def unpack(parts: Sequence[Path]) -> AudioSet:
    """The AudioSet the parts hold; every track must be in one of them."""
    import soundfile

    tracks: dict[int, tuple[str, Int16Array, list[Int16Array]]] = {}
    total = None
    for path in parts:
        with np.load(path) as z:
            total = int(z["tracks"])
            for key in z.files:
                if not key.startswith("name"):
                    continue
                i = int(key[4:])
                clean, _ = soundfile.read(io.BytesIO(z[f"flac{i}"].tobytes()), dtype="int16")
                coded = [_decode(z[f"mp3{i}_{j}"], clean.size) for j in range(len(CODEC_BITRATES))]
                tracks[i] = (str(z[key]), clean, coded)
    if total is None or sorted(tracks) != list(range(total)):
        raise ValueError(f"the parts hold {len(tracks)} of {total} tracks")
    ordered = [tracks[i] for i in range(total)]
    return AudioSet([t[0] for t in ordered], [t[1] for t in ordered], [t[2] for t in ordered])


def main(argv: list[str] | None = None) -> int:
    from earmark_training.train import (
        VALIDATION_PAIRS,
        VALIDATION_SEED,
        VALIDATION_TRACKS,
    )

    ap = argparse.ArgumentParser(prog="python -m earmark_training.portable")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="compress the training audio and validation batch")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    p.add_argument("--cache", type=Path, default=Path("/work/runs/cache"))
    p.add_argument("--synthetic", type=int, default=SYNTHETIC_SONGS)
    p.add_argument("--part-mb", type=float, default=48.0)
    p.add_argument("--out", type=Path, required=True)
    u = sub.add_parser("unpack", help="decode parts into an AudioSet .npz (needs soundfile)")
    u.add_argument("parts", type=Path, nargs="+")
    u.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    if args.command == "unpack":
        audio = unpack(args.parts)
        audio.save(args.out)
        print(f"unpack: {len(audio.names)} tracks, {audio.hours:.2f} h in {args.out}")
        return 0
    split = corpus_split(args.corpus)
    audio = build_audio_set(split.train, args.synthetic, args.cache)
    pack(audio, args.out, args.part_mb)
    val_audio = build_audio_set(split.unseen_catalog[:VALIDATION_TRACKS], 0, args.cache)
    anchors, positives = PairMaker(val_audio).batch(VALIDATION_SEED, 0, VALIDATION_PAIRS)
    np.savez(
        args.out / VALIDATION_FILE,
        anchors=anchors,
        positives=positives,
        tracks=np.array([t.track_id for t in split.unseen_catalog[:VALIDATION_TRACKS]]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
