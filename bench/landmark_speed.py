"""Landmark extraction speed, single thread, on synthetic audio.

Run: PYTHONPATH=services/fingerprint/src python bench/landmark_speed.py
Prints seconds of audio processed per second of CPU (x real time).
"""

from __future__ import annotations

import os
import time

# Pin BLAS/OpenMP pools to one thread before numpy loads: the target is one core.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

from earmark_fingerprint.landmarks import (  # noqa: E402
    SAMPLE_RATE_HZ,
    extract_landmarks,
    extract_query_landmarks,
)


def synthetic_music(seconds: float, seed: int = 0) -> np.ndarray:
    """Random notes (6 harmonics, decaying) over white-ish noise, peak-normalised."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE_HZ)
    out = 0.01 * rng.standard_normal(n).astype(np.float32)
    harm = np.arange(1, 7, dtype=np.float32)[:, None]
    pos = 0
    while pos < n:
        length = min(int(rng.uniform(0.1, 0.5) * SAMPLE_RATE_HZ), n - pos)
        f0 = np.float32(rng.uniform(80.0, 900.0))
        tt = np.arange(length, dtype=np.float32) / np.float32(SAMPLE_RATE_HZ)
        amps = (1.0 / harm * (harm * f0 < 3900)).astype(np.float32)
        tone = (amps * np.sin(np.float32(2 * np.pi) * f0 * harm * tt)).sum(0)
        out[pos : pos + length] += tone * np.exp(-3.0 * tt)
        pos += length
    peak = float(np.abs(out).max())
    result: np.ndarray = (out / peak).astype(np.float32)
    return result


def time_it(fn: object, x: np.ndarray, repeats: int) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn(x)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    print(f"{'input':>14} {'audio s':>8} {'cpu ms':>9} {'x real time':>12} {'hashes/s':>9}")
    for seconds, repeats in ((5.0, 20), (60.0, 5), (600.0, 2)):
        x = synthetic_music(seconds)
        for name, fn in (("reference", extract_landmarks), ("query x4", extract_query_landmarks)):
            if name.startswith("query") and seconds > 60:
                continue
            cpu = time_it(fn, x, repeats)
            n_hashes = fn(x).hashes.size
            print(
                f"{name:>14} {seconds:8.0f} {cpu * 1e3:9.1f} {seconds / cpu:12.0f} "
                f"{n_hashes / seconds:9.0f}"
            )


if __name__ == "__main__":
    main()
