"""NATS JetStream event bus.

One stream ("EARMARK") holds every subject under "earmark.". Each role (the
fingerprinter, the indexer, ...) reads through one durable pull consumer that
all its replicas share, so work spreads over replicas and survives restarts.

Delivery is at least once: a message is acked only after its handler
finished, `in_progress` keeps long work from being redelivered, a transient
failure is nak'ed with a growing delay, and a message that cannot succeed is
terminated and copied to "earmark.deadletter.<role>". Publishers set
Nats-Msg-Id, so a re-publish inside the duplicate window is dropped by the
server; handlers are idempotent for what slips past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry.trace import SpanKind

from earmark.v1 import events_pb2

from .telemetry import extract_context, inject_headers, tracer

log = logging.getLogger(__name__)

STREAM_NAME = "EARMARK"
STREAM_SUBJECTS = ["earmark.>"]
DUPLICATE_WINDOW_S = 600.0

SUBMISSION_RECEIVED = "earmark.submission.received"
SUBMISSION_REJECTED = "earmark.submission.rejected"
FINGERPRINT_EXTRACTED = "earmark.fingerprint.extracted"
TRACK_INDEXED = "earmark.track.indexed"
TRACK_DELETED = "earmark.track.deleted"
FEATURES_COMPUTED = "earmark.features.computed"
RENDITIONS_READY = "earmark.renditions.ready"
INGEST_REQUESTED = "earmark.ingest.requested"
DEADLETTER_PREFIX = "earmark.deadletter."

M = TypeVar("M", bound=Message)


class TransientError(Exception):
    """Worth retrying later: a dependency is down or busy."""


# Far beyond any handler's real work (the slowest, a transcode of a two-hour track,
# is bounded at 600 s per rendition): a guard against a hang, not a schedule.
DEFAULT_HANDLER_TIMEOUT_S = 3600.0


class HandlerTimeout(Exception):
    """A handler ran past its consumer's budget; it was cancelled and the event is retried."""


class PermanentError(Exception):
    """Retrying cannot help: the message or its data is bad."""


async def connect(url: str, name: str) -> NatsClient:
    """Connect, retrying forever in the background once the first connect succeeded."""
    return await nats.connect(
        url,
        name=name,
        connect_timeout=5,
        reconnect_time_wait=1,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
    )


