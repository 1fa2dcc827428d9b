"""Export a training checkpoint to ONNX plus a JSON sidecar, and check parity.

Usage::

    python -m earmark_training.export --checkpoint /work/runs/NAME/checkpoint.pt \
        --out services/fingerprint/src/earmark_fingerprint/models/nafp-small-v2.onnx

Checks, recorded in the sidecar under ``parity``:
- the numpy frontend (serving, and the CPU data pipeline) against the torch
  frontend (`torch_log_mel_batch`), on the same audio: max abs difference in dB;
- ONNX Runtime against torch on the same log-mel input: max abs difference of
  the embeddings.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.synthetic import song
from earmark_fingerprint import neural_frontend as fe
from earmark_training.model import Encoder, ModelConfig, parameter_count, torch_log_mel_batch
from earmark_training.train import git_commit

INPUT_NAME = "mel_db"
OUTPUT_NAME = "embedding"


def load_model(checkpoint: Path) -> tuple[Encoder, dict[str, Any]]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = state["config"]
    model = Encoder(ModelConfig(tuple(cfg["channels"]), cfg["dim"], cfg["head_hidden"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def parity_audio(seconds: float = 20.0) -> np.ndarray:
    """Generated music (no corpus needed) at a realistic level."""
    return song(4242, seconds, fe.SAMPLE_RATE_HZ) * 0.5


def excerpts_of(x: np.ndarray, hop_s: float = 0.5) -> np.ndarray:
    step = round(hop_s * fe.SAMPLE_RATE_HZ)
    starts = range(0, x.size - fe.SEGMENT_SAMPLES + 1, step)
    return np.stack([x[s : s + fe.SEGMENT_SAMPLES] for s in starts]).astype(np.float32)


def export(model: Encoder, out: Path) -> None:
    dummy = torch.zeros(2, fe.N_MELS, fe.SEGMENT_FRAMES)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def check_parity(model: Encoder, onnx_path: Path) -> dict[str, float]:
    import onnxruntime as ort

    ex = excerpts_of(parity_audio())
    mel_np = fe.log_mel_batch(ex)
    with torch.no_grad():
        mel_torch = torch_log_mel_batch(torch.from_numpy(ex)).numpy()
        emb_torch = model(torch.from_numpy(mel_np)).numpy()
    # The serving path: whole-signal log-mel, then 32-frame slices every 16 frames.
    full = fe.log_mel(parity_audio())
    sliced = fe.segments(full, fe.segment_starts(full.shape[0], 16))[: len(mel_np)]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (emb_onnx,) = session.run(None, {INPUT_NAME: mel_np})
    return {
        "segments": len(mel_np),
        "frontend_numpy_vs_torch_max_abs_db": float(np.max(np.abs(mel_np - mel_torch))),
        "frontend_batch_vs_sliced_max_abs_db": float(np.max(np.abs(mel_np - sliced))),
        "onnx_vs_torch_max_abs": float(np.max(np.abs(emb_onnx - emb_torch))),
        "onnx_norm_max_dev": float(np.max(np.abs(np.linalg.norm(emb_onnx, axis=1) - 1.0))),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m earmark_training.export", description=__doc__)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="path of the .onnx file")
    ap.add_argument("--name", default=None, help="model name (default: the file's stem)")
    ap.add_argument(
        "--training-note",
        default=None,
        help="free text for the sidecar, e.g. the invocations that produced the checkpoint",
    )
    args = ap.parse_args(argv)

    model, state = load_model(args.checkpoint)
    export(model, args.out)
    parity = check_parity(model, args.out)
    run = state.get("run", {})
    data = dict(run.get("data", {}))
    meta = {
        "name": args.name or args.out.stem,
        "dim": model.config.dim,
        "parameters": parameter_count(model),
        "model": model.config.to_json(),
        "input": {"name": INPUT_NAME, "shape": ["batch", fe.N_MELS, fe.SEGMENT_FRAMES]},
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", model.config.dim],
            "l2_normalised": True,
        },
        "frontend": {
            **fe.parameters(),
            "segment_samples": fe.SEGMENT_SAMPLES,
            "log": "10*log10(max(mel power, 1e-10)); the model normalises to the segment peak",
        },
        "training": {
            "command": run.get("command"),
            "history": run.get("history"),
            "note": args.training_note,
            "seed": state.get("seed"),
            "steps": state.get("step"),
            "git_commit": run.get("git_commit"),
            "temperature": run.get("temperature"),
            "pairs_per_batch": run.get("pairs_per_batch"),
            "augment": run.get("augment"),
            "device": run.get("device"),
        },
        "data": {
            "description": (
                "Debian game-soundtrack corpus (make corpus): the even-crc32 half of the "
                "catalog side of bench.degrade.split_catalog(seed 0), plus generated songs "
                "(bench.synthetic.song); held-out tracks never read. See docs/neural.md."
            ),
            "training_track_count": len(data.get("training_tracks", [])),
            "synthetic_songs": data.get("synthetic_songs"),
            "training_hours": data.get("training_hours"),
        },
        "export": {
            "command": "python -m earmark_training.export " + shlex.join(argv),
            "git_commit": git_commit(),
            "torch": torch.__version__,
            "opset": 17,
        },
        "parity": parity,
    }
    sidecar = args.out.with_suffix(".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"onnx": str(args.out), "bytes": args.out.stat().st_size, **parity}, indent=2))
    worst = max(parity["onnx_vs_torch_max_abs"], parity["onnx_norm_max_dev"])
    if worst > 1e-4 or parity["frontend_numpy_vs_torch_max_abs_db"] > 1e-2:
        print("parity check FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
