"""Backpressure: a bounded number of calls in progress per server.

A server that accepts every call queues them all and answers none in time once
it is overloaded; latency grows without bound and clients time out. Instead a
server works on at most `limit` calls at once (EARMARK_MAX_INFLIGHT) and
refuses the next one at once with RESOURCE_EXHAUSTED, a message that says so,
and advice on when to retry in the `retry-after-ms` trailing metadata. A
refusal costs microseconds, so an overloaded replica keeps its throughput,
and clients (or a load balancer) spread the excess over time or replicas.
"""

from __future__ import annotations

from typing import Final

RETRY_AFTER_KEY: Final = "retry-after-ms"
# Bounds of the retry advice: soon enough to use a freed slot, late enough not to spin.
MIN_RETRY_AFTER_MS: Final = 20
MAX_RETRY_AFTER_MS: Final = 5000
# Weight of the newest call in the moving average of call durations.
_EWMA_WEIGHT: Final = 0.05


class Admission:
    """Counts calls in progress; `try_enter` refuses once `limit` are running.

    Used from one event loop only (grpc.aio runs every handler on it), so no
    lock is needed: nothing awaits between the check and the increment.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self.inflight = 0
        self.refused = 0
        self._mean_s = 0.0

    def try_enter(self) -> bool:
        if self.inflight >= self.limit:
            self.refused += 1
            return False
        self.inflight += 1
        return True

    def leave(self, duration_s: float | None) -> None:
        """Give the slot back; `duration_s` feeds the retry advice (None for streams,
        whose lifetime says nothing about when a slot frees up)."""
        self.inflight -= 1
        if duration_s is None:
            return
        if self._mean_s == 0.0:
            self._mean_s = duration_s
        else:
            self._mean_s += _EWMA_WEIGHT * (duration_s - self._mean_s)

    @property
    def retry_after_ms(self) -> int:
        """About when a slot frees up: the typical duration of a call, bounded."""
        typical_ms = round(self._mean_s * 1000)
        return max(MIN_RETRY_AFTER_MS, min(MAX_RETRY_AFTER_MS, typical_ms))

    def refusal_message(self, method: str) -> str:
        name = method.rsplit("/", 1)[-1] or method
        return (
            f"server busy: {self.inflight} calls in progress, the limit is {self.limit} "
            f"(EARMARK_MAX_INFLIGHT); {name} was not started, retry after "
            f"{self.retry_after_ms} ms or on another replica"
        )
