"""Benchmark of the music / mock-audio classifier (earmark_ingest.music_check).

    .venv/bin/python -m bench.music_check_bench                 # default sizes
    .venv/bin/python -m bench.music_check_bench --mocks 40 --per-track 4   # quicker

Music: 30 s excerpts of every Debian corpus track (``--per-track`` evenly
spread offsets, shifted half a step from the ones the model was fitted on),
split into the tracks the model was fitted on and the held-out half; whole
tracks (up to 12 segments of 10 s); and ``bench.synthetic`` songs with seeds
the training never saw. Mocks: ``--mocks`` random 30 s variants of each kind
with seeds ≥ 100000 (training used 0-149), speech both from espeak-ng (real
TTS, when installed) and from the formant synthesiser.

Prints the confusion matrix (true kind x predicted kind), the false-rejection
rate of music, per-kind accuracy, the clipping ratio of real music and the
speed in x real time on one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from bench import music_check_data as data  # noqa: E402
from earmark_ingest import music_check as mc  # noqa: E402

PRED_COLS = (*mc.KINDS, "silence")
WHOLE = "corpus whole tracks"


def _rows(espeak: bool) -> dict[str, data.Gen]:
    gens: dict[str, data.Gen] = {k: g for k, g in data.MOCKS.items() if k != "speech"}
    if espeak:
        gens["speech (espeak-ng)"] = data.espeak_speech
    gens["speech (formant)"] = data.formant_speech
    return gens


def _mock(name: str, gen: data.Gen, seed: int) -> np.ndarray:
    import hashlib

    digest = hashlib.sha256(f"bench:{name}:{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return gen(rng, int(data.EXCERPT_S * data.SR))


class Tally:
    def __init__(self) -> None:
        self.confusion: dict[str, dict[str, int]] = {}
        self.audio_s = 0.0
        self.cpu_s = 0.0
        self.whole_audio_s = 0.0
        self.whole_cpu_s = 0.0
        self.worst: dict[str, list[tuple[float, str]]] = {}

    def run(self, row: str, x: np.ndarray, label: str) -> mc.MusicVerdict:
        t0 = time.process_time()
        v = mc.classify(x, data.SR)
        cpu = time.process_time() - t0
        if row == WHOLE:  # at most MAX_SEGMENTS x 10 s of a long track is analysed
            self.whole_audio_s += x.size / data.SR
            self.whole_cpu_s += cpu
        else:
            self.cpu_s += cpu
            self.audio_s += x.size / data.SR
        self.confusion.setdefault(row, dict.fromkeys(PRED_COLS, 0))[v.kind] += 1
        self.worst.setdefault(row, []).append((v.score, label))
        return v


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.2f} %" if b else "-"


def report(t: Tally, music_rows: list[str], clip: list[float], full_tracks: bool) -> str:
    out = []
    out.append("Confusion matrix (rows: true kind, columns: predicted kind)\n")
    head = "| true \\ predicted | n | " + " | ".join(PRED_COLS) + " | accuracy |"
    out.append(head)
    out.append("|" + "---|" * (len(PRED_COLS) + 3))
    for row, counts in t.confusion.items():
        n = sum(counts.values())
        is_music_row = row in music_rows
        # A mock is handled correctly when refused, whatever kind is named.
        correct = counts["music"] if is_music_row else n - counts["music"]
        cells = " | ".join(str(counts[c]) if counts[c] else "·" for c in PRED_COLS)
        out.append(f"| {row} | {n} | {cells} | {_pct(correct, n)} |")
    out.append("")
    m_n = sum(sum(t.confusion[r].values()) for r in music_rows if r in t.confusion)
    m_rej = sum(
        sum(t.confusion[r].values()) - t.confusion[r]["music"]
        for r in music_rows
        if r in t.confusion
    )
    mock_rows = [r for r in t.confusion if r not in music_rows]
    k_n = sum(sum(t.confusion[r].values()) for r in mock_rows)
    k_acc = sum(t.confusion[r]["music"] for r in mock_rows)
    kind_ok = sum(
        t.confusion[r][r.split(" ")[0]] for r in mock_rows if r.split(" ")[0] in t.confusion[r]
    )
    corpus_rows = [r for r in music_rows if r.startswith("corpus excerpts") and r in t.confusion]
    c_n = sum(sum(t.confusion[r].values()) for r in corpus_rows)
    c_rej = sum(sum(t.confusion[r].values()) - t.confusion[r]["music"] for r in corpus_rows)
    out.append("| figure | value |")
    out.append("|---|---|")
    out.append(
        f"| false rejection of corpus music (30 s excerpts) | {c_rej} / {c_n}"
        f" = {_pct(c_rej, c_n)} |"
    )
    held = "corpus excerpts, held-out tracks"
    if held in t.confusion:
        h = t.confusion[held]
        hn = sum(h.values())
        out.append(
            f"| ... on held-out tracks only | {hn - h['music']} / {hn}"
            f" = {_pct(hn - h['music'], hn)} |"
        )
    if full_tracks and "corpus whole tracks" in t.confusion:
        w = t.confusion["corpus whole tracks"]
        wn = sum(w.values())
        out.append(f"| false rejection of whole corpus tracks | {wn - w['music']} / {wn} |")
    out.append(f"| false rejection of all music rows | {m_rej} / {m_n} = {_pct(m_rej, m_n)} |")
    out.append(f"| mocks accepted as music | {k_acc} / {k_n} = {_pct(k_acc, k_n)} |")
    out.append(f"| mocks refused with the right kind | {kind_ok} / {k_n} = {_pct(kind_ok, k_n)} |")
    total = m_n + k_n
    out.append(f"| overall accuracy (music vs mock) | {_pct(total - m_rej - k_acc, total)} |")
    if clip:
        c = np.array(clip)
        over = int((c > mc.MAX_CLIPPING_RATIO).sum())
        out.append(
            f"| corpus excerpts over the clipping limit ({mc.MAX_CLIPPING_RATIO:.0%})"
            f" | {over} / {c.size}"
            f" (max ratio {c.max():.4%}) |"
        )
    out.append(
        f"| speed, one core, 30 s excerpts | {t.audio_s / max(t.cpu_s, 1e-9):,.0f} x real time "
        f"({t.audio_s / 3600:.2f} h of audio in {t.cpu_s:.1f} s CPU) |"
    )
    if t.whole_cpu_s:
        out.append(
            f"| speed on whole tracks (<= {mc.MAX_SEGMENTS} x {mc.SEGMENT_S:.0f} s analysed)"
            f" | {t.whole_audio_s / t.whole_cpu_s:,.0f} x real time |"
        )
    lows = sorted(s for r in music_rows for s in t.worst.get(r, []))[:5]
    highs = sorted((s for r in mock_rows for s in t.worst.get(r, [])), reverse=True)[:5]
    out.append("")
    out.append(
        f"Lowest music scores (threshold {mc.THRESHOLD:.2f}): "
        + ", ".join(f"{s:.2f} {lab}" for s, lab in lows)
    )
    out.append("")
    out.append("Highest mock scores: " + ", ".join(f"{s:.2f} {lab}" for s, lab in highs))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.music_check_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--per-track", type=int, default=8, help="30 s excerpts per corpus track")
    ap.add_argument("--mocks", type=int, default=100, help="examples per mock kind")
    ap.add_argument("--songs", type=int, default=50, help="bench.synthetic songs")
    ap.add_argument("--no-full-tracks", action="store_true", help="skip whole-track classification")
    ap.add_argument("--no-espeak", action="store_true", help="formant speech only")
    args = ap.parse_args(argv)

    t = Tally()
    clip: list[float] = []
    tracks = data.load_tracks()
    print(f"{len(tracks)} corpus tracks", file=sys.stderr)
    for track, off, x in data.corpus_excerpts(tracks, args.per_track, phase=0.5):
        row = (
            "corpus excerpts, fitted tracks"
            if data.is_train_track(track)
            else "corpus excerpts, held-out tracks"
        )
        t.run(row, x, f"{track.track_id}@{off:.0f}s")
        clip.append(mc.clipping_ratio(x))
    if not args.no_full_tracks:
        for track in tracks:
            t.run("corpus whole tracks", data.track_audio(track), track.track_id)
    for seed in range(1000, 1000 + args.songs):
        t.run("synthetic songs", data.synthetic_song(seed), f"synthetic:{seed}")
    print("music done", file=sys.stderr)
    espeak = data.espeak_available() and not args.no_espeak
    for name, gen in _rows(espeak).items():
        for i in range(args.mocks):
            seed = 100000 + i
            t.run(name, _mock(name, gen, seed), f"{name}:{seed}")
        print(f"{name} done", file=sys.stderr)
    music_rows = [
        "corpus excerpts, fitted tracks",
        "corpus excerpts, held-out tracks",
        "corpus whole tracks",
        "synthetic songs",
    ]
    print(report(t, music_rows, clip, not args.no_full_tracks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
