"""The neural fingerprint encoder: spatially separable convolutions + divide-and-encode head.

After NAFP (Chang et al., ICASSP 2021), scaled down for CPU serving. Input is a
[batch, N_MELS, SEGMENT_FRAMES] log-mel in dB from
``earmark_fingerprint.neural_frontend``; output is [batch, dim] L2-normalised.

Each block is a 1x3 convolution along time (stride 2) then a 3x1 convolution
along frequency (stride 2), each followed by batch norm (folded into the
convolution at export) and ReLU, so 64x32 shrinks to 1x1 in six blocks. Early
blocks are narrow because they run at high resolution and dominate the
compute; late blocks are wide because they hold the parameters. The head splits
the last feature vector into ``dim`` groups and maps each group to one output
through its own small MLP (divide-and-encode), then L2-normalises.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from earmark_fingerprint import neural_frontend as fe

# Segment level normalisation: dB relative to the segment's loudest bin,
# clipped at this depth, so gain and playback level do not matter.
DYNAMIC_RANGE_DB = 80.0


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128, 256, 384)
    dim: int = 128
    head_hidden: int = 32

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "channels": list(self.channels)}


class SeparableBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.time = nn.Conv2d(cin, cout, (1, 3), stride=(1, 2), padding=(0, 1), bias=False)
        self.time_norm = nn.BatchNorm2d(cout)
        self.freq = nn.Conv2d(cout, cout, (3, 1), stride=(2, 1), padding=(1, 0), bias=False)
        self.freq_norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.time_norm(self.time(x)))
        return F.relu(self.freq_norm(self.freq(x)))


class DivideEncode(nn.Module):
    """``dim`` independent MLPs, one per slice of the feature vector (grouped 1x1 convs)."""

    def __init__(self, features: int, dim: int, hidden: int) -> None:
        super().__init__()
        if features % dim:
            raise ValueError(f"features {features} must be a multiple of dim {dim}")
        self.fc1 = nn.Conv1d(features, dim * hidden, 1, groups=dim)
        self.fc2 = nn.Conv1d(dim * hidden, dim, 1, groups=dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.elu(self.fc1(h.unsqueeze(-1)))).squeeze(-1)
        return out


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        chans = (1, *config.channels)
        self.blocks = nn.Sequential(*(SeparableBlock(a, b) for a, b in itertools.pairwise(chans)))
        self.head = DivideEncode(chans[-1], config.dim, config.head_hidden)

    def forward(self, mel_db: torch.Tensor) -> torch.Tensor:
        peak = mel_db.amax(dim=(1, 2), keepdim=True)
        x = torch.clamp(mel_db - peak, min=-DYNAMIC_RANGE_DB) / (DYNAMIC_RANGE_DB / 2) + 1.0
        h = self.blocks(x.unsqueeze(1))  # [B, C, 1, 1]
        return F.normalize(self.head(h.flatten(1)), dim=1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nt_xent(anchor: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR): each view must pick its partner among the other 2N - 1 views."""
    z = torch.cat([anchor, positive], dim=0)
    n = anchor.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def torch_log_mel_batch(excerpts: torch.Tensor) -> torch.Tensor:
    """The frontend in torch ([B, SEGMENT_SAMPLES] -> [B, N_MELS, SEGMENT_FRAMES] dB).

    Same window, framing, mel matrix and floor as ``neural_frontend.log_mel_batch``
    (which the CPU data pipeline uses); for augmenting on a GPU. The export
    script checks that both agree.
    """
    window = torch.from_numpy(fe.window().copy()).to(excerpts)
    mel = torch.from_numpy(fe.mel_matrix().copy()).to(excerpts)
    frames = excerpts.unfold(1, fe.N_FFT, fe.HOP)[:, : fe.SEGMENT_FRAMES] * window
    spec = torch.fft.rfft(frames, dim=2)
    power = spec.real**2 + spec.imag**2
    db = 10.0 * torch.log10(torch.clamp(power @ mel, min=fe.POWER_FLOOR))
    return db.transpose(1, 2).contiguous()
