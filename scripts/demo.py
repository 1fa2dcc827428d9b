"""`make demo`: start the embedded stack, ingest a catalog, identify degraded clips.

Without MUSIC=dir the catalog is generated (synthetic songs, so the demo needs
no download); with it, every audio file under dir is ingested. Clips are cut
from catalog tracks at random offsets and degraded (noise, MP3 re-encoding,
phone band), plus one clip of music that is not in the catalog.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import degrade  # noqa: E402
from bench.corpus import decode_audio  # noqa: E402
from bench.synthetic import encode, song, wav_bytes  # noqa: E402
from earmark import Earmark  # noqa: E402
from earmark._table import Progress, table  # noqa: E402
from earmark.cli import AUDIO_SUFFIXES  # noqa: E402
from earmark.discovery import earmark_home  # noqa: E402
from earmark_ingest.tags import read_tags  # noqa: E402
from earmark_stack import up  # noqa: E402

SR = 22050
CONDITIONS = ("clean 3s", "noise 10dB 5s", "mp3 32k 5s", "phone+noise 10s")


def make_catalog(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        fmt = ("mp3", "ogg", "flac", "wav")[seed % 4]
        path = folder / f"demo-song-{seed:02d}.{fmt}"
        if not path.exists():
            audio = song(seed, seconds=45)
            tags = {"title": f"Demo song {seed:02d}", "artist": "Earmark synth"}
            data = (
                wav_bytes(audio)
                if fmt == "wav"
                else encode(audio, fmt, bitrate="96k", metadata=tags)
            )
            path.write_bytes(data)
        paths.append(path)
    return paths


def distinct_audio_files(folder: Path) -> list[Path]:
    """Audio files under `folder`, without symlinks or byte-identical copies."""
    seen: set[str] = set()
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            files.append(path)
    return files


def settle_identify_load(em: Earmark, submission_ids: list[str], limit_s: float = 300.0) -> None:
    """Let the background stages (features, renditions) finish, so that the latency
    measured next is identification's own and not a share of two busy cores."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        subs = em.submissions(submission_ids)
        if all({"analysed", "transcoded"} <= {st for st, _ in s.stages} for s in subs):
            print(f"features and renditions done {time.perf_counter() - started:.0f} s later")
            return
        time.sleep(1.0)
    print("features and renditions still running; latencies below share the CPU with them")


def fallback_tags(path: Path) -> dict[str, str]:
    """Title and artist for files that carry none (Earmark requires both by default):
    the file name and the folder, as a catalogue sheet would give them."""
    tags = read_tags(path.read_bytes())
    out = {}
    if not tags.title:
        out["title"] = path.stem
    if not tags.artist:
        out["artist"] = path.parent.name
    return out


