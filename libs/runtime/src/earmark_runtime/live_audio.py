"""Decoding a live stream with one long-lived ffmpeg child.

`audio.decode_audio` decodes a whole file at once. A live stream has no end,
so it goes through one ffmpeg process for as long as it lasts: the encoded
bytes are written to its stdin as they arrive (or ffmpeg reads a URL itself),
and 16-bit mono PCM at the wanted rate is read from its stdout as soon as
ffmpeg produces it. The protections are those of `decode_audio`: a protocol
whitelist, only the first audio stream, demuxers that reference other media
(or images) refused by name, the EARMARK_FFMPEG_MEMORY_MB address-space
limit. Probing is kept short and output is flushed per packet, so the first
samples come out within about a second of audio instead of after megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlparse

from .audio import (
    AudioDecodeError,
    default_ffmpeg,
    input_container,
    last_error_line,
    memory_failure,
    spawn_ffmpeg,
)

# Probing reads this much before decoding starts: ~1 s of a 128 kbit/s stream.
PROBE_BYTES: Final = 16384
PROBE_MICROSECONDS: Final = 1_000_000
# Sources a registered stream URL may name; ffmpeg follows only these protocols.
URL_PROTOCOLS: Final = {"http": "http,https,tcp,tls", "https": "http,https,tcp,tls", "file": "file"}
_STDERR_KEEP: Final = 16384


@dataclass(frozen=True)
class PcmFormat:
    """Raw interleaved s16le input: what ffmpeg cannot probe, it is told."""

    sample_rate_hz: int
    channels: int


def _output_args(sample_rate_hz: int) -> list[str]:
    return [
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate_hz),
        "-f",
        "s16le",
        "-flush_packets",
        "1",
        "pipe:1",
    ]


class LiveDecoder:
    """One ffmpeg child turning a stream into 16-bit mono PCM as it arrives.

    >>> decoder = await LiveDecoder.from_pipe(sample_rate_hz=8000)
    >>> await decoder.write(chunk)   # as the stream arrives (another task)
    >>> pcm = await decoder.read()   # b"" once the stream ended and is drained
    """

    def __init__(self, proc: asyncio.subprocess.Process, memory_mb: int) -> None:
        self._proc = proc
        self._memory_mb = memory_mb
        self._stderr = ""
        self._refused = ""
        self.container = ""
        self._stderr_task = asyncio.create_task(self._collect_stderr())

    @classmethod
    async def from_pipe(
        cls,
        *,
        sample_rate_hz: int,
        pcm: PcmFormat | None = None,
        ffmpeg: str = "",
        memory_mb: int | None = None,
    ) -> LiveDecoder:
        """Decode bytes written with `write`: an encoded stream, or raw PCM in `pcm` format."""
        if pcm is not None:
            source = ["-f", "s16le", "-ar", str(pcm.sample_rate_hz), "-ac", str(pcm.channels)]
        else:
            source = ["-probesize", str(PROBE_BYTES), "-analyzeduration", str(PROBE_MICROSECONDS)]
        args = [
            ffmpeg or default_ffmpeg(),
            "-nostdin",
            "-hide_banner",
            "-protocol_whitelist",
            "pipe",
            *source,
            "-i",
            "pipe:0",
            *_output_args(sample_rate_hz),
        ]
        return await cls._start(args, stdin=True, memory_mb=memory_mb)

    @classmethod
    async def from_url(
        cls,
        url: str,
        *,
        sample_rate_hz: int,
        ffmpeg: str = "",
        memory_mb: int | None = None,
    ) -> LiveDecoder:
        """Decode what ffmpeg reads from an http(s) or file URL; files play in real time."""
        scheme = urlparse(url).scheme.lower()
        if scheme not in URL_PROTOCOLS:
            raise AudioDecodeError(f"unsupported URL scheme {scheme!r}: use http, https or file")
        source = ["-protocol_whitelist", URL_PROTOCOLS[scheme]]
        if scheme == "file":
            source += ["-re"]  # a file is played at its own pace, like a broadcast
        else:
            # An internet radio connection drops now and then; ffmpeg picks it up again.
            source += ["-reconnect", "1", "-reconnect_streamed", "1", "-reconnect_delay_max", "5"]
        args = [
            ffmpeg or default_ffmpeg(),
            "-nostdin",
            "-hide_banner",
            *source,
            "-probesize",
            str(PROBE_BYTES),
            "-analyzeduration",
            str(PROBE_MICROSECONDS),
            "-i",
            urlparse(url).path if scheme == "file" else url,
            *_output_args(sample_rate_hz),
        ]
        return await cls._start(args, stdin=False, memory_mb=memory_mb)

    @classmethod
    async def _start(cls, args: list[str], *, stdin: bool, memory_mb: int | None) -> LiveDecoder:
        proc, limit = await spawn_ffmpeg(args, stdin=stdin, memory_mb=memory_mb)
        return cls(proc, limit)

    async def _collect_stderr(self) -> None:
        stream = self._proc.stderr
        assert stream is not None
        while line := await stream.readline():
            text = line.decode("utf-8", "replace")
            self._stderr = (self._stderr + text)[-_STDERR_KEEP:]
            if not self.container:
                self.container, refusal = input_container(text)
                if refusal is not None:
                    self._refuse(refusal)

    def _refuse(self, reason: str) -> None:
        self._refused = reason
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def write(self, data: bytes) -> None:
        """Feed the next bytes of the stream; raises AudioDecodeError if ffmpeg gave up."""
        stdin = self._proc.stdin
        if stdin is None:
            raise RuntimeError("this decoder reads a URL; it takes no input")
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise await self._failure() from exc

    async def end_input(self) -> None:
        """The stream ended: ffmpeg decodes what it has, then its output ends."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()

    async def read(self, max_bytes: int = 16384) -> bytes:
        """The next decoded PCM bytes; b"" at the end. Raises AudioDecodeError when ffmpeg
        failed (undecodable, refused, over its memory limit) rather than ended."""
        stdout = self._proc.stdout
        assert stdout is not None
        data = await stdout.read(max_bytes)
        if data:
            if self._refused:
                raise AudioDecodeError(self._refused)
            return data
        await self._proc.wait()
        await self._stderr_task
        if self._refused or self._proc.returncode:
            raise await self._failure()
        return b""

    async def _failure(self) -> AudioDecodeError:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), timeout=5.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stderr_task, timeout=1.0)
        if self._refused:
            return AudioDecodeError(self._refused)
        memory = memory_failure(self._proc.returncode or 0, self._stderr, self._memory_mb)
        if memory is not None:
            return memory
        if "matches no streams" in self._stderr:
            return AudioDecodeError("the stream has no audio")
        return AudioDecodeError(f"not decodable as audio: {last_error_line(self._stderr)}")

    async def close(self) -> None:
        """Stop ffmpeg (if it still runs) and reap it."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._proc.wait(), timeout=5.0)
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._stderr_task
