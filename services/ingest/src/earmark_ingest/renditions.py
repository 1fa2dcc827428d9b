"""Delivery renditions: which ones to make, and making them with ffmpeg."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from earmark_runtime.audio import AudioDecodeError, default_ffmpeg, run_ffmpeg

# format -> (file extension, ffmpeg encoder, muxer)
FORMATS: dict[str, tuple[str, str, str]] = {
    "mp3": ("mp3", "libmp3lame", "mp3"),
    "m4a": ("m4a", "aac", "ipod"),
    "opus": ("opus", "libopus", "ogg"),
    "ogg": ("ogg", "libvorbis", "ogg"),
}
TRANSCODE_TIMEOUT_S = 600.0
MIME = {"mp3": "audio/mpeg", "m4a": "audio/mp4", "opus": "audio/ogg", "ogg": "audio/ogg"}


class RenditionError(RuntimeError):
    pass


@dataclass(frozen=True)
class RenditionSpec:
    name: str
    format: str
    bitrate_kbps: int

    @property
    def extension(self) -> str:
        return FORMATS[self.format][0]

    def blob_key(self, track_id: str) -> str:
        return f"renditions/{track_id}/{self.name}.{self.extension}"


def parse_specs(text: str) -> list[RenditionSpec]:
    """`name:format:kbps,...` -> specs; raises ValueError naming the bad entry."""
    specs: list[RenditionSpec] = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        parts = entry.split(":")
        if len(parts) != 3 or parts[1] not in FORMATS or not parts[2].isdigit():
            raise ValueError(
                f"bad rendition {entry!r}: want name:format:kbps with format one of "
                f"{', '.join(FORMATS)}"
            )
        kbps = int(parts[2])
        if not 8 <= kbps <= 512:
            raise ValueError(f"bad rendition {entry!r}: bitrate must be 8..512 kbps")
        specs.append(RenditionSpec(parts[0], parts[1], kbps))
    if len({s.name for s in specs}) != len(specs):
        raise ValueError("rendition names must be unique")
    return specs


def find_spec(specs: list[RenditionSpec], wanted: str) -> RenditionSpec | None:
    """By name ("opus-96"), or by format ("opus": the highest bitrate of that format)."""
    by_name = [s for s in specs if s.name == wanted]
    if by_name:
        return by_name[0]
    by_format = sorted((s for s in specs if s.format == wanted), key=lambda s: -s.bitrate_kbps)
    return by_format[0] if by_format else None


async def transcode(
    source: bytes,
    spec: RenditionSpec,
    *,
    ffmpeg: str = "",
    timeout_s: float = TRANSCODE_TIMEOUT_S,
    memory_mb: int | None = None,
) -> bytes:
    """Encode `source` (any container ffmpeg reads) to `spec`. Stereo is kept.

    The same limits as decoding: the source is read from a pipe only (the
    whitelist is an input option; the output file is ours), the first audio
    stream alone is mapped, and ffmpeg runs under the time and memory limits
    (`memory_mb` None: EARMARK_FFMPEG_MEMORY_MB).
    """
    _ext, codec, muxer = FORMATS[spec.format]
    with tempfile.TemporaryDirectory(prefix="earmark-rendition-") as tmp:
        out = Path(tmp) / f"out.{spec.extension}"
        args = [
            ffmpeg or default_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error",
            "-protocol_whitelist", "pipe",
            "-i", "pipe:0", "-map", "0:a:0", "-vn", "-sn", "-dn",
            "-c:a", codec, "-b:a", f"{spec.bitrate_kbps}k",
            *(["-ar", "48000"] if spec.format == "opus" else []),
            # moov atom first, so players and our own decoder can stream it
            *(["-movflags", "+faststart"] if spec.format == "m4a" else []),
            "-f", muxer, str(out),
        ]  # fmt: skip
        try:
            returncode, _, err = await run_ffmpeg(
                args, source, timeout_s=timeout_s, memory_mb=memory_mb
            )
        except TimeoutError as exc:
            raise RenditionError(f"{spec.name}: transcoding took over {timeout_s:.0f} s") from exc
        except AudioDecodeError as exc:  # over the memory limit
            raise RenditionError(f"{spec.name}: {exc}") from exc
        if returncode != 0 or not out.exists():
            raise RenditionError(f"{spec.name}: {err.strip()[-300:]}")
        return out.read_bytes()
