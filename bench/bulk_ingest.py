"""Bulk ingestion throughput: `earmark ingest --wait` on a generated folder.

Makes N synthetic songs (mixed formats, tagged) plus a few files that must be
refused, starts a fresh embedded stack, runs the real CLI on the folder, and
prints files/min and x real time from the first hash to the last final state.
Run: .venv/bin/python -m bench.bulk_ingest --files 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.synthetic import encode, song, wav_bytes
from earmark._table import table
from earmark_stack import down, up


def make_folder(folder: Path, files: int, seconds: float) -> float:
    def one(n: int) -> float:
        fmt = ("mp3", "ogg", "flac", "wav")[n % 4]
        audio = song(20_000 + n, seconds=seconds)
        tags = {"title": f"Bulk {n:04d}", "artist": "Earmark bench"}
        data = (
            wav_bytes(audio) if fmt == "wav" else encode(audio, fmt, bitrate="128k", metadata=tags)
        )
        (folder / f"bulk-{n:04d}.{fmt}").write_bytes(data)
        return seconds

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        total = sum(pool.map(one, range(files)))
    (folder / "readme.wav").write_bytes(b"this is text, not audio\n" * 40)
    (folder / "silence.wav").write_bytes(wav_bytes(song(1, seconds=5) * 0))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each song")
    ap.add_argument("--jobs", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="earmark-bulk-") as tmp:
        folder = Path(tmp) / "music"
        folder.mkdir()
        print(f"generating {args.files} songs of {args.seconds:.0f} s ...", flush=True)
        audio_s = make_folder(folder, args.files, args.seconds)
        home = Path(tmp) / "home"
        up(home, extra_env={"EARMARK_REQUIRED_TAGS": ""})
        try:
            env = {**os.environ, "EARMARK_HOME": str(home)}
            cli = [sys.executable, "-m", "earmark.cli", "ingest", str(folder), "--wait", "--json",
                   "--jobs", str(args.jobs)]  # fmt: skip
            started = time.perf_counter()
            run = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=3600)
            elapsed = time.perf_counter() - started
            rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
            states = Counter(r["state"] for r in rows)
            again_started = time.perf_counter()
            again = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=3600)
            again_s = time.perf_counter() - again_started
            skipped = sum(json.loads(x)["state"] == "SKIPPED" for x in again.stdout.splitlines())
        finally:
            down(home)
    indexed = states.get("INDEXED", 0)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\nbulk ingestion, `earmark ingest --wait --jobs {args.jobs}`, {machine}")
    table(
        ["figure", "value"],
        [
            ("files in the folder", len(rows)),
            ("indexed / refused", f"{indexed} / {states.get('REFUSED', 0)}"),
            ("audio indexed", f"{audio_s / 60:.1f} min"),
            ("wall time, hash to last final state", f"{elapsed:.1f} s"),
            ("files per minute", f"{len(rows) / elapsed * 60:.0f}"),
            ("x real time", f"{audio_s / elapsed:.0f}"),
            ("re-run: files skipped as already ingested", f"{skipped} in {again_s:.1f} s"),
        ],
    )
    return 0 if indexed == args.files else 1


if __name__ == "__main__":
    raise SystemExit(main())
