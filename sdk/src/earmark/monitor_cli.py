"""`earmark monitor SOURCE`, `earmark streams ...` and `earmark plays NAME` (wired in by cli.py).

`earmark monitor` decodes SOURCE (a file, an http(s)/Icecast URL, or - for
stdin) with ffmpeg into 8 kHz mono PCM, the rate the server analyses, and
sends it as it plays: in real time, or as fast as the server takes it with
--fast. Without an ffmpeg (imageio-ffmpeg or one on PATH) it sends the
encoded bytes as they come and the server decodes them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ._table import table
from .client import Earmark
from .results import MonitorEvent, Play

SAMPLE_RATE_HZ = 8000
CHUNK_S = 0.5
# Sending may run this far ahead of real time (the server analyses 1 s hops).
LEAD_S = 0.5
_ENCODED_CHUNK = 64 * 1024
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def find_ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # not installed, or its binary is missing
        return shutil.which("ffmpeg")


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def decoded_chunks(source: str, ffmpeg: str, *, realtime: bool) -> Iterator[bytes]:
    """SOURCE as 8 kHz mono s16le in CHUNK_S pieces, paced in real time unless not `realtime`."""
    args = [ffmpeg, "-hide_banner", "-loglevel", "error"]
    if source != "-":
        args.append("-nostdin")
    args += ["-i", "pipe:0" if source == "-" else source]
    args += ["-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE_HZ), "-f", "s16le"]
    proc = subprocess.Popen(
        [*args, "pipe:1"],
        stdin=None if source == "-" else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    size = int(CHUNK_S * SAMPLE_RATE_HZ) * 2
    started = time.monotonic()
    sent_s = 0.0
    try:
        while chunk := proc.stdout.read(size):
            if realtime:
                ahead = sent_s - (time.monotonic() - started) - LEAD_S
                if ahead > 0:
                    time.sleep(ahead)
            yield chunk
            sent_s += len(chunk) / (2 * SAMPLE_RATE_HZ)
    finally:
        # ffmpeg's own error (unreadable source) is already on stderr; the server then
        # answers that no audio came.
        proc.kill()
        proc.wait()


def encoded_chunks(source: str) -> Iterator[bytes]:
    """SOURCE's bytes as they come (no ffmpeg here: the server decodes)."""
    stream: BinaryIO
    if source == "-":
        stream = sys.stdin.buffer
    elif is_url(source):
        stream = urllib.request.urlopen(source, timeout=30)  # noqa: S310 - http(s) checked
    else:
        stream = Path(source).open("rb")  # noqa: SIM115 - closed below
    try:
        while chunk := stream.read(_ENCODED_CHUNK):
            yield chunk
    finally:
        if source != "-":
            stream.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:d}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes:d}:{secs:04.1f}"


def event_line(e: MonitorEvent) -> str:
    label = f"{e.title or e.external_id} — {e.artist}".strip(" —") if e.track_id else ""
    span = f"{_clock(e.start_s)}-{_clock(e.end_s)}"
    extra = ""
    if e.type == "STARTED":
        span = f"from {_clock(e.start_s)}"
        extra = f"track at {_clock(e.track_offset_s)}, confidence {e.confidence:.2f}"
    return f"{_clock(e.stream_time_s):>9}  {e.type:<8} {label:<40} {span:<19} {extra}".rstrip()


def cmd_monitor(args: argparse.Namespace) -> int:
    ffmpeg = find_ffmpeg()
    if source_is_missing(args.source):
        print(f"earmark: {args.source}: no such file", file=sys.stderr)
        return 1
    if ffmpeg is not None:
        chunks = decoded_chunks(args.source, ffmpeg, realtime=not args.fast)
        options: dict[str, Any] = {"sample_rate_hz": SAMPLE_RATE_HZ, "channels": 1}
    else:
        print(
            "earmark: no ffmpeg found (pip install imageio-ffmpeg); sending the encoded "
            "stream as it comes, without real-time pacing",
            file=sys.stderr,
        )
        chunks = encoded_chunks(args.source)
        options = {"encoded": True}
    name = args.name or (Path(args.source).name if not is_url(args.source) else args.source)
    with Earmark() as em:
        for event in em.monitor(
            chunks, stream_name=name, report_interval_s=args.report_interval, **options
        ):
            if args.json:
                print(json.dumps(event.to_json()), flush=True)
            else:
                print(event_line(event), flush=True)
    return 0


