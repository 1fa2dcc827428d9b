"""Fit the music / mock-audio classifier and write its constants into music_check.py.

    .venv/bin/python -m bench.music_check_train            # fit, report, print constants
    .venv/bin/python -m bench.music_check_train --write    # ... and update the module

Training data: 30 s excerpts (8 per track) of the half of the Debian corpus
that ``music_check_data.is_train_track`` selects, 60 ``bench.synthetic``
songs, and 150 random variants of each mock kind (seeds 0-149; the benchmark
uses other seeds and the other half of the corpus). The model is a multinomial
logistic regression on standardised segment features, fitted with L-BFGS and
an L2 penalty, music weighted up so that real music is rarely refused. The
threshold on the median segment margin is set below the lowest music excerpts
of the training set (leave-one-package-out scores are printed for the
honest estimate).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from bench import music_check_data as data
from earmark_ingest import music_check as mc

MODULE = Path(mc.__file__)
FEATURE_CACHE = data.CACHE / "train_features.npz"
L2 = 1e-4
MUSIC_WEIGHT = 4.0
# Margin added below the training set's music quantile.
THRESHOLD_QUANTILE = 0.002
THRESHOLD_SLACK = 1.0


def load(refresh: bool) -> dict[str, np.ndarray | list]:
    if FEATURE_CACHE.exists() and not refresh:
        z = np.load(FEATURE_CACHE, allow_pickle=False)
        return {k: z[k] for k in z.files}
    tracks = [t for t in data.load_tracks() if data.is_train_track(t)]
    t0 = time.perf_counter()
    got = data.collect(
        tracks=tracks,
        per_track=8,
        phase=0.0,
        mock_seeds=range(150),
        song_seeds=range(60),
        log=lambda m: print(m, file=sys.stderr),
    )
    print(f"features in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    label, group, source, rows = [], [], [], []
    for lab, g, src, f in zip(got["label"], got["group"], got["source"], got["feats"], strict=True):
        for row in f:
            label.append(lab)
            group.append(g)
            source.append(src)
            rows.append(row)
    arrays = {
        "label": np.array(label),
        "group": np.array(group),
        "source": np.array(source),
        "feats": np.array(rows),
    }
    data.CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(FEATURE_CACHE, **arrays)
    return arrays


def fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    z = mc.transform(x)
    mean, std = z.mean(axis=0), z.std(axis=0) + 1e-9
    z = (z - mean) / std
    k, d = len(mc.KINDS), z.shape[1]
    onehot = np.eye(k)[y]
    zb = np.hstack([z, np.ones((z.shape[0], 1))])

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        wmat = theta.reshape(k, d + 1)
        logits = zb @ wmat.T
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll = -(w * (onehot * logp).sum(axis=1)).sum() / w.sum()
        grad = ((np.exp(logp) - onehot) * w[:, None]).T @ zb / w.sum()
        reg = wmat[:, :d]
        grad[:, :d] += L2 * reg
        return float(nll + 0.5 * L2 * (reg**2).sum()), grad.ravel()

    res = minimize(loss, np.zeros(k * (d + 1)), jac=True, method="L-BFGS-B")
    wmat = res.x.reshape(k, d + 1)
    return mean, std, wmat[:, :d], wmat[:, d]


def set_model(
    mean: np.ndarray, std: np.ndarray, coef: np.ndarray, icpt: np.ndarray, thr: float
) -> None:
    mc.FEATURE_MEAN, mc.FEATURE_STD, mc.COEF, mc.INTERCEPT, mc.THRESHOLD = (
        mean,
        std,
        coef,
        icpt,
        thr,
    )


def group_scores(feats: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = mc.margins(mc.predict_log_proba(feats))
    uniq = np.unique(groups)
    return uniq, np.array([np.median(m[groups == g]) for g in uniq])


def train(arr: dict, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    y = np.array([mc.KINDS.index(lab) for lab in arr["label"][mask]])
    w = np.where(y == 0, MUSIC_WEIGHT, 1.0)
    # Each excerpt counts once, however many segments it has.
    g = arr["group"][mask]
    _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    w = w / counts[inv]
    return fit(arr["feats"][mask], y, w)


def threshold_for(music_scores: np.ndarray) -> float:
    return float(min(0.0, np.quantile(music_scores, THRESHOLD_QUANTILE) - THRESHOLD_SLACK))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.music_check_train", description=__doc__)
    ap.add_argument("--refresh", action="store_true", help="recompute the cached features")
    ap.add_argument("--write", action="store_true", help="write the constants into music_check.py")
    args = ap.parse_args(argv)
    arr = load(args.refresh)
    labels, groups, sources = arr["label"], arr["group"], arr["source"]
    packages = np.array([s.split("/")[0] if "/" in s else "" for s in sources])
    n_groups = len(np.unique(groups))
    print(f"{len(labels)} segments in {n_groups} excerpts")

    # Leave one corpus package out: how does music never seen look?
    print("leave-one-package-out (music excerpts refused / total):")
    for pkg in sorted(set(packages) - {""}):
        keep = packages != pkg
        mean, std, coef, icpt = train(arr, keep)
        set_model(mean, std, coef, icpt, 0.0)
        _, sc_train = group_scores(
            arr["feats"][keep & (labels == "music")], groups[keep & (labels == "music")]
        )
        set_model(mean, std, coef, icpt, threshold_for(sc_train))
        out = packages == pkg
        _, sc = group_scores(arr["feats"][out], groups[out])
        refused = int((sc < mc.THRESHOLD).sum())
        print(
            f"  {pkg:<24} {refused:>3} / {sc.size:<4} min score {sc.min():7.2f}"
            f"  thr {mc.THRESHOLD:6.2f}"
        )

    mean, std, coef, icpt = train(arr, np.ones(len(labels), dtype=bool))
    set_model(mean, std, coef, icpt, 0.0)
    is_music = labels == "music"
    _, sc_music = group_scores(arr["feats"][is_music], groups[is_music])
    thr = threshold_for(sc_music)
    set_model(mean, std, coef, icpt, thr)
    _, sc_mock = group_scores(arr["feats"][~is_music], groups[~is_music])
    print(
        f"threshold {thr:.3f}; training music refused {(sc_music < thr).mean():.2%}, "
        f"mocks accepted {(sc_mock >= thr).mean():.2%}"
    )
    for kind in mc.KINDS[1:]:
        sel = labels == kind
        _, sc = group_scores(arr["feats"][sel], groups[sel])
        print(
            f"  {kind:<8} accepted as music {(sc >= thr).mean():6.2%}"
            f"  (min {sc.min():.1f} max {sc.max():.1f})"
        )

    text = render(mean, std, coef, icpt, thr)
    print(text)
    if args.write:
        src = MODULE.read_text()
        new = re.sub(r"# BEGIN MODEL\n.*?# END MODEL\n", text, src, flags=re.S)
        MODULE.write_text(new)
        print(f"wrote {MODULE}")
    return 0


def _nums(v: np.ndarray, indent: str, per_line: int = 7) -> list[str]:
    vals = [f"{x:.6g}" for x in v]
    return [indent + ", ".join(vals[i : i + per_line]) + "," for i in range(0, len(vals), per_line)]


def _arr(name: str, v: np.ndarray) -> list[str]:
    return [f"{name} = np.array([", *_nums(v, "    "), "])"]


def render(
    mean: np.ndarray, std: np.ndarray, coef: np.ndarray, icpt: np.ndarray, thr: float
) -> str:
    lines = ["# BEGIN MODEL", "# fmt: off"]
    lines += _arr("FEATURE_MEAN", mean) + _arr("FEATURE_STD", std)
    lines.append("COEF = np.array([")
    for kind, row in zip(mc.KINDS, coef, strict=True):
        lines += [f"    [  # {kind}", *_nums(row, "        "), "    ],"]
    lines.append("])")
    lines += _arr("INTERCEPT", icpt)
    lines += [f"THRESHOLD = {thr:.4f}", "# fmt: on", "# END MODEL", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
