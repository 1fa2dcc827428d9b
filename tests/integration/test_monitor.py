"""Live monitoring on the real stack: the Monitor stream, and server-side monitors that
survive a crash."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import nats
import numpy as np
import pytest
from scipy.signal import resample_poly

from bench.music_check_data import mock
from bench.synthetic import encode, song
from earmark import Earmark
from earmark.results import MonitorEvent, Play
from earmark.v1 import common_pb2, events_pb2, search_pb2, search_pb2_grpc
from earmark_stack import StackInfo, read_info, restart_service

SR = 22050
SEEDS = (710, 711, 712, 713)


@pytest.fixture(scope="module")
def catalog(client: Earmark) -> dict[int, str]:
    """Seed -> track id of four 40 s songs."""
    subs = {
        seed: client.upload(
            encode(song(seed, seconds=40), "mp3", bitrate="128k"),
            external_id=f"monitor-{seed}",
            metadata={"title": f"Monitor {seed}", "artist": "Synth"},
        ).submission_id
        for seed in SEEDS
    }
    final = client.wait(list(subs.values()), timeout_s=180)
    assert [s.state for s in final] == ["INDEXED"] * len(SEEDS)
    return {seed: s.track_id for seed, s in zip(subs, final, strict=True)}


def _excerpt(seed: int, a: float, b: float) -> np.ndarray:
    return song(seed, seconds=40)[int(a * SR) : int(b * SR)]


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_monitor_follows_a_show_event_by_event(client: Earmark, catalog: dict[int, str]) -> None:
    """A radio show with a gap, unknown music, speech, noise and a crossfade, sent as MP3."""
    fade = 3.0
    show = np.concatenate(
        [
            _silence(1),  # 0-1
            _excerpt(710, 4, 26),  # 1-23: song 710 from 4 s
            _silence(2),  # 23-25
            _excerpt(711, 0, 20),  # 25-45
            song(4711, seconds=15),  # 45-60: music not in the catalog
            resample_poly(mock("speech", 7, 12.0), 441, 160).astype(np.float32),  # 60-72: speech
            0.1 * np.random.default_rng(2).standard_normal(4 * SR).astype(np.float32),  # noise
            _excerpt(712, 2, 24),  # 76-98, then a 3 s crossfade into song 713
        ]
    )
    incoming = _excerpt(713, 0, 18)
    ramp = np.linspace(0, 1, int(fade * SR), dtype=np.float32)
    show[-ramp.size :] = show[-ramp.size :] * ramp[::-1] + incoming[: ramp.size] * ramp
    show = np.concatenate([show, incoming[ramp.size :]])  # 713 louder from 96.5 s
    mp3 = encode(show, "mp3", bitrate="128k")

    events = list(client.monitor(_chunks(mp3, 16384), encoded=True, stream_name="show"))

    started = [e for e in events if e.type == "STARTED"]
    assert [e.track_id for e in started] == [catalog[s] for s in SEEDS]
    expected = [(1.0, 4.0), (25.0, 0.0), (76.0, 2.0), (96.5, 1.5)]
    for event, (start_s, offset_s) in zip(started, expected, strict=True):
        assert event.start_s == pytest.approx(start_s, abs=2.0)
        assert event.track_offset_s == pytest.approx(offset_s + event.start_s - start_s, abs=0.3)
        assert event.title == f"Monitor {SEEDS[started.index(event)]}"
        assert 0 < event.stream_time_s - start_s <= 6.0  # detection delay
    ended = {e.play: e for e in events if e.type == "ENDED"}
    assert sorted(ended) == sorted(e.play for e in started)
    for event, end_s in zip(started[:2], [23.0, 45.0], strict=True):
        assert ended[event.play].end_s == pytest.approx(end_s, abs=1.5)
    # Between 45 and 76 s nothing of the catalog plays: unknown audio, no track.
    unknown = [e for e in events if e.type == "UNKNOWN"]
    assert unknown and unknown[0].start_s == pytest.approx(45.0, abs=1.5)
    assert not [e for e in events if e.track_id and 46 < e.start_s < 75]
    # Events arrive in the order they were decided.
    times = [e.stream_time_s for e in events]
    assert times == sorted(times)


def test_monitor_takes_pcm_at_any_rate(client: Earmark, catalog: dict[int, str]) -> None:
    stereo = np.repeat(_excerpt(711, 10, 25)[:, None], 2, axis=1)  # 22.05 kHz stereo
    pcm = (stereo * 32767).astype("<i2").tobytes()
    events = list(client.monitor(_chunks(pcm, 8820), sample_rate_hz=SR, channels=2))
    assert [(e.type, e.track_id) for e in events if e.type != "PLAYING"] == [
        ("STARTED", catalog[711]),
        ("ENDED", catalog[711]),
    ]
    assert events[0].track_offset_s == pytest.approx(10.0, abs=0.3)


def _monitor_raw(stack: StackInfo, requests: list[search_pb2.MonitorRequest]) -> grpc.RpcError:
    with grpc.insecure_channel(stack.addr("search")) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Monitor(iter(requests), timeout=60))
    return err.value


def _pcm(samples: bytes, rate: int = 8000, channels: int = 1) -> search_pb2.MonitorRequest:
    return search_pb2.MonitorRequest(
        pcm=common_pb2.PcmAudio(samples=samples, sample_rate_hz=rate, channels=channels)
    )


@pytest.mark.parametrize(
    "requests,fragment",
    [
        ([search_pb2.MonitorRequest(encoded=b"this is not audio at all" * 500)], "not decodable"),
        ([_pcm(b"\0\0" * 8000), search_pb2.MonitorRequest(config={})], "first message"),
        ([_pcm(b"\0\0" * 800), search_pb2.MonitorRequest(encoded=b"x")], "not both"),
        ([_pcm(b"\0\0" * 800), _pcm(b"\0\0" * 800, rate=16000)], "must not change"),
        ([_pcm(b"\0\0\0")], "whole sample frames"),
        ([_pcm(b"\0\0", rate=100)], "sample_rate_hz"),
        ([search_pb2.MonitorRequest(config={"report_interval_s": 0.1})], "report_interval_s"),
        ([search_pb2.MonitorRequest(config={})], "no audio"),
        ([search_pb2.MonitorRequest()], "empty message"),
    ],
)
def test_monitor_refuses_bad_streams(
    stack: StackInfo, requests: list[search_pb2.MonitorRequest], fragment: str
) -> None:
    error = _monitor_raw(stack, requests)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (error.details() or "")


def test_stream_registration_is_checked(client: Earmark) -> None:
    for name, url, code in [
        ("bad name", "http://127.0.0.1:9/x", grpc.StatusCode.INVALID_ARGUMENT),
        ("ok", "ftp://example.org/x.mp3", grpc.StatusCode.INVALID_ARGUMENT),
        ("ok", "file://relative/x.mp3", grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            client.register_stream(name, url)
        assert err.value.code() == code
    client.register_stream("twice", "http://127.0.0.1:9/a.mp3")
    assert client.register_stream("twice", "http://127.0.0.1:9/a.mp3").name == "twice"
    with pytest.raises(grpc.RpcError) as err:
        client.register_stream("twice", "http://127.0.0.1:9/b.mp3")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "twice" in [s.name for s in client.streams()]
    client.remove_stream("twice")
    assert "twice" not in [s.name for s in client.streams()]
    with pytest.raises(grpc.RpcError) as err:
        client.remove_stream("twice")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


class LiveShow:
    """An Icecast-like live stream of an MP3: a listener joins wherever the show is now."""

    def __init__(self, mp3: bytes, bytes_per_s: int) -> None:
        self.mp3 = mp3
        self.bytes_per_s = bytes_per_s
        show = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                self.end_headers()
                sent = show.position()  # joins the show where it is now
                try:
                    while sent < len(show.mp3):
                        due = min(show.position(), len(show.mp3))
                        if due > sent:
                            self.wfile.write(show.mp3[sent:due])
                            self.wfile.flush()
                            sent = due
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.mp3"
        self.started = time.time()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def position(self) -> int:
        return int((time.time() - self.started) * self.bytes_per_s)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def _at(show: LiveShow, seconds: float) -> float:
    return show.started + seconds


async def _last_event(nats_url: str, name: str) -> events_pb2.StreamEvent:
    nc = await nats.connect(nats_url)
    try:
        msg = await nc.jetstream().get_last_msg("EARMARK", f"earmark.monitor.{name}")
        return events_pb2.StreamEvent.FromString(msg.data)
    finally:
        await nc.close()


def test_a_killed_monitor_is_replaced_and_no_play_is_logged_twice(
    stack: StackInfo, client: Earmark, catalog: dict[int, str]
) -> None:
    home = Path(stack.home)
    show_audio = np.concatenate(
        [_silence(1), _excerpt(710, 0, 38), _silence(2), _excerpt(712, 5, 19), _silence(2)]
    )  # 710 at 1-39 s, 712 (from 5 s in) at 41-55 s
    live = LiveShow(encode(show_audio, "mp3", bitrate="128k"), bytes_per_s=16000)
    try:
        client.register_stream("radio-crash", live.url)

        def plays() -> list[Play]:
            return list(client.plays("radio-crash"))

        _wait_for(lambda: plays(), 30, "the first play was not logged")
        holder = next(s.watched_by for s in client.streams() if s.name == "radio-crash")
        assert holder
        info = read_info(home)
        assert info is not None
        os.kill(int(info.services["monitor"]["pid"]), signal.SIGKILL)
        killed_at = time.time() - live.started
        restart_service(home, "monitor")
        _wait_for(
            lambda: (
                next(s.watched_by for s in client.streams() if s.name == "radio-crash")
                not in ("", holder)
            ),
            40,
            "no replica took the stream over",
        )
        # Let the show end, and the last play end with it.
        _wait_for(
            lambda: time.time() > _at(live, 56) and not any(p.playing for p in plays()),
            60,
            "the last play did not end",
        )
        logged = plays()
    finally:
        live.close()
        client.remove_stream("radio-crash")

    assert killed_at < 30  # the kill came while 710 played
    assert [p.track_id for p in logged] == [catalog[710], catalog[712]]
    first, second = logged
    assert first.started_at == pytest.approx(_at(live, 1.0), abs=2.0)
    # One play, extended by the replica that took over after the kill.
    assert first.ended_at == pytest.approx(_at(live, 39.0), abs=2.5)
    # Offsets within 1 s (issue 3's tolerance for start times): on a loaded
    # 2-core CI runner the first window can be answered 0.51 s into the track.
    assert first.track_offset_s == pytest.approx(0.0, abs=1.0)
    assert second.started_at == pytest.approx(_at(live, 41.0), abs=2.0)
    assert second.track_offset_s == pytest.approx(5.0, abs=1.0)
    assert not second.playing
    # Plays of that hour, and none before it.
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert len(list(client.plays("radio-crash", since=hour_ago))) == 2
    assert list(client.plays("radio-crash", until=hour_ago)) == []
    # Events went out on NATS as they happened.
    last = asyncio.run(_last_event(stack.nats_url, "radio-crash"))
    assert last.stream_name == "radio-crash"
    assert last.event.type == search_pb2.MONITOR_EVENT_TYPE_ENDED
    assert last.play_id == second.play_id


def test_event_results_are_plain_values(client: Earmark, catalog: dict[int, str]) -> None:
    pcm = (_excerpt(713, 0, 8) * 32767).astype("<i2").tobytes()
    events = list(client.monitor([pcm], sample_rate_hz=SR))
    assert events and all(isinstance(e, MonitorEvent) for e in events)
    assert events[0].to_json()["type"] == "STARTED"


def test_cli_monitors_a_file_and_lists_streams(
    stack: StackInfo, catalog: dict[int, str], tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp3"
    clip.write_bytes(encode(_excerpt(712, 3, 18), "mp3", bitrate="128k"))
    env = {
        **os.environ,
        "EARMARK_SEARCH_ADDR": stack.addr("search"),
        "EARMARK_MONITOR_ADDR": stack.addr("monitor"),
    }

    def earmark(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "earmark.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout

    lines = earmark("monitor", str(clip), "--fast", "--json").splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events if e["type"] != "PLAYING"] == ["STARTED", "ENDED"]
    assert events[0]["track_id"] == catalog[712]
    assert events[0]["track_offset_s"] == pytest.approx(3.0, abs=0.3)
    assert "Monitor 712" in earmark("monitor", str(clip), "--fast")
    earmark("streams", "add", "cli-radio", "http://127.0.0.1:9/stream.mp3")
    listed = [json.loads(line) for line in earmark("streams", "list", "--json").splitlines()]
    assert "cli-radio" in [s["name"] for s in listed]
    assert earmark("plays", "cli-radio", "--since", "1h", "--json") == ""
    earmark("streams", "remove", "cli-radio")
