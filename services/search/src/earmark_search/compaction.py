"""Housekeeping after index writes: packing recent postings into the per-hash
index, and sealing the neural segments once writes pause.

New tracks land in `recent_postings` (one row per posting: cheap appends, but
a lookup pays one heap tuple per posting). Packing them costs a rewrite of
every packed row they touch, so it waits for a batch worth it: a fixed number
of rows, or a quarter of the catalog (which bounds the rewrite work per posting
ingested, as the merges of a log-structured index do), or a pause in indexing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

log = logging.getLogger(__name__)

# Share of the catalog that a backlog may reach before it is packed at once.
BACKLOG_SHARE: Final = 0.25
# During a pause, a backlog smaller than this share of the catalog is left
# where it is: its lookups are cheap, and packing it would rewrite rows for
# little gain.
IDLE_SHARE: Final = 0.01
POLL_S: Final = 2.0
RETRY_S: Final = 30.0


@dataclass(frozen=True)
class CompactionPolicy:
    rows: int
    idle_s: float

    def due(self, recent: int, catalog: int, idle_s: float) -> bool:
        """Pack now? `recent` postings wait, of `catalog` in all, after `idle_s` without writes."""
        if recent <= 0:
            return False
        packed = max(catalog - recent, 0)
        if recent >= max(self.rows, BACKLOG_SHARE * packed):
            return True
        return idle_s >= self.idle_s and recent >= IDLE_SHARE * packed


class CompactableCatalog(Protocol):
    async def backlog(self) -> tuple[int, int]: ...

    async def compact(self) -> int: ...


class _AfterWrites:
    """A background job that reacts to index writes (`wrote()`) and to pauses in them."""

    # Says what failed in the retry warning.
    task = "housekeeping"

    def __init__(self) -> None:
        self._last_write = time.monotonic()
        # Something may wait from before this process started.
        self._pending = True

    def wrote(self) -> None:
        self._last_write = time.monotonic()
        self._pending = True

    def _idle_s(self) -> float:
        return time.monotonic() - self._last_write

    async def run_once(self) -> object:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database or Milvus may be restarting: nothing is lost (a
                # compaction slice is one transaction), the next try does the work.
                log.warning("%s failed; retrying in %.0f s", self.task, RETRY_S, exc_info=True)
                await asyncio.sleep(RETRY_S)
                continue
            await asyncio.sleep(POLL_S)


class Compactor(_AfterWrites):
    """Background job of the search service; `wrote()` is called after index writes."""

    task = "compaction"

    def __init__(self, catalog: CompactableCatalog, policy: CompactionPolicy) -> None:
        super().__init__()
        self._catalog = catalog
        self._policy = policy

    async def run_once(self) -> int:
        """Pack if due; the number of postings moved."""
        if not self._pending:
            return 0
        recent, catalog = await self._catalog.backlog()
        idle_s = self._idle_s()
        if not self._policy.due(recent, catalog, idle_s):
            # A backlog too small to pack even when idle needs no more checks
            # until the next write.
            if idle_s >= self._policy.idle_s:
                self._pending = False
            return 0
        started = time.perf_counter()
        moved = await self._catalog.compact()
        log.info(
            "packed %d recent postings into the per-hash index in %.1f s",
            moved,
            time.perf_counter() - started,
        )
        return moved


class IdleFlush(_AfterWrites):
    """Runs `flush` once writes have paused for `idle_s` (background job; `wrote()` after writes).

    Milvus Lite keeps unsealed rows in memory and copies them on every search
    (0.5-1.3 s per neural search after an ingest, docs/benchmarks.md); sealing
    after every track would leave many tiny segments instead.
    """

    task = "sealing the neural index"

    def __init__(self, flush: Callable[[], Awaitable[None]], idle_s: float) -> None:
        super().__init__()
        self._pending = False  # Milvus seals on its own what an earlier process wrote
        self._flush = flush
        self._idle_after_s = idle_s

    async def run_once(self) -> bool:
        """Flush if writes paused long enough since the last flush; whether it did."""
        if not self._pending or self._idle_s() < self._idle_after_s:
            return False
        self._pending = False
        try:
            await self._flush()
        except Exception:
            self._pending = True  # try again at the next poll
            raise
        return True
