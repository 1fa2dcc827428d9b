"""Live monitoring without servers: incremental landmarks, the tracker's events, the play
log rules."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools

import numpy as np
import pytest

from bench.music_check_data import mock
from bench.synthetic import song
from earmark.monitor_cli import parse_moment
from earmark.v1 import common_pb2, search_pb2
from earmark_fingerprint import landmarks as fp
from earmark_monitor.playlog import (
    CONTINUATION_GAP_S,
    LoggedPlay,
    StreamClock,
    continues,
    record_of,
    stream_subject,
)
from earmark_search import live_landmarks
from earmark_search.live_landmarks import LiveLandmarks
from earmark_search.monitoring import EventKind, StreamTracker, TrackerEvent, TrackerSettings

SR = fp.SAMPLE_RATE_HZ
FPS = fp.FRAME_RATE_HZ
Postings = tuple[np.ndarray, np.ndarray, np.ndarray]


def _pcm(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


def _live_hops(
    pcm: np.ndarray, extract: object, chunk_sizes: np.ndarray
) -> list[tuple[list[tuple[int, int]], set[tuple[int, int]]]]:
    """Per hop: (the landmarks that became final, the tail), as (hash, stream frame)."""
    live = LiveLandmarks(hop_s=1.0)
    hops: list[tuple[list[tuple[int, int]], set[tuple[int, int]]]] = []

    def hop(window: live_landmarks.ExtractionWindow) -> None:
        lm = extract(window.samples.astype(np.float32) / 32768)  # type: ignore[operator]
        got = live.accept(window, lm.hashes, lm.times)
        final = list(zip(got.hashes.tolist(), got.times.tolist(), strict=True))
        tail = set(zip(got.tail_hashes.tolist(), got.tail_times.tolist(), strict=True))
        hops.append((final, tail))

    pos = 0
    for size in chunk_sizes:
        live.push(pcm[pos : pos + size])
        pos += size
        if live.ready():
            window = live.window()
            assert window is not None
            hop(window)
    last = live.window(flush=True)
    if last is not None:
        hop(last)
    return hops


@pytest.mark.parametrize("extract", [fp.extract_landmarks, fp.extract_query_landmarks])
def test_live_landmarks_are_the_whole_recordings_each_once(extract: object) -> None:
    pcm = _pcm(song(5, seconds=30, sample_rate=SR))
    whole = extract(pcm.astype(np.float32) / 32768)  # type: ignore[operator]
    expected = sorted(zip(whole.hashes.tolist(), whole.times.tolist(), strict=True))
    sizes = np.random.default_rng(0).integers(100, 7000, size=pcm.size // 100)
    hops = _live_hops(pcm, extract, sizes)
    got = [landmark for final, _tail in hops for landmark in final]
    assert len(got) == len(set(got))  # nothing counted twice
    assert sorted(got) == expected
    # A hop's tail never repeats what is final already, and mostly turns out right.
    reported: set[tuple[int, int]] = set()
    for final, tail in hops:
        reported.update(final)
        assert not tail & reported
    tails = set().union(*(tail for _final, tail in hops))
    assert len(tails & set(expected)) > 0.8 * len(tails)


def test_live_landmarks_arrive_about_a_second_after_the_audio() -> None:
    pcm = _pcm(song(6, seconds=20, sample_rate=SR))
    live = LiveLandmarks(hop_s=1.0)
    lags = []
    for start in range(0, pcm.size, SR):
        live.push(pcm[start : start + SR])
        window = live.window()
        assert window is not None
        lm = fp.extract_landmarks(window.samples.astype(np.float32) / 32768)
        t = live.accept(window, lm.hashes, lm.times).times
        if t.size and start > 5 * SR:
            lags.append(live.seconds - float(np.median(t)) / FPS)
    assert 0.5 < float(np.median(lags)) < 2.0


def test_live_landmarks_mirror_the_fingerprinter() -> None:
    assert live_landmarks.SAMPLE_RATE_HZ == fp.SAMPLE_RATE_HZ
    assert live_landmarks.HOP_SAMPLES == fp.HOP
    assert live_landmarks.N_FFT == fp.N_FFT
    assert live_landmarks.DT_MAX == fp.DT_MAX
    assert live_landmarks.FRAME_RATE_HZ == fp.FRAME_RATE_HZ
    assert live_landmarks.DT_MASK == (1 << fp.DF_SHIFT) - 1


# ------------------------------------------------------------------- the tracker


class Catalog:
    """Songs 1..n indexed in memory, as the catalog's postings lookup returns them."""

    def __init__(self, seeds: list[int], seconds: float = 40.0) -> None:
        rows = []
        self.audio = {}
        for key, seed in enumerate(seeds, start=1):
            audio = song(seed, seconds=seconds, sample_rate=SR)
            self.audio[key] = audio
            lm = fp.extract_landmarks(audio)
            rows.append((lm.hashes.astype(np.int64), np.full(lm.hashes.size, key), lm.times))
        ph, pk, pt = (np.concatenate(c) for c in zip(*rows, strict=True))
        order = np.argsort(ph, kind="stable")
        self._h, self._k, self._t = ph[order], pk[order], pt[order].astype(np.int64)

    def postings(self, hashes: np.ndarray) -> Postings:
        unique = np.unique(hashes.astype(np.int64))
        lo = np.searchsorted(self._h, unique)
        hi = np.searchsorted(self._h, unique, side="right")
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)] or [[]])
        idx = idx.astype(np.int64)
        return self._h[idx].astype(np.uint32), self._k[idx], self._t[idx]