async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> None:
    config = StreamConfig(
        name=STREAM_NAME,
        subjects=STREAM_SUBJECTS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=7 * 24 * 3600.0,
        num_replicas=replicas,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Already there with another config (an older version, or set by an operator).
        await js.update_stream(config)


async def publish(js: JetStreamContext, subject: str, message: Message, msg_id: str) -> None:
    """Publish with dedupe id and trace context; raises if the stream did not store it."""
    headers = inject_headers({"Nats-Msg-Id": msg_id})
    ack = await js.publish(subject, message.SerializeToString(), headers=headers, timeout=10)
    if ack.duplicate:
        log.debug("duplicate publish of %s dropped by the stream", msg_id)


@dataclass(frozen=True)
class Delivery:
    subject: str
    attempt: int
    msg: Msg

    async def still_working(self) -> None:
        await self.msg.in_progress()

    @property
    def published_at(self) -> datetime | None:
        """When the stream stored the message: when the reported step happened."""
        stamp = self.msg.metadata.timestamp
        return stamp if isinstance(stamp, datetime) else None


Handler = Callable[[M, Delivery], Awaitable[None]]
GiveUp = Callable[[M, str], Awaitable[None]]


class Consumer(Generic[M]):
    """Durable pull consumer: fetch, handle, ack; never lets an idle fetch crash the loop."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        role: str,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        on_give_up: GiveUp[M] | None = None,
        concurrency: int = 2,
        ack_wait_s: float = 60.0,
        max_deliver: int = 20,
        fetch_timeout_s: float = 2.0,
        handler_timeout_s: float | None = DEFAULT_HANDLER_TIMEOUT_S,
    ) -> None:
        self._js = js
        self.role = role
        self.subject = subject
        self._type = message_type
        self._handler = handler
        self._on_give_up = on_give_up
        self._concurrency = concurrency
        self._ack_wait_s = ack_wait_s
        self._max_deliver = max_deliver
        self._fetch_timeout_s = fetch_timeout_s
        # Heartbeats keep a message ours while its handler runs, so a handler that
        # never returns would hold it, and the consumer's batch, for good.
        self._handler_timeout_s = handler_timeout_s
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self.healthy = False

    @property
    def durable(self) -> str:
        return (
            f"{self.role}-{self.subject.replace('.', '-').replace('>', 'all').replace('*', 'any')}"
        )

    def stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self, timeout_s: float) -> None:
        """Wait for the loop to finish its current batch (acks included)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout=timeout_s)

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s,
            max_deliver=self._max_deliver,
            max_ack_pending=max(64, self._concurrency * 8),
            filter_subject=self.subject,
        )
        return await self._js.pull_subscribe(
            self.subject, durable=self.durable, stream=STREAM_NAME, config=config
        )

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._stopped.set()

    async def _run(self) -> None:
        sub: JetStreamContext.PullSubscription | None = None
        while not self._stopping.is_set():
            try:
                if sub is None:
                    sub = await self._subscribe()
                    self.healthy = True
                msgs = await sub.fetch(batch=self._concurrency, timeout=self._fetch_timeout_s)
            except (NatsTimeoutError, TimeoutError):
                # An idle fetch times out by design; it is not an error.
                continue
            except (ConnectionClosedError, NoServersError, NotFoundError, OSError) as exc:
                self.healthy = False
                sub = None
                log.warning("consumer %s lost NATS (%s); retrying", self.durable, exc)
                await self._sleep(1.0)
                continue
            except Exception:
                self.healthy = False
                sub = None
                log.exception("consumer %s fetch failed; retrying", self.durable)
                await self._sleep(1.0)
                continue
            self.healthy = True
            await asyncio.gather(*(self._handle(m) for m in msgs))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _handle(self, msg: Msg) -> None:
        attempt = int(msg.metadata.num_delivered or 1)
        parent = extract_context(msg.headers)
        with tracer().start_as_current_span(
            f"{self.role} {msg.subject}", context=parent, kind=SpanKind.CONSUMER
        ) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", msg.subject)
            span.set_attribute("messaging.delivery.attempt", attempt)
            try:
                payload = self._type.FromString(msg.data)
            except DecodeError as exc:
                await self._dead_letter(msg, None, f"undecodable {self._type.__name__}: {exc}")
                return
            beat = asyncio.create_task(self._heartbeat(msg))
            try:
                await self._run_handler(payload, Delivery(msg.subject, attempt, msg))
            except PermanentError as exc:
                await self._dead_letter(msg, payload, str(exc))
            except Exception as exc:
                if attempt >= self._max_deliver:
                    log.exception("consumer %s giving up after %d attempts", self.durable, attempt)
                    await self._dead_letter(msg, payload, f"{type(exc).__name__}: {exc}")
                else:
                    delay = min(30.0, 0.5 * 2 ** (attempt - 1))
                    log.warning(
                        "consumer %s attempt %d failed (%s: %s); retry in %.1fs",
                        self.durable,
                        attempt,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=delay)
            else:
                try:
                    await msg.ack()
                except Exception:
                    # The work is done; a redelivery is absorbed by the handler's idempotency.
                    log.warning("consumer %s could not ack; expecting a redelivery", self.durable)
            finally:
                beat.cancel()

    async def _run_handler(self, payload: M, delivery: Delivery) -> None:
        if self._handler_timeout_s is None:
            await self._handler(payload, delivery)
            return
        try:
            async with asyncio.timeout(self._handler_timeout_s) as budget:
                await self._handler(payload, delivery)
        except TimeoutError as exc:
            if budget.expired():
                raise HandlerTimeout(
                    f"handler gave no answer within {self._handler_timeout_s:g} s"
                ) from exc
            raise

    async def _dead_letter(self, msg: Msg, payload: M | None, error: str) -> None:
        log.error("consumer %s dead-lettering %s: %s", self.durable, msg.subject, error)
        if payload is not None and self._on_give_up is not None:
            try:
                await self._on_give_up(payload, error)
            except Exception:
                log.exception("consumer %s give-up hook failed; will retry", self.durable)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=5.0)
                return
        letter = events_pb2.DeadLetter(
            role=self.role,
            subject=msg.subject,
            payload=msg.data,
            error=error[:2000],
            deliveries=int(msg.metadata.num_delivered or 1),
        )
        seq = msg.metadata.sequence.stream if msg.metadata.sequence else 0
        try:
            await publish(self._js, DEADLETTER_PREFIX + self.role, letter, f"dlq:{self.role}:{seq}")
        except Exception:
            log.exception("consumer %s could not write the dead letter; will retry", self.durable)
            with contextlib.suppress(Exception):
                await msg.nak(delay=5.0)
            return
        with contextlib.suppress(Exception):
            await msg.term()


async def publish_rejection(
    js: JetStreamContext, submission_id: str, stage: str, code: int, message: str
) -> None:
    """Tell ingest that `stage` refused a submission, so it reaches a final state."""
    from earmark.v1 import common_pb2

    rejected = events_pb2.SubmissionRejected(
        submission_id=submission_id,
        stage=stage,
        rejection=common_pb2.Rejection(code=code, message=message),  # type: ignore[arg-type]
    )
    await publish(js, SUBMISSION_REJECTED, rejected, f"rejected:{submission_id}")
