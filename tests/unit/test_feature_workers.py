"""The essentia pool survives a worker that hangs or dies: the description fails
with DescribeFailed (so its event is retried), and the next one is answered by a
fresh worker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import numpy as np
import pytest

from earmark_features.descriptors import SAMPLE_RATE_HZ
from earmark_features.workers import DescribeFailed, Extractor
from tests.unit.feature_worker_jobs import hang_die_or_answer

pytestmark = pytest.mark.timeout(120)
BASE_BUDGET_S = 2.0
# The budget grows with the audio: 60 s of samples buy a spawning worker 30 s more.
GENEROUS = np.zeros(60 * SAMPLE_RATE_HZ, dtype=np.float32)
NOTHING = np.zeros(0, dtype=np.float32)


@pytest.fixture
def extractor() -> Iterator[Extractor]:
    pool = Extractor(1, work=hang_die_or_answer, initializer=None, base_budget_s=BASE_BUDGET_S)
    yield pool
    pool.close()


def _pid_of(answer_track_id: str) -> int:
    return int(answer_track_id.rsplit(":", 1)[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_budget_grows_with_the_audio(extractor: Extractor) -> None:
    assert extractor.budget_s(NOTHING) == BASE_BUDGET_S
    assert extractor.budget_s(GENEROUS) == pytest.approx(BASE_BUDGET_S + 30.0)


async def test_a_hung_worker_is_killed_and_replaced(extractor: Extractor) -> None:
    first = await extractor.describe(GENEROUS, "ok")
    hung_pid = _pid_of(first.track_id)
    with pytest.raises(DescribeFailed, match="took longer than 2 s"):
        await extractor.describe(NOTHING, "hang")
    after = await extractor.describe(GENEROUS, "ok")
    assert _pid_of(after.track_id) != hung_pid
    for _ in range(100):
        if not _alive(hung_pid):
            break
        await asyncio.sleep(0.05)
    assert not _alive(hung_pid), "the hung worker was left running"


async def test_a_dead_worker_breaks_one_description_not_the_service(
    extractor: Extractor,
) -> None:
    with pytest.raises(DescribeFailed, match="worker died while describing die"):
        await extractor.describe(GENEROUS, "die")
    answers = await asyncio.gather(
        extractor.describe(GENEROUS, "a"), extractor.describe(GENEROUS, "b")
    )
    assert [a.track_id.split(":")[0] for a in answers] == ["a", "b"]


async def test_descriptions_in_flight_on_a_dying_pool_fail_and_are_retryable(
    extractor: Extractor,
) -> None:
    """One worker, two descriptions queued behind a crash: none hangs, all say why."""
    results = await asyncio.gather(
        extractor.describe(GENEROUS, "die"),
        extractor.describe(GENEROUS, "queued"),
        return_exceptions=True,
    )
    assert isinstance(results[0], DescribeFailed)
    assert not isinstance(results[1], BaseException) or isinstance(results[1], DescribeFailed)
    answer = await extractor.describe(GENEROUS, "later")
    assert answer.track_id.startswith("later:")
