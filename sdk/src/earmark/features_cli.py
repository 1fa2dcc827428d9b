"""`earmark features TRACK` and `earmark similar TRACK -k 10` (wired in by cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from google.protobuf.json_format import MessageToDict

from ._table import table
from .features import FeaturesClient, SimilarTrack


def cmd_features(args: argparse.Namespace) -> int:
    from .features import feature_rows

    with FeaturesClient() as fc:
        for track_id in args.track_ids:
            f = fc.get(track_id)
            if args.json:
                print(json.dumps(MessageToDict(f, preserving_proto_field_name=True)))
            else:
                table(["descriptor", "value"], feature_rows(f), out=sys.stdout)
    return 0


def _print_similar(hits: list[SimilarTrack], as_json: bool) -> None:
    if as_json:
        for h in hits:
            print(json.dumps(h.to_json()))
        return
    table(
        ["#", "track", "score", "bpm", "key", "lufs", "why (closest features)"],
        [
            (
                n,
                h.track_id,
                f"{h.score:.3f}",
                f"{h.bpm:.1f}",
                f"{h.key} {h.scale}".strip(),
                f"{h.integrated_lufs:.1f}",
                h.why,
            )
            for n, h in enumerate(hits, start=1)
        ],
        out=sys.stdout,
    )


def cmd_similar(args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {
        "min_bpm": args.min_bpm,
        "max_bpm": args.max_bpm,
        "key": args.key,
        "scale": args.scale,
    }
    with FeaturesClient() as fc:
        if args.audio:
            _query, hits = fc.similar_to_audio(args.target, args.k, **filters)
        else:
            hits = fc.similar(args.target, args.k, **filters)
    _print_similar(hits, args.json)
    return 0


def add_commands(sub: Any) -> None:
    """Add `features` and `similar` to the `earmark` sub-command parser."""
    p = sub.add_parser(
        "features", help="show a track's audio descriptors", description="show descriptors"
    )
    p.set_defaults(func=cmd_features)
    p.add_argument("track_ids", nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = sub.add_parser(
        "similar",
        help="tracks that sound like a catalog track (or like a clip with --audio)",
        description="tracks that sound like a catalog track (or like a clip with --audio)",
    )
    p.set_defaults(func=cmd_similar)
    p.add_argument("target", help="a track id, or an audio file with --audio")
    p.add_argument("-k", type=int, default=10, help="results wanted (at most 100)")
    p.add_argument("--audio", action="store_true", help="TARGET is an audio file")
    p.add_argument("--min-bpm", type=float, default=0.0)
    p.add_argument("--max-bpm", type=float, default=0.0)
    p.add_argument("--key", default="", help="tonic, e.g. A or F#")
    p.add_argument("--scale", default="", choices=["", "major", "minor"])
    p.add_argument("--json", action="store_true", help="one JSON object per line")
