"""Processes that run essentia, kept alive across a worker that hangs or dies.

essentia holds the GIL for seconds, so descriptions run in a process pool. A
pool has two ways to stall the service for good: a worker that never returns
keeps its slot (and the event it is describing) forever, and a worker that dies
breaks the pool, so every later description fails at once. Either way the
description is abandoned, the pool is replaced, and the event is retried.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from earmark.v1 import features_pb2

from .descriptors import SAMPLE_RATE_HZ, describe

log = logging.getLogger(__name__)

Describe = Callable[[np.ndarray, str], features_pb2.TrackFeatures]

# essentia describes ~60x faster than real time on one core; a budget of 60 s plus
# half the audio's duration leaves a slow or busy machine 30x headroom.
BASE_BUDGET_S = 60.0
BUDGET_PER_AUDIO_S = 0.5


class DescribeFailed(Exception):
    """A description that did not finish; the event carrying it should be retried."""


def _warm_up() -> None:
    # Builds the essentia algorithms once per worker process.
    describe(np.zeros(SAMPLE_RATE_HZ, dtype=np.float32))


class Extractor:
    """A pool of processes running `work` (essentia's `describe` in production)."""

    def __init__(
        self,
        workers: int,
        *,
        work: Describe = describe,
        initializer: Callable[[], None] | None = _warm_up,
        base_budget_s: float = BASE_BUDGET_S,
    ) -> None:
        self._workers = workers
        self._work = work
        self._initializer = initializer
        self._base_budget_s = base_budget_s
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=self._initializer,
        )

    def budget_s(self, samples: np.ndarray) -> float:
        return self._base_budget_s + BUDGET_PER_AUDIO_S * samples.size / SAMPLE_RATE_HZ

    async def describe(self, samples: np.ndarray, track_id: str) -> features_pb2.TrackFeatures:
        pool = self._pool
        budget = self.budget_s(samples)
        try:
            future = asyncio.get_running_loop().run_in_executor(pool, self._work, samples, track_id)
            return await asyncio.wait_for(future, timeout=budget)
        except TimeoutError as exc:
            self._replace(pool, f"describing {track_id} took longer than {budget:.0f} s")
            raise DescribeFailed(f"describing {track_id} took longer than {budget:.0f} s") from exc
        except BrokenProcessPool as exc:
            self._replace(pool, f"a worker died while describing {track_id}")
            raise DescribeFailed(f"a worker died while describing {track_id}") from exc

    def _replace(self, broken: ProcessPoolExecutor, why: str) -> None:
        if self._pool is not broken:
            return  # another description already replaced it
        log.error("restarting the essentia workers: %s", why)
        self._pool = self._new_pool()
        # shutdown() would wait for a hung worker forever, so end the workers first;
        # descriptions still running in them fail with BrokenProcessPool and are retried.
        for process in list((broken._processes or {}).values()):
            process.kill()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
