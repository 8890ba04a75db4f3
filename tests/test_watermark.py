"""The event-time watermark (detector/core/watermark.py): one source's, the one over sources,
and what stage 1 and the stream make of it."""

from __future__ import annotations

import math

import msgspec
import orjson

from detector.config import Config
from detector.core.aggregator import Aggregator
from detector.core.events import decode
from detector.core.stage1 import Stage1
from detector.core.watermark import SourceMark, Watermark, Watermarks, WatermarksState
from detector.stream.stage1_runner import Envelope, decode_envelope, encode_envelope

T0 = 1_767_571_200.0   # 2026-01-05T00:00:00Z, a window boundary for 60 s windows


def _msg(ts: float, app: str = "a") -> bytes:
    return orjson.dumps({"ts": ts, "operation": "chat", "app": app})


def test_a_source_closes_a_window_once_its_end_is_a_lateness_behind(config: Config) -> None:
    agg = Aggregator(config)
    size, lateness = config.windows.size_seconds, config.windows.allowed_lateness_seconds
    agg.add(decode(_msg(T0 + lateness + 1))[0][0])
    assert agg.drain() == [] and agg.wm.closed == T0          # closes the empty past
    agg.add(decode(_msg(T0 + size + lateness - 0.5))[0][0])   # window 0's end + lateness - 0.5
    assert not agg.wm.due() and agg.drain() == []
    agg.add(decode(_msg(T0 + size + lateness))[0][0])
    assert agg.wm.due()
    assert {p.window for p in agg.drain()} == {int(T0 // size)}
    assert agg.wm.closed == T0 + size


def test_a_late_event_is_counted_late_and_moves_nothing(config: Config) -> None:
    agg = Aggregator(config)
    size, lateness = config.windows.size_seconds, config.windows.allowed_lateness_seconds
    agg.add(decode(_msg(T0 + 2 * size + lateness))[0][0])
    agg.drain()                                         # windows 0 and 1 closed
    before = agg.wm.snapshot()
    agg.add(decode(_msg(T0 + size - 1))[0][0])           # window 0: late
    agg.add(decode(_msg(T0 + 2 * size + 1))[0][0])       # window 2, within lateness: counted
    assert agg.late == 1
    assert agg.wm.snapshot() == before
    assert agg.drain() == []


def test_a_timestamp_far_ahead_moves_no_watermark(config: Config) -> None:
    """The event clock holds (then dead-letters) a year-ahead timestamp: no window closes by it
    and the events after it are not late."""
    s1 = Stage1(config)
    s1.feed_many([_msg(T0 + i) for i in range(5)])
    before = s1.wm.time
    out = s1.feed_many([_msg(T0 + 365 * 86400)])
    assert (out.decoded, out.rejects, s1.wm.time) == (0, [], before)   # held, not believed
    assert s1.drain() == []
    out = s1.feed_many([_msg(T0 + 5 + i) for i in range(5)])
    assert (out.decoded, out.late, [r.reason for r in out.rejects]) == (5, 0, ["bad_timestamp"])
    assert s1.wm.time == T0 + 9 - config.windows.allowed_lateness_seconds


def test_an_idle_source_does_not_hold_the_others_back() -> None:
    ws = Watermarks(idle_timeout=20.0, born=0.0)
    ws.report({0: SourceMark(180.0, False, 215.0)}, n_src=3)
    assert ws.watermark(now=19.0) is None                 # 1 and 2 not heard from yet
    assert ws.watermark(now=20.0) == 180.0                # ... for the idle timeout
    ws.report({1: SourceMark(60.0, False, 100.0), 2: SourceMark(120.0, False, 150.0)}, 3)
    assert (ws.watermark(5.0), ws.event_time(5.0)) == (60.0, 100.0)
    ws.report({1: SourceMark(60.0, True, 100.0)}, 3)      # read to its end, quiet
    assert (ws.watermark(5.0), ws.event_time(5.0)) == (120.0, 150.0)
    ws.report({0: SourceMark(180.0, True, 215.0), 2: SourceMark(120.0, True, 150.0)}, 3)
    assert ws.watermark(5.0) == 180.0                     # all idle: everything is closed


def test_a_source_mark_never_goes_back() -> None:
    """A partition's new owner starts from nothing; stage 2 keeps what it was told."""
    ws = Watermarks(idle_timeout=20.0, born=0.0)
    ws.report({0: SourceMark(120.0, False, 170.0)}, n_src=1)
    ws.report({0: SourceMark(-math.inf, False, -math.inf)}, n_src=1)
    assert (ws.watermark(0.0), ws.event_time(0.0)) == (120.0, 170.0)


def test_a_watermark_restored_from_its_snapshot_goes_on_alike() -> None:
    a = Watermark(60.0, 30.0)
    a.max_ts = T0 + 100
    a.close()
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(a.snapshot()), type=type(a.snapshot()))
    b = Watermark.build(60.0, 30.0, state)
    assert (b.time, b.closed, b.due()) == (a.time, a.closed, a.due())
    for w in (a, b):
        w.max_ts = T0 + 400
    assert a.close() == b.close() == int((T0 + 370) // 60)
    fresh = Watermark.build(60.0, 30.0, None)
    assert (fresh.time, fresh.close()) == (-math.inf, None)


def test_the_watermark_over_sources_restored_from_its_snapshot_goes_on_alike() -> None:
    ws = Watermarks(idle_timeout=20.0, born=0.0)
    ws.report({0: SourceMark(120.0, False, 170.0), 1: SourceMark(60.0, True, 90.0)}, n_src=3)
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(ws.snapshot()), type=WatermarksState)
    back = Watermarks.build(20.0, 0.0, state)
    for now in (5.0, 25.0):
        assert back.watermark(now) == ws.watermark(now)
    back.report({2: SourceMark(90.0, False, 95.0)}, 3)
    assert back.watermark(5.0) == 90.0


def test_the_envelope_source_entry_is_the_same_three_array_on_the_wire() -> None:
    """A worker of the code before SourceMark reads this code's envelopes and the reverse
    (a rolling upgrade shares the stage-2 topic)."""
    new = Envelope({3: SourceMark(120.0, True, 171.5)}, 4, [], [])
    old = msgspec.msgpack.encode([{3: (120.0, True, 171.5)}, 4, [], []])
    assert encode_envelope(new) == old
    assert decode_envelope(old).sources == {3: SourceMark(120.0, True, 171.5)}


def test_an_envelope_carries_a_partitions_reports_and_only_then_a_fifth_field() -> None:
    """Stage-2 partitions exchange their per-window reports in envelopes (decision 0010);
    stage 1's envelopes, which carry none, keep the four fields older workers read."""
    env = Envelope({}, 0, [], [], [b"report of window 7"])
    assert decode_envelope(encode_envelope(env)).reports == [b"report of window 7"]
    plain = encode_envelope(Envelope({}, 0, [], []))
    assert len(msgspec.msgpack.decode(plain)) == 4
    assert decode_envelope(plain).reports == []
