"""The `earmark` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc

from ._table import Progress, table
from .admin_cli import add_commands as add_admin_commands
from .bulk import ingest_files
from .client import Earmark
from .discovery import earmark_home
from .features_cli import add_commands as add_feature_commands
from .monitor_cli import add_commands as add_monitor_commands
from .results import Submission

AUDIO_SUFFIXES = {
    ".mp3",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".wav",
    ".m4a",
    ".aac",
    ".aif",
    ".aiff",
    ".wma",
    ".mp4",
    ".webm",
    ".mka",
    ".ape",
    ".wv",
}


def _audio_files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in AUDIO_SUFFIXES:
                    yield found
        elif path.is_file():
            yield path
        else:
            raise SystemExit(f"earmark: {raw}: no such file or directory")


def cmd_up(args: argparse.Namespace) -> int:
    try:
        from earmark_stack import StackError, up
    except ImportError:
        print("earmark up needs the embedded stack: pip install earmark-stack", file=sys.stderr)
        return 2
    home = earmark_home()
    try:
        info = up(home, progress=_note)
    except StackError as exc:
        print(f"earmark up failed: {exc}", file=sys.stderr)
        return 1
    rows = [(name, entry["addr"], entry["pid"]) for name, entry in info.services.items()]
    table(["service", "address", "pid"], rows)
    print(f"\nstate in {home}; stop with `earmark down`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    try:
        from earmark_stack import down
    except ImportError:
        print("earmark down needs the embedded stack: pip install earmark-stack", file=sys.stderr)
        return 2
    if not down(earmark_home(), progress=_note):
        print("no stack running under", earmark_home(), file=sys.stderr)
    return 0


def _stack_urls() -> tuple[str, str]:
    import os

    from earmark_stack import read_info

    info = read_info(earmark_home())
    database = os.environ.get("EARMARK_DATABASE_URL") or (info.database_url if info else "")
    nats_url = os.environ.get("EARMARK_NATS_URL") or (info.nats_url if info else "")
    if not (database and nats_url):
        raise SystemExit("earmark: no stack found; set EARMARK_DATABASE_URL and EARMARK_NATS_URL")
    return database, nats_url


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_backup(args: argparse.Namespace) -> int:
    from earmark_stack.backup import backup

    manifest = backup(*_stack_urls(), Path(args.folder), progress=_note)
    print(f"backed up PostgreSQL and {len(manifest['blobs'])} blobs to {args.folder}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from earmark_stack.backup import restore

    manifest = restore(*_stack_urls(), Path(args.folder), progress=_note)
    blobs = len(manifest["blobs"])
    print(f"restored PostgreSQL and {blobs} blobs; restart features to rebuild its index")
    return 0


def _submission_rows(subs: Sequence[Submission]) -> list[tuple[object, ...]]:
    return [
        (
            s.submission_id,
            s.state,
            s.track_id or "-",
            f"{s.rejection_code}: {s.rejection_message}" if s.rejection_code else "",
            s.external_id,
        )
        for s in subs
    ]


def cmd_ingest(args: argparse.Namespace) -> int:
    files = list(_audio_files(args.paths))
    if not files:
        print("earmark: no audio files found", file=sys.stderr)
        return 1
    bars: dict[str, Progress] = {}

    def progress(stage: str, done: int, total: int, note: str) -> None:
        bar = bars.setdefault(stage, Progress(total, f"{stage:6s}"))
        bar.update(done, note)

    with Earmark() as em:
        outcome = ingest_files(
            em, files, jobs=args.jobs, wait=args.wait, timeout_s=args.timeout, progress=progress
        )
    if args.json:
        for sub in outcome.final:
            print(json.dumps(sub.__dict__))
        for path, code, message in outcome.refused:
            print(json.dumps({"external_id": str(path), "state": "REFUSED", "code": code,
                              "error": message}))  # fmt: skip
        for path, sub in outcome.skipped:
            print(json.dumps({"external_id": str(path), "state": "SKIPPED",
                              "existing_submission": sub.submission_id}))  # fmt: skip
        return 1 if outcome.refused else 0
    problems = [s for s in outcome.final if s.state == "REJECTED"]
    if len(files) <= 50:
        table(
            ["submission", "state", "track", "reason", "external_id"],
            _submission_rows(outcome.final),
        )
    elif problems:
        table(["submission", "state", "track", "reason", "external_id"], _submission_rows(problems))
    for path, code, message in outcome.refused:
        print(f"refused {path}: {code}: {message}", file=sys.stderr)
    print()
    table(["outcome", "files"], outcome.summary())
    return 1 if outcome.refused else 0


def cmd_identify(args: argparse.Namespace) -> int:
    rows: list[tuple[object, ...]] = []
    with Earmark() as em:
        for clip in args.clips:
            try:
                result = em.identify(clip, max_matches=args.max_matches, method=args.method)
            except grpc.RpcError as exc:
                message = f"{exc.code().name}: {exc.details()}"
                if args.json:
                    print(json.dumps({"clip": clip, "error": message}))
                else:
                    rows.append((clip, "error", message, "", "", "", "", ""))
                continue
            match = result.match
            if args.json:
                print(
                    json.dumps(
                        {
                            "clip": clip,
                            "match": match.to_json() if match else None,
                            "latency_ms": round(result.latency_ms, 1),
                            "server_ms": round(result.server_ms, 1),
                        }
                    )
                )
            elif match is None:
                rows.append((clip, "no match", "", "", "", "", "", f"{result.latency_ms:.0f}"))
            else:
                rows.append(
                    (
                        clip,
                        match.title or match.external_id,
                        match.artist,
                        f"{match.offset_s:.2f}",
                        f"{match.score:.0f}",
                        f"{match.confidence:.2f}",
                        "+".join(match.methods),
                        f"{result.latency_ms:.0f}",
                    )
                )
    if not args.json:
        table(
            ["clip", "match", "artist", "offset_s", "score", "confidence", "found by", "ms"], rows
        )
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    with Earmark() as em:
        for recording in args.files:
            print(f"scanning {recording} ...", file=sys.stderr, flush=True)
            entries = em.scan(recording, window_s=args.window, hop_s=args.hop)
            if args.json:
                for e in entries:
                    print(json.dumps({"file": recording, **e.to_json()}))
                continue
            table(
                ["start", "end", "track", "artist", "offset in track", "confidence"],
                [
                    (
                        _clock(e.start_s),
                        _clock(e.end_s),
                        e.title or e.external_id,
                        e.artist,
                        _clock(e.track_offset_s),
                        f"{e.confidence:.2f}",
                    )
                    for e in entries
                ],
            )
    return 0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes):d}:{secs:04.1f}"


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        with Earmark() as em:
            for sub in em.watch(args.ids[0]):
                stages = ", ".join(stage for stage, _at in sub.stages)
                reason = (
                    f" {sub.rejection_code}: {sub.rejection_message}" if sub.rejection_code else ""
                )
                print(f"{sub.submission_id} {sub.state}{reason} [{stages}]", flush=True)
        return 0
    with Earmark() as em:
        subs = em.submissions(args.ids)
    if args.json:
        for s in subs:
            print(json.dumps(s.__dict__))
    else:
        table(["submission", "state", "track", "reason", "external_id"], _submission_rows(subs))
    missing = set(args.ids) - {s.submission_id for s in subs}
    for m in sorted(missing):
        print(f"earmark: no submission {m}", file=sys.stderr)
    return 1 if missing else 0


def cmd_tracks(args: argparse.Namespace) -> int:
    with Earmark() as em:
        tracks = list(em.tracks())
    if args.json:
        for t in tracks:
            print(json.dumps(t.__dict__))
    else:
        table(
            ["track", "title", "artist", "duration_s", "landmarks", "renditions", "external_id"],
            [
                (
                    t.track_id,
                    t.title,
                    t.artist,
                    f"{t.duration_s:.1f}",
                    t.landmark_count,
                    ",".join(t.renditions) or "-",
                    t.external_id,
                )
                for t in tracks
            ],
        )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else None
    with Earmark() as em:
        chunks = em.download(args.track_id, args.format)
        first = next(chunks, None)  # errors (unknown track, rendition) surface before a file exists
        if output is None:
            output = Path(f"{args.track_id}.{args.format if args.format != 'source' else 'bin'}")
        tmp = output.with_name(output.name + ".part")
        size = 0
        with open(tmp, "wb") as out:
            for chunk in [first] if first is not None else []:
                out.write(chunk)
                size += len(chunk)
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
        tmp.replace(output)
    print(f"wrote {output} ({size} bytes)")
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    """A new API key: the key for the caller, and its hashed entry for the keys file."""
    import hashlib
    import secrets

    key = "emk_" + secrets.token_urlsafe(32)
    entry = {
        "name": args.name,
        "role": args.role,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
    }
    print(f"key (give it to the caller; it is not stored anywhere): {key}")
    print(f"entry for EARMARK_API_KEYS_FILE: {json.dumps(entry)}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with Earmark() as em:
        for track_id in args.track_ids:
            em.delete_track(track_id)
            print(f"deleted {track_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earmark", description="Music fingerprinting and identification."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        return p

    add("up", cmd_up, "start the embedded stack (NATS, PostgreSQL, services) under $EARMARK_HOME")
    add("down", cmd_down, "stop the embedded stack")
    p = add("ingest", cmd_ingest, "upload audio files or folders (recursively)")
    p.add_argument("paths", nargs="+")
    p.add_argument(
        "--wait", action="store_true", help="wait until every file is INDEXED or REJECTED"
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits at most")
    p.add_argument("--jobs", type=int, default=4, help="uploads in flight")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = add("identify", cmd_identify, "identify clips against the catalog")
    p.add_argument("clips", nargs="+")
    p.add_argument("--max-matches", type=int, default=1)
    p.add_argument(
        "--method",
        choices=["auto", "landmarks", "neural", "fused"],
        default="auto",
        help="auto: landmarks, plus the neural index unless landmarks are certain",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = add("scan", cmd_scan, "report which catalog tracks play in long recordings, and when")
    p.add_argument("files", nargs="+")
    p.add_argument("--window", type=float, default=0.0, help="analysis window, s (default 10)")
    p.add_argument("--hop", type=float, default=0.0, help="hop between windows, s (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per timeline entry")
    p = add("status", cmd_status, "show submissions")
    p.add_argument("ids", nargs="+")
    p.add_argument("--watch", action="store_true", help="follow the first id through every stage")
    p.add_argument("--json", action="store_true")
    p = add("tracks", cmd_tracks, "list catalog tracks")
    p.add_argument("--json", action="store_true")
    p = add("download", cmd_download, "download a track's source or a rendition")
    p.add_argument("track_id")
    p.add_argument(
        "--format", default="source", help="source, a format (mp3, m4a, opus) or a rendition name"
    )
    p.add_argument("-o", "--output", help="file to write (default TRACK.FORMAT)")
    p = add("delete", cmd_delete, "delete tracks from the catalog")
    p.add_argument("track_ids", nargs="+")
    add_feature_commands(sub)
    add_admin_commands(sub)
    add_monitor_commands(sub)
    p = add("backup", cmd_backup, "copy the catalog (PostgreSQL and blobs) into a folder")
    p.add_argument("folder")
    p = add("restore", cmd_restore, "load a backup folder into the running stack")
    p.add_argument("folder")
    p = add("keys-new", cmd_keys_new, "make an API key and its hashed entry for the keys file")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=["identify", "ingest", "admin"])
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except grpc.RpcError as exc:
        code_name = exc.code().name if hasattr(exc, "code") else "ERROR"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"earmark: {code_name}: {details}", file=sys.stderr)
        if code_name == "UNAVAILABLE":
            print(
                f"is the stack running? (`earmark up`, EARMARK_HOME={earmark_home()})",
                file=sys.stderr,
            )
        code = 1
    except TimeoutError as exc:
        print(f"earmark: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