def monitor(
    show: np.ndarray, catalog: Catalog, settings: TrackerSettings | None = None
) -> list[tuple[float, TrackerEvent]]:
    """(stream seconds when decided, event) for a show fed in 0.25 s chunks."""
    live = LiveLandmarks(hop_s=1.0)
    tracker = StreamTracker(FPS, settings or TrackerSettings())
    events: list[tuple[float, TrackerEvent]] = []

    def hop(window: live_landmarks.ExtractionWindow) -> None:
        lm = fp.extract_query_landmarks(window.samples.astype(np.float32) / 32768)
        hop = live.accept(window, lm.hashes, lm.times)
        postings = catalog.postings(np.concatenate([hop.hashes, hop.tail_hashes]))
        decided = tracker.update(
            hop.hashes, hop.times, postings, live.settled_frame, hop.tail_hashes, hop.tail_times
        )
        events.extend((live.seconds, e) for e in decided)

    pcm = _pcm(show)
    for start in range(0, pcm.size, SR // 4):
        live.push(pcm[start : start + SR // 4])
        while live.ready():
            window = live.window()
            assert window is not None
            hop(window)
    last = live.window(flush=True)
    if last is not None:
        hop(last)
    events.extend((live.seconds, e) for e in tracker.finish())
    return events


def _excerpt(catalog: Catalog, key: int, a: float, b: float) -> np.ndarray:
    return catalog.audio[key][int(a * SR) : int(b * SR)]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog([10, 11, 12, 13, 14])


def _of(events: list[tuple[float, TrackerEvent]], kind: EventKind) -> list[TrackerEvent]:
    return [e for _, e in events if e.kind is kind]


def test_a_show_gives_one_play_per_track_with_start_times(catalog: Catalog) -> None:
    silence = np.zeros(SR, dtype=np.float32)
    gap = np.zeros(2 * SR, dtype=np.float32)
    stranger = song(900, seconds=20, sample_rate=SR)  # music not in the catalog
    noise = 0.2 * np.random.default_rng(1).standard_normal(6 * SR).astype(np.float32)
    parts = [
        silence,  # 0-1
        _excerpt(catalog, 1, 5, 30),  # 1-26: track 1 from 5 s
        gap,  # 26-28
        _excerpt(catalog, 2, 0, 25),  # 28-53
        stranger,  # 53-73
        _excerpt(catalog, 3, 2, 27),  # 73-98
        noise,  # 98-104
        _excerpt(catalog, 4, 0, 30),  # 104-134, then a 3 s crossfade into track 5
    ]
    show = np.concatenate(parts)
    fade = 3 * SR
    ramp = np.linspace(0, 1, fade, dtype=np.float32)
    incoming = _excerpt(catalog, 5, 0, 25)
    show[-fade:] = show[-fade:] * ramp[::-1] + incoming[:fade] * ramp
    show = np.concatenate([show, incoming[fade:]])  # track 5 louder from 132.5 s
    events = monitor(show, catalog)

    started = _of(events, EventKind.STARTED)
    ended = _of(events, EventKind.ENDED)
    assert [e.track_key for e in started] == [1, 2, 3, 4, 5]
    assert [e.track_key for e in ended] == [1, 2, 3, 4, 5]
    expected = [(1.0, 5.0), (28.0, 0.0), (73.0, 2.0), (104.0, 0.0), (132.5, 1.5)]
    for event, (start_s, offset_s) in zip(started, expected, strict=True):
        assert event.start_frame / FPS == pytest.approx(start_s, abs=2.0)
        assert (event.start_frame + event.alignment) / FPS == pytest.approx(
            offset_s + event.start_frame / FPS - start_s, abs=0.2
        )
    for event, end_s in zip(ended[:3], [26.0, 53.0, 98.0], strict=True):
        assert event.end_frame / FPS == pytest.approx(end_s, abs=1.5)
    # Each STARTED is decided within seconds of the track's start.
    decided = [when for when, e in events if e.kind is EventKind.STARTED]
    for when, (start_s, _offset) in zip(decided, expected, strict=True):
        assert 0 < when - start_s <= 6.0
    # Every play's events share its number, in the order STARTED, PLAYING..., ENDED.
    for play in {e.play for e in started}:
        kinds = [e.kind for _, e in events if e.play == play]
        assert kinds[0] is EventKind.STARTED and kinds[-1] is EventKind.ENDED
        assert set(kinds[1:-1]) <= {EventKind.PLAYING}
    # The stranger's 20 s are reported as unknown audio, from where track 2 ended.
    unknown = _of(events, EventKind.UNKNOWN)
    assert unknown and unknown[0].start_frame / FPS == pytest.approx(53.0, abs=1.5)


def test_out_of_catalog_music_and_speech_start_no_track(catalog: Catalog) -> None:
    show = np.concatenate(
        [song(901, seconds=40, sample_rate=SR), mock("speech", 3, 25.0), song(902, 30, SR)]
    )
    events = monitor(show, catalog)
    assert _of(events, EventKind.STARTED) == []
    assert _of(events, EventKind.UNKNOWN)


def test_a_dropout_inside_a_track_does_not_split_the_play(catalog: Catalog) -> None:
    track = _excerpt(catalog, 2, 0, 36).copy()
    track[15 * SR : 19 * SR] = 0.0  # 4 s of silence (a talk-over, a stream glitch)
    events = monitor(track, catalog)
    assert [e.kind for _, e in events if e.kind is not EventKind.PLAYING] == [
        EventKind.STARTED,
        EventKind.ENDED,
    ]


def test_a_track_played_twice_is_two_plays(catalog: Catalog) -> None:
    take = _excerpt(catalog, 3, 0, 15)
    show = np.concatenate([take, np.zeros(12 * SR, dtype=np.float32), take])
    events = monitor(show, catalog)
    started = _of(events, EventKind.STARTED)
    assert [e.track_key for e in started] == [3, 3]
    assert started[1].start_frame / FPS == pytest.approx(27.0, abs=1.0)
    assert started[0].play != started[1].play


def test_playing_reports_follow_the_interval(catalog: Catalog) -> None:
    events = monitor(_excerpt(catalog, 4, 0, 40), catalog, TrackerSettings(report_interval_s=5))
    playing = [when for when, e in events if e.kind is EventKind.PLAYING]
    assert len(playing) >= 6
    assert all(4.0 <= b - a <= 6.0 for a, b in itertools.pairwise(playing))


def test_silence_gives_no_events(catalog: Catalog) -> None:
    assert monitor(np.zeros(30 * SR, dtype=np.float32), catalog) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"window_s": 1.0}, {"confirmations": 0}, {"report_interval_s": 0.0}, {"end_gap_s": -1}],
)
def test_tracker_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TrackerSettings(**kwargs)  # type: ignore[arg-type]