def source_is_missing(source: str) -> bool:
    return source != "-" and not is_url(source) and not Path(source).exists()


def parse_moment(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """`2024-05-01T18:00`, `2024-05-01`, `now`, or an age: `90s`, `15m`, `2h`, `1d`, `1w`."""
    now = now or dt.datetime.now(dt.UTC)
    value = text.strip().lower()
    if value == "now":
        return now
    relative = _RELATIVE.match(value)
    if relative:
        return now - dt.timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use an ISO time (2024-05-01T18:00) or an age (90m, 2h, 1d)"
        ) from exc
    return moment if moment.tzinfo else moment.astimezone()  # naive means local time


def _local(unix: float | None) -> str:
    if unix is None:
        return "-"
    return dt.datetime.fromtimestamp(unix).astimezone().isoformat(timespec="seconds")


def cmd_plays(args: argparse.Namespace) -> int:
    with Earmark() as em:
        plays = list(em.plays(args.name, since=args.since, until=args.until))
    if args.json:
        for p in plays:
            print(json.dumps(p.to_json()))
        return 0
    table(
        ["started", "ended", "track", "artist", "offset in track", "confidence", ""],
        [_play_row(p) for p in plays],
    )
    return 0


def _play_row(p: Play) -> tuple[object, ...]:
    return (
        _local(p.started_at),
        _local(p.ended_at),
        p.title or p.external_id,
        p.artist,
        _clock(p.track_offset_s),
        f"{p.confidence:.2f}",
        "playing" if p.playing else "",
    )


def cmd_streams_add(args: argparse.Namespace) -> int:
    with Earmark() as em:
        stream = em.register_stream(args.name, args.url)
    print(f"watching {stream.name}: {stream.url}")
    return 0


def cmd_streams_list(args: argparse.Namespace) -> int:
    with Earmark() as em:
        streams = em.streams()
    if args.json:
        for s in streams:
            print(json.dumps(s.__dict__))
        return 0
    table(
        ["name", "url", "watched by", "last heard", "last error"],
        [
            (s.name, s.url, s.watched_by or "(waiting)", _local(s.heard_at), s.last_error)
            for s in streams
        ],
    )
    return 0


def cmd_streams_remove(args: argparse.Namespace) -> int:
    with Earmark() as em:
        em.remove_stream(args.name)
    print(f"removed {args.name}")
    return 0


def add_commands(sub: Any) -> None:
    """Add `monitor`, `streams` and `plays` to the `earmark` sub-command parser."""
    p = sub.add_parser(
        "monitor",
        help="follow a live stream: which catalog tracks start and stop, as it plays",
        description="Print catalog tracks as they start, play and end on SOURCE: a file, "
        "an http(s)/Icecast URL, or - for stdin.",
    )
    p.set_defaults(func=cmd_monitor)
    p.add_argument("source")
    p.add_argument("--fast", action="store_true", help="send as fast as possible, not real time")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--name", default="", help="name of the stream in the server's logs")
    p.add_argument(
        "--report-interval", type=float, default=0.0, help="seconds between PLAYING (default 10)"
    )

    p = sub.add_parser(
        "streams",
        help="stream sources the server-side monitors watch",
        description="Register, list and remove the streams the monitor service watches.",
    )
    streams = p.add_subparsers(dest="streams_command", required=True)
    q = streams.add_parser("add", help="watch a stream (http, https or file URL)")
    q.set_defaults(func=cmd_streams_add)
    q.add_argument("name", help="letters, digits, - and _ (up to 64)")
    q.add_argument("url")
    q = streams.add_parser("list", help="the registered streams")
    q.set_defaults(func=cmd_streams_list)
    q.add_argument("--json", action="store_true")
    q = streams.add_parser("remove", help="stop watching a stream (its plays stay logged)")
    q.set_defaults(func=cmd_streams_remove)
    q.add_argument("name")

    p = sub.add_parser(
        "plays",
        help="the play log of a monitored stream",
        description="Catalog tracks played on a monitored stream between --since and --until.",
    )
    p.set_defaults(func=cmd_plays)
    p.add_argument("name")
    p.add_argument("--since", type=parse_moment, default=None, help="ISO time or age (24h)")
    p.add_argument("--until", type=parse_moment, default=None, help="ISO time or age")
    p.add_argument("--json", action="store_true", help="one JSON object per play")