def degrade_clip(audio: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    if condition.startswith("noise"):
        return degrade.mix_at_snr(audio, degrade.pink_noise(len(audio), rng), 10.0)
    if condition.startswith("mp3"):
        return degrade.mp3_roundtrip(audio, SR, "32k")
    if condition.startswith("phone"):
        phone = degrade.bandpass(audio, SR)
        return degrade.mix_at_snr(phone, degrade.pink_noise(len(phone), rng), 10.0)
    return audio


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--music", type=Path, help="folder of audio to use as the catalog")
    parser.add_argument("--tracks", type=int, default=12, help="generated tracks without --music")
    parser.add_argument("--clips", type=int, default=12, help="tracks to cut clips from")
    args = parser.parse_args()

    home = earmark_home()
    print(f"== starting the embedded stack under {home}", flush=True)
    info = up(home, progress=lambda m: print("  " + m, flush=True))
    if args.music:
        files = distinct_audio_files(args.music)
    else:
        files = make_catalog(home / "demo-music", args.tracks)
    if not files:
        print(f"no audio files under {args.music}", file=sys.stderr)
        return 1

    with Earmark(ingest=info.addr("ingest"), search=info.addr("search")) as em:
        known = {t.external_id: t for t in em.tracks()}
        todo = [f for f in files if str(f) not in known]
        print(f"== ingesting {len(todo)} files ({len(files) - len(todo)} already in the catalog)")
        track_of: dict[str, str] = {ext: t.track_id for ext, t in known.items()}
        rejected = 0
        if todo:
            started = time.perf_counter()
            bar = Progress(len(todo), "upload")
            subs = []
            refused: list[str] = []
            with ThreadPoolExecutor(max_workers=4) as pool:
                futures = {
                    pool.submit(em.upload, p, external_id=str(p), metadata=fallback_tags(p)): p
                    for p in todo
                }
                for n, future in enumerate(as_completed(futures), start=1):
                    try:
                        subs.append(future.result())
                    except grpc.RpcError as exc:
                        refused.append(f"{futures[future].name}: {exc.details()}")
                    bar.update(n)
            for line in refused:
                print(f"  refused {line}")
            wait_bar = Progress(len(subs), "index ")
            final = em.wait(
                [s.submission_id for s in subs],
                on_progress=lambda ss: wait_bar.update(sum(s.final for s in ss)),
            )
            elapsed = time.perf_counter() - started
            audio_s = sum(s.duration_s for s in final)
            rejected = sum(s.state == "REJECTED" for s in final) + len(refused)
            for s in final:
                if s.state == "INDEXED":
                    track_of[s.external_id] = s.track_id
            print(
                f"ingested {len(final) + len(refused) - rejected} tracks, "
                f"{audio_s / 60:.1f} min of audio, "
                f"in {elapsed:.1f} s end to end: {audio_s / elapsed:.0f}x real time"
                + (f" ({rejected} rejected)" if rejected else "")
            )
            settle_identify_load(em, [s.submission_id for s in final if s.state == "INDEXED"])

        rng = np.random.default_rng(7)
        indexed = [f for f in files if str(f) in track_of]
        chosen = [indexed[i] for i in rng.permutation(len(indexed))[: args.clips]]
        rows: list[tuple[object, ...]] = []
        latencies: list[float] = []
        server: list[float] = []
        correct = total = 0
        with tempfile.TemporaryDirectory() as tmp:
            for n, path in enumerate(chosen):
                condition = CONDITIONS[n % len(CONDITIONS)]
                seconds = float(condition.split()[-1].rstrip("s"))
                audio = decode_audio(path, SR)
                if len(audio) < (seconds + 1) * SR:
                    continue
                offset = float(rng.uniform(0, len(audio) / SR - seconds - 0.5))
                excerpt = audio[int(offset * SR) : int((offset + seconds) * SR)]
                clip = Path(tmp) / f"clip{n}.wav"
                clip.write_bytes(wav_bytes(degrade_clip(excerpt, condition, rng), SR))
                result = em.identify(clip)
                latencies.append(result.latency_ms)
                server.append(result.server_ms)
                match = result.match
                ok = (
                    match is not None
                    and match.track_id == track_of.get(str(path))
                    and abs(match.offset_s - offset) < 0.5
                )
                correct += ok
                total += 1
                rows.append((
                    path.name, condition, f"{offset:.1f}",
                    Path(match.external_id).name if match else "no match",
                    f"{match.offset_s:.1f}" if match else "-",
                    f"{match.confidence:.2f}" if match else "-",
                    f"{result.latency_ms:.0f}", "yes" if ok else "NO",
                ))  # fmt: skip
            stranger = song(10_000, seconds=12)[SR : 9 * SR]
            result = em.identify(wav_bytes(stranger, SR))
            latencies.append(result.latency_ms)
            server.append(result.server_ms)
            ok = result.match is None
            correct += ok
            total += 1
            rows.append((
                "(not in catalog)", "clean 8s", "-",
                Path(result.match.external_id).name if result.match else "no match",
                "-", f"{result.match.confidence:.2f}" if result.match else "-",
                f"{result.latency_ms:.0f}", "yes" if ok else "NO",
            ))  # fmt: skip

    print("\n== identification of degraded clips")
    table(
        ["clip from", "condition", "true offset", "identified as", "offset", "conf", "ms", "right"],
        rows,
    )
    print(
        f"\n{correct}/{total} right; identify latency p50 {percentile(latencies, 50):.0f} ms, "
        f"p99 {percentile(latencies, 99):.0f} ms client side over loopback "
        f"(server side p50 {percentile(server, 50):.0f} ms, p99 {percentile(server, 99):.0f} ms)"
    )
    print(f"\nThe stack keeps running: try `{REPO}/.venv/bin/earmark tracks`; stop: `make down`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