# -------------------------------------------------------------- the play log rules


def _started(start_s: float, offset_s: float, track_id: str = "t-1") -> search_pb2.MonitorEvent:
    return search_pb2.MonitorEvent(
        type=search_pb2.MONITOR_EVENT_TYPE_STARTED,
        track=common_pb2.Track(track_id=track_id, metadata=common_pb2.TrackMetadata(title="A")),
        start_s=start_s,
        end_s=start_s + 3,
        track_offset_s=offset_s,
        confidence=0.9,
        play=1,
    )


def test_a_takeover_mid_song_continues_the_logged_play() -> None:
    first = record_of(_started(10.0, 0.0), StreamClock(1_000.0))
    logged = LoggedPlay("p-1", first.track_id, first.track_zero, first.ended_at)
    # Another replica joins the stream 40 s later and hears the song 32 s in.
    later = record_of(_started(2.0, 32.5), StreamClock(1_040.0))
    assert later.track_zero - first.track_zero == dt.timedelta(seconds=-0.5)
    assert continues(logged, later)
    # The same song played again from the top is another play.
    again = record_of(_started(2.0, 0.0), StreamClock(1_300.0))
    assert not continues(logged, again)
    # So is another track, and a resumption after too long a gap.
    assert not continues(logged, record_of(_started(2.0, 32.5, "t-2"), StreamClock(1_040.0)))
    far = record_of(_started(2.0, 32.5 + CONTINUATION_GAP_S), StreamClock(1_040.0 + 200))
    assert not continues(logged, far)


def test_an_ended_event_closes_the_play() -> None:
    event = _started(10.0, 0.0)
    event.type = search_pb2.MONITOR_EVENT_TYPE_ENDED
    record = record_of(event, StreamClock(0.0))
    assert not record.playing
    assert record.ended_at - record.started_at == dt.timedelta(seconds=3)


def test_stream_names_are_subject_tokens() -> None:
    assert stream_subject("radio-1_fm") == "earmark.monitor.radio-1_fm"
    for bad in ["", "a.b", "a b", "a>", "x" * 65]:
        with pytest.raises(ValueError):
            stream_subject(bad)


def test_plays_since_takes_ages_and_iso_times() -> None:
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_moment("90m", now) == now - dt.timedelta(minutes=90)
    assert parse_moment("2d", now) == now - dt.timedelta(days=2)
    assert parse_moment("now", now) == now
    assert parse_moment("2024-05-01T10:00:00+00:00") == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_moment("yesterday-ish", now)
