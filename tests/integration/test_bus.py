"""The JetStream bus against a real nats-server: ack, redelivery, dead letters, dedupe, traces."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from earmark.v1 import events_pb2
from earmark_runtime import bus
from earmark_stack.processes import free_port, nats_server_binary, stop_pid, wait_for_port

SUBJECT = bus.TRACK_INDEXED

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    store: Path = tmp_path_factory.mktemp("nats")
    proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, 20, "nats-server", proc.pid)
    yield f"nats://127.0.0.1:{port}"
    stop_pid(proc.pid)
    proc.wait()


@pytest_asyncio.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await bus.connect(nats_url, "test")
    js = client.jetstream()
    await bus.ensure_stream(js)
    await js.purge_stream(bus.STREAM_NAME)
    yield client
    await client.close()


def _event(n: int) -> events_pb2.TrackIndexed:
    return events_pb2.TrackIndexed(submission_id=f"s{n}", track_id=f"t{n}", landmark_count=n)


async def _run_until(consumer: bus.Consumer[events_pb2.TrackIndexed], done: asyncio.Event) -> None:
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(done.wait(), timeout=20)
    finally:
        consumer.stop()
        await consumer.wait_stopped(5)
        task.cancel()


async def test_messages_are_handled_once_and_duplicates_dropped(nc: NatsClient) -> None:
    js = nc.jetstream()
    for n in range(5):
        await bus.publish(js, SUBJECT, _event(n), f"indexed:s{n}")
    await bus.publish(js, SUBJECT, _event(0), "indexed:s0")  # a re-publish after a "crash"
    seen: list[int] = []
    done = asyncio.Event()

    async def handle(event: events_pb2.TrackIndexed, _d: bus.Delivery) -> None:
        seen.append(event.landmark_count)
        if len(seen) == 5:
            done.set()

    consumer = bus.Consumer(
        js, role="t-once", subject=SUBJECT, message_type=events_pb2.TrackIndexed, handler=handle,
        fetch_timeout_s=0.3,
    )  # fmt: skip
    await _run_until(consumer, done)
    await asyncio.sleep(0.5)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    info = await js.consumer_info(bus.STREAM_NAME, consumer.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_idle_fetch_timeouts_keep_the_consumer_healthy(nc: NatsClient) -> None:
    consumer = bus.Consumer(
        nc.jetstream(), role="t-idle", subject=bus.TRACK_DELETED,
        message_type=events_pb2.TrackIndexed, handler=lambda e, d: asyncio.sleep(0),
        fetch_timeout_s=0.2,
    )  # fmt: skip
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(1.5)  # several empty fetches
    assert consumer.healthy and not task.done()
    consumer.stop()
    await consumer.wait_stopped(5)
    assert task.done() and task.exception() is None


async def test_transient_failure_is_retried_then_succeeds(nc: NatsClient) -> None:
    js = nc.jetstream()
    await bus.publish(js, SUBJECT, _event(42), "indexed:s42")
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(event: events_pb2.TrackIndexed, delivery: bus.Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt < 3:
            raise bus.TransientError("database restarting")
        done.set()

    consumer = bus.Consumer(
        js, role="t-retry", subject=SUBJECT, message_type=events_pb2.TrackIndexed, handler=flaky,
        fetch_timeout_s=0.3,
    )  # fmt: skip
    await _run_until(consumer, done)
    assert attempts == [1, 2, 3]


async def test_a_handler_past_its_budget_is_cancelled_and_retried(nc: NatsClient) -> None:
    """A hung first attempt must not hold the message (or the consumer) for good."""
    js = nc.jetstream()
    await bus.publish(js, SUBJECT, _event(43), "indexed:s43")
    attempts: list[int] = []
    cancelled = asyncio.Event()
    done = asyncio.Event()

    async def hangs_once(event: events_pb2.TrackIndexed, delivery: bus.Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        done.set()

    consumer = bus.Consumer(
        js, role="t-budget", subject=SUBJECT, message_type=events_pb2.TrackIndexed,
        handler=hangs_once, fetch_timeout_s=0.3, handler_timeout_s=0.5,
    )  # fmt: skip
    await _run_until(consumer, done)
    assert attempts == [1, 2] and cancelled.is_set()


async def test_a_timeout_inside_a_handler_is_an_ordinary_failure(nc: NatsClient) -> None:
    js = nc.jetstream()
    await bus.publish(js, SUBJECT, _event(44), "indexed:s44")
    errors: list[str] = []
    done = asyncio.Event()

    async def times_out(event: events_pb2.TrackIndexed, delivery: bus.Delivery) -> None:
        if delivery.attempt == 1:
            await asyncio.wait_for(asyncio.sleep(3600), timeout=0.05)
        done.set()

    consumer = bus.Consumer(
        js, role="t-inner", subject=SUBJECT, message_type=events_pb2.TrackIndexed,
        handler=times_out, fetch_timeout_s=0.3, handler_timeout_s=30,
    )  # fmt: skip
    handler = logging.Handler()
    handler.emit = lambda record: errors.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(bus.__name__).addHandler(handler)
    try:
        await _run_until(consumer, done)
    finally:
        logging.getLogger(bus.__name__).removeHandler(handler)
    failures = [e for e in errors if "attempt 1 failed" in e]
    assert failures and "TimeoutError" in failures[0] and "within" not in failures[0]


async def test_poison_message_is_dead_lettered_and_give_up_hook_runs(nc: NatsClient) -> None:
    js = nc.jetstream()
    await bus.publish(js, SUBJECT, _event(7), "indexed:s7")
    await js.publish(SUBJECT, b"\xff\xff not a protobuf", headers={"Nats-Msg-Id": "garbage"})
    given_up: list[str] = []
    done = asyncio.Event()

    async def refuse(event: events_pb2.TrackIndexed, _d: bus.Delivery) -> None:
        raise bus.PermanentError("track 7 is corrupt")

    async def give_up(event: events_pb2.TrackIndexed, error: str) -> None:
        given_up.append(f"{event.submission_id}: {error}")

    consumer = bus.Consumer(
        js, role="t-dlq", subject=SUBJECT, message_type=events_pb2.TrackIndexed, handler=refuse,
        on_give_up=give_up, fetch_timeout_s=0.3,
    )  # fmt: skip
    letters = await js.pull_subscribe(bus.DEADLETTER_PREFIX + "t-dlq", durable="dlq-reader")
    task = asyncio.create_task(consumer.run())
    msgs = []
    for _ in range(20):
        with contextlib.suppress(TimeoutError):
            msgs += await letters.fetch(batch=2, timeout=1)
        if len(msgs) >= 2:
            break
    done.set()
    consumer.stop()
    await consumer.wait_stopped(5)
    task.cancel()
    errors = sorted(events_pb2.DeadLetter.FromString(m.data).error for m in msgs)
    assert len(errors) == 2
    assert errors[0] == "track 7 is corrupt"
    assert errors[1].startswith("undecodable TrackIndexed")
    assert given_up == ["s7: track 7 is corrupt"]


async def test_trace_context_crosses_the_nats_hop(nc: NatsClient) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    tracer = provider.get_tracer("test")
    js = nc.jetstream()
    done = asyncio.Event()

    async def handle(event: events_pb2.TrackIndexed, _d: bus.Delivery) -> None:
        done.set()

    trace.set_tracer_provider(provider)
    with tracer.start_as_current_span("producer") as producer:
        await bus.publish(js, bus.FEATURES_COMPUTED, _event(9), "features:s9")
    consumer = bus.Consumer(
        js, role="t-trace", subject=bus.FEATURES_COMPUTED, message_type=events_pb2.TrackIndexed,
        handler=handle, fetch_timeout_s=0.3,
    )  # fmt: skip
    await _run_until(consumer, done)
    spans = {s.name: s for s in _exporter.get_finished_spans()}
    consumer_span = spans[f"t-trace {bus.FEATURES_COMPUTED}"]
    assert consumer_span.context.trace_id == producer.get_span_context().trace_id
    assert consumer_span.parent is not None
    assert consumer_span.parent.span_id == producer.get_span_context().span_id
