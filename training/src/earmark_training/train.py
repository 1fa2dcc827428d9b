"""Train the neural fingerprint encoder with NT-Xent on augmented pairs.

Usage::

    python -m earmark_training.train --corpus ~/.cache/earmark/corpus --out /work/runs/NAME \
        [--steps N] [--minutes M] [--resume] [--seed S] [--device cpu|cuda]

Writes ``checkpoint.pt`` (every ``--checkpoint-minutes`` and at the end),
``log.jsonl`` (one record per logged step) and ``run.json`` (the command, the
split and the configuration) under ``--out``. ``--minutes`` caps the wall time
of this invocation; the learning-rate schedule follows ``--steps``, so a run
stopped by the cap continues where it stopped with ``--resume``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.corpus import DEFAULT_CORPUS_DIR
from earmark_training.data import (
    SYNTHETIC_SONGS,
    AudioSet,
    AugmentConfig,
    PairMaker,
    build_audio_set,
    corpus_split,
)
from earmark_training.model import Encoder, ModelConfig, nt_xent, parameter_count

REPO = Path(__file__).resolve().parents[3]
VALIDATION_TRACKS = 16
VALIDATION_PAIRS = 512
VALIDATION_SEED = 12345


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


class Batches(Dataset[tuple[np.ndarray, np.ndarray]]):
    """Batch i is the batch of step ``first_step + i``; a pure function of (seed, step)."""

    def __init__(self, maker: PairMaker, seed: int, first_step: int, last_step: int, pairs: int):
        self.maker, self.seed, self.first, self.last, self.pairs = (
            maker,
            seed,
            first_step,
            last_step,
            pairs,
        )

    def __len__(self) -> int:
        return max(0, self.last - self.first)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.maker.batch(self.seed, self.first + i, self.pairs)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return float(peak * (0.02 + 0.98 * 0.5 * (1.0 + np.cos(np.pi * progress))))


@torch.no_grad()
def validation_top1(
    model: Encoder, anchors: np.ndarray, positives: np.ndarray, device: str
) -> float:
    """Share of degraded views whose nearest clean segment (of all) is their own."""
    model.eval()
    a = model(torch.from_numpy(anchors).to(device))
    p = model(torch.from_numpy(positives).to(device))
    model.train()
    hits = (p @ a.T).argmax(dim=1).cpu().numpy() == np.arange(len(anchors))
    return float(hits.mean())


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m earmark_training.train", description=__doc__)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=12000, help="total steps (sets the LR schedule)")
    ap.add_argument("--minutes", type=float, default=None, help="stop this run after M minutes")
    ap.add_argument(
        "--fit-minutes",
        type=float,
        default=None,
        help="set --steps after the warm-up from the measured speed, so the whole schedule "
        "ends within M minutes (for a lent machine of unknown speed; run.json records the "
        "steps, and --steps N replays the run)",
    )
    ap.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="checkpoint and stop after this step (replays a run whose --steps changed)",
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--pairs", type=int, default=128, help="positive pairs per batch (2N views)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument(
        "--channels",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        default=ModelConfig().channels,
        help="encoder widths, e.g. 16,32,64,128,256,384 (a GPU run can go wider)",
    )
    ap.add_argument("--dim", type=int, default=ModelConfig().dim)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    ap.add_argument("--workers", type=int, default=1, help="processes making batches")
    ap.add_argument("--synthetic", type=int, default=SYNTHETIC_SONGS)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--checkpoint-minutes", type=float, default=3.0)
    ap.add_argument("--cache", type=Path, default=Path("/work/runs/cache"))
    ap.add_argument(
        "--audio-set",
        type=Path,
        default=None,
        help="train on this AudioSet (.npz, earmark_training.portable), not the corpus",
    )
    ap.add_argument(
        "--validation-batch",
        type=Path,
        default=None,
        help="validate on this batch (.npz, earmark_training.portable) instead of building it",
    )
    ap.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from this checkpoint's weights (fine-tuning: fresh optimizer, step 0)",
    )
    aug = AugmentConfig()
    ap.add_argument("--p-babble", type=float, default=aug.p_babble, help="babble share of noise")
    ap.add_argument(
        "--snr",
        type=lambda s: tuple(float(v) for v in s.split(",")),
        default=aug.snr_db,
        help="noise SNR range in dB, LO,HI",
    )
    ap.add_argument(
        "--p-pitch", type=float, default=aug.p_pitch, help="share of pitch-shifted views"
    )
    ap.add_argument("--max-pitch", type=float, default=aug.max_pitch_semitones, help="semitones")
    return ap.parse_args(argv)


def augment_config(args: argparse.Namespace) -> AugmentConfig:
    return replace(
        AugmentConfig(),
        p_babble=args.p_babble,
        snr_db=tuple(args.snr),
        p_pitch=args.p_pitch,
        max_pitch_semitones=args.max_pitch,
    )


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_data(
    args: argparse.Namespace,
) -> tuple[AudioSet, np.ndarray, np.ndarray, dict[str, Any]]:
    """The training audio, the validation batch and what they were made of.

    From the corpus (decoded once into --cache), or from what
    `earmark_training.portable` packed, where the corpus is not at hand.
    """
    if args.audio_set is not None:
        audio = AudioSet.load(args.audio_set)
        real = [n for n in audio.names if not n.startswith("synthetic/")]
        info: dict[str, Any] = {
            "training_tracks": real,
            "synthetic_songs": len(audio.names) - len(real),
            "audio_set": str(args.audio_set),
        }
    else:
        split = corpus_split(args.corpus)
        log(
            f"split: {len(split.train)} training tracks, {len(split.unseen_catalog)} unseen "
            f"catalog tracks, {len(split.held_out)} held out (never read)"
        )
        audio = build_audio_set(split.train, args.synthetic, args.cache, log)
        info = {
            "training_tracks": [t.track_id for t in split.train],
            "synthetic_songs": args.synthetic,
        }
    if args.validation_batch is not None:
        with np.load(args.validation_batch) as z:
            anchors, positives = z["anchors"], z["positives"]
            info["validation_tracks"] = [str(t) for t in z["tracks"]]
    else:
        unseen = corpus_split(args.corpus).unseen_catalog[:VALIDATION_TRACKS]
        val_audio = build_audio_set(unseen, 0, args.cache, log)
        anchors, positives = PairMaker(val_audio).batch(VALIDATION_SEED, 0, VALIDATION_PAIRS)
        info["validation_tracks"] = [t.track_id for t in unseen]
    return audio, anchors, positives, info


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        log("--device cuda but CUDA is not available")
        return 2
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "checkpoint.pt"
    started = time.monotonic()

    audio, val_anchors, val_positives, data_info = training_data(args)
    log(f"training audio: {len(audio.names)} tracks, {audio.hours:.2f} h")
    augment = augment_config(args)
    maker = PairMaker(audio, augment)

    config = ModelConfig(channels=args.channels, dim=args.dim)
    torch.manual_seed(args.seed)
    model = Encoder(config).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    history: list[dict[str, Any]] = [{"from_step": 0}]
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=args.device, weights_only=False)
        if state["config"] != config.to_json() or state["seed"] != args.seed:
            log("checkpoint was made with another model config or seed; refusing to resume")
            return 2
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        history = [*state.get("run", {}).get("history", []), {"from_step": step}]
        log(f"resumed from {ckpt_path} at step {step}")
    elif ckpt_path.exists():
        log(f"{ckpt_path} exists: pass --resume to continue or choose another --out")
        return 2
    elif args.init_from is not None:
        state = torch.load(args.init_from, map_location=args.device, weights_only=False)
        if state["config"] != config.to_json():
            log(f"{args.init_from} holds another model config; cannot start from it")
            return 2
        model.load_state_dict(state["model"])
        history[0]["init_from"] = {
            "checkpoint": str(args.init_from),
            "sha256": file_digest(args.init_from),
            "at_step": int(state["step"]),
            "run": state.get("run", {}),
        }
        log(f"starting from the weights of {args.init_from} (its step {state['step']})")

    command = "python -m earmark_training.train " + shlex.join(argv)
    # Every invocation that led to this checkpoint, so a run resumed with a
    # changed --steps can be replayed exactly (with --stop-at).
    history[-1]["command"] = command
    run_info = {
        "command": command,
        "history": history,
        "git_commit": git_commit(),
        "seed": args.seed,
        "model": config.to_json(),
        "parameters": parameter_count(model),
        "augment": asdict(augment),
        "temperature": args.temperature,
        "pairs_per_batch": args.pairs,
        "steps": args.steps,
        "lr": args.lr,
        "data": {**data_info, "training_hours": round(audio.hours, 3)},
        "device": args.device,
        "threads": args.threads,
    }
    (args.out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    log(f"model: {parameter_count(model)} parameters, config {config.to_json()}")

    if args.fit_minutes is not None:
        if step > 0:
            log("--fit-minutes starts a run; it cannot resume one")
            return 2
        args.steps = 1 << 40  # set after the warm-up; the warm-up's LR does not depend on it
    loader = DataLoader(
        Batches(maker, args.seed, step, args.steps, args.pairs),
        batch_size=None,
        shuffle=False,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
        persistent_workers=False,
    )
    model.train()
    stop_requested: list[str] = []
    # SIGTERM / SIGINT: finish the step, checkpoint, exit; `--resume` continues.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda num, _frame: stop_requested.append(signal.Signals(num).name))
    last_ckpt = time.monotonic()
    window_t, window_steps, window_loss = time.monotonic(), 0, 0.0

    def checkpoint(reason: str) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "config": config.to_json(),
                "seed": args.seed,
                "run": run_info,
            },
        )
        log(f"checkpoint at step {step} ({reason})")

    with (args.out / "log.jsonl").open("a") as logf:
        loop_started = time.monotonic()
        for anchors, positives in loader:
            lr = learning_rate(step, args.steps, args.lr, args.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            za = model(anchors.to(args.device))
            zp = model(positives.to(args.device))
            loss = nt_xent(za, zp, args.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if args.fit_minutes is not None and step == args.warmup:
                # The warm-up's pace (after the workers' start) sets the length;
                # 5 % spare for validation and checkpoints.
                elapsed = time.monotonic() - started
                rate = step / max(1e-3, time.monotonic() - loop_started)
                args.steps = step + int(0.95 * rate * (args.fit_minutes * 60 - elapsed))
                run_info["steps"] = args.steps
                history[-1]["fitted_steps"] = args.steps
                (args.out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
                log(f"--fit-minutes {args.fit_minutes:g}: {rate:.1f} steps/s, --steps {args.steps}")
            window_steps += 1
            window_loss += float(loss.detach())
            record: dict[str, Any] = {}
            if step % args.log_every == 0 or step == args.steps:
                now = time.monotonic()
                record = {
                    "step": step,
                    "loss": round(window_loss / window_steps, 4),
                    "steps_per_s": round(window_steps / (now - window_t), 3),
                    "lr": lr,
                    "elapsed_min": round((now - started) / 60, 2),
                }
                window_t, window_steps, window_loss = now, 0, 0.0
            if step % args.val_every == 0 or step == args.steps:
                record["step"] = step
                record["val_top1"] = round(
                    validation_top1(model, val_anchors, val_positives, args.device), 4
                )
            if record:
                logf.write(json.dumps(record) + "\n")
                logf.flush()
                log(" ".join(f"{k}={v}" for k, v in record.items()))
            if time.monotonic() - last_ckpt > args.checkpoint_minutes * 60:
                checkpoint("periodic")
                last_ckpt = time.monotonic()
            if args.stop_at is not None and step >= args.stop_at:
                checkpoint(f"--stop-at {args.stop_at}")
                return 0
            if stop_requested:
                checkpoint(f"{stop_requested[0]} received")
                return 0
            if args.minutes is not None and time.monotonic() - started > args.minutes * 60:
                checkpoint(f"--minutes {args.minutes:g} reached")
                log("stopping; continue with --resume")
                return 0
            if step >= args.steps:
                break
    checkpoint("done")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
