"""Where the services are: explicit arguments, then environment, then the embedded stack."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULTS = {
    "ingest": "127.0.0.1:50051",
    "fingerprint": "127.0.0.1:50052",
    "search": "127.0.0.1:50053",
    "features": "127.0.0.1:50054",
    "monitor": "127.0.0.1:50056",
}


def earmark_home() -> Path:
    return Path(os.environ.get("EARMARK_HOME") or "~/.earmark").expanduser()


@dataclass(frozen=True)
class Endpoints:
    ingest: str
    search: str
    features: str
    fingerprint: str
    monitor: str


def resolve(**overrides: str | None) -> Endpoints:
    stack: dict[str, str] = {}
    info_path = earmark_home() / "stack.json"
    if info_path.exists():
        try:
            services = json.loads(info_path.read_text()).get("services", {})
            stack = {name: str(entry["addr"]) for name, entry in services.items()}
        except (ValueError, KeyError, TypeError):
            stack = {}

    def pick(name: str) -> str:
        return (
            overrides.get(name)
            or os.environ.get(f"EARMARK_{name.upper()}_ADDR")
            or stack.get(name)
            or DEFAULTS[name]
        )

    return Endpoints(
        ingest=pick("ingest"),
        search=pick("search"),
        features=pick("features"),
        fingerprint=pick("fingerprint"),
        monitor=pick("monitor"),
    )
