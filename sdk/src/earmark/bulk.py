"""Bulk ingestion of a folder: skip what is already in, upload a bounded number at
a time, follow every file to its final state, and summarise the outcome."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .client import Earmark
from .results import Submission

ProgressFn = Callable[[str, int, int, str], None]


@dataclass
class BulkOutcome:
    skipped: list[tuple[Path, Submission]] = field(default_factory=list)
    refused: list[tuple[Path, str, str]] = field(default_factory=list)  # path, code, message
    submitted: dict[str, Path] = field(default_factory=dict)  # submission id -> path
    final: list[Submission] = field(default_factory=list)

    def summary(self) -> list[tuple[str, int]]:
        """(outcome, files), e.g. ("indexed", 180), ("rejected: DUPLICATE", 3)."""
        counts: Counter[str] = Counter()
        for sub in self.final:
            if sub.state == "REJECTED":
                counts[f"rejected: {sub.rejection_code}"] += 1
            else:
                counts[sub.state.lower()] += 1
        for _path, code, _msg in self.refused:
            counts[f"refused at upload: {code}"] += 1
        if self.skipped:
            counts["already ingested (skipped)"] = len(self.skipped)
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _refusal(exc: grpc.RpcError) -> tuple[str, str]:
    trailing = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
    code = str(trailing.get("earmark-rejection-code", exc.code().name))  # type: ignore[attr-defined]
    return code.removeprefix("REJECTION_CODE_"), str(exc.details())  # type: ignore[attr-defined]


def ingest_files(
    em: Earmark,
    files: Sequence[Path],
    *,
    jobs: int = 4,
    wait: bool = True,
    timeout_s: float = 3600.0,
    progress: ProgressFn = lambda stage, done, total, note: None,
) -> BulkOutcome:
    outcome = BulkOutcome()
    # 1. Files already in the catalog (same bytes) are skipped, so a re-run resumes.
    digests: dict[Path, str] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for n, (path, digest) in enumerate(zip(files, pool.map(sha256_of, files), strict=True), 1):
            digests[path] = digest
            progress("hash", n, len(files), "")
    live: dict[str, Submission] = {}
    unique = sorted(set(digests.values()))
    for start in range(0, len(unique), 1000):
        for sub in em.lookup(unique[start : start + 1000]):
            live[sub.source_sha256] = sub
    todo = []
    for path in files:
        if digests[path] in live:
            outcome.skipped.append((path, live[digests[path]]))
        else:
            todo.append(path)
    # 2. Uploads, `jobs` at a time: memory holds at most that many files.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(em.upload, p, external_id=str(p)): p for p in todo}
        for n, future in enumerate(as_completed(futures), start=1):
            path = futures[future]
            try:
                outcome.submitted[future.result().submission_id] = path
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                outcome.refused.append((path, *_refusal(exc)))
            progress("upload", n, len(todo), f"{len(outcome.refused)} refused")
    # 3. Follow each submission to a final state.
    ids = list(outcome.submitted)
    if wait and ids:

        def report(subs: list[Submission]) -> None:
            states = Counter(s.state.lower() for s in subs)
            note = " ".join(f"{k} {v}" for k, v in sorted(states.items()))
            progress("index", sum(s.final for s in subs), len(ids), note)

        outcome.final = em.wait(ids, timeout_s=timeout_s, on_progress=report)
    else:
        outcome.final = em.submissions(ids)
    return outcome
