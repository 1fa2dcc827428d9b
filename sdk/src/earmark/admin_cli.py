"""`earmark reindex [--force] [--dry-run] [--wait]` (wired in by cli.py).

Fingerprints the catalog's tracks again from their kept sources after a change
of the fingerprint algorithm, with no downtime: identify answers from the old
landmarks of a track until its new ones are written. Needs an admin key when
authentication is on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from earmark.v1 import ingest_pb2, ingest_pb2_grpc

from . import _auth
from .discovery import resolve

POLL_S = 2.0


@dataclass(frozen=True)
class ReindexProgress:
    algorithm_version: int  # what the fingerprint service runs now
    indexed_tracks: int
    outdated_tracks: int  # fingerprinted by another algorithm version
    requested: int  # asked for by this call
    pending: int  # asked for, new fingerprint not back yet
    generation: str

    @classmethod
    def from_proto(cls, reply: ingest_pb2.ReindexResponse) -> ReindexProgress:
        return cls(
            algorithm_version=reply.algorithm_version,
            indexed_tracks=reply.indexed_tracks,
            outdated_tracks=reply.outdated_tracks,
            requested=reply.requested,
            pending=reply.pending,
            generation=reply.generation,
        )

    @property
    def done(self) -> bool:
        return self.pending == 0 and self.outdated_tracks == 0


def reindex(
    stub: ingest_pb2_grpc.IngestServiceStub, *, force: bool = False, dry_run: bool = False
) -> ReindexProgress:
    reply = stub.Reindex(ingest_pb2.ReindexRequest(force=force, dry_run=dry_run), timeout=3600)
    return ReindexProgress.from_proto(reply)


def _line(p: ReindexProgress) -> str:
    return (
        f"algorithm v{p.algorithm_version}: {p.indexed_tracks} tracks, "
        f"{p.outdated_tracks} outdated, {p.pending} pending"
    )


def cmd_reindex(args: argparse.Namespace) -> int:
    channel, stub_channel = _auth.sync_channel(resolve().ingest, _auth.api_key(None))
    with channel:
        stub = ingest_pb2_grpc.IngestServiceStub(stub_channel)
        progress = reindex(stub, force=args.force, dry_run=args.dry_run)
        if not args.dry_run:
            print(f"requested {progress.requested} tracks ({progress.generation})", file=sys.stderr)
        while args.wait and not args.dry_run and progress.pending:
            print(_line(progress), file=sys.stderr)
            time.sleep(POLL_S)
            progress = reindex(stub, dry_run=True)
    if args.json:
        print(json.dumps(asdict(progress)))
    else:
        print(_line(progress))
    return 0


def add_commands(sub: Any) -> None:
    """Add `reindex` to the `earmark` sub-command parser."""
    p = sub.add_parser(
        "reindex",
        help="fingerprint indexed tracks again (after an algorithm change), without downtime",
        description="Fingerprint the tracks whose landmarks come from another algorithm "
        "version again, from their kept sources; identify keeps answering meanwhile.",
    )
    p.set_defaults(func=cmd_reindex)
    p.add_argument("--force", action="store_true", help="every indexed track, outdated or not")
    p.add_argument("--dry-run", action="store_true", help="only count (follow progress)")
    p.add_argument("--wait", action="store_true", help="wait until no track is pending")
    p.add_argument("--json", action="store_true", help="the final counts as one JSON object")
