"""Event time against hostile clocks (issue 13): one event, or one producer, cannot move it
for everyone; implausible timestamps are dead-lettered with what was wrong; no float crashes
anything; the window input stopped in is not scored."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import Config, load_config
from detector.core.alert import alert_record
from detector.core.pipeline import Pipeline
from detector.core.stage1 import Stage1
from tests.traffic import T0, stream


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(None, env=False)


def _event(ts: float, **kw: Any) -> bytes:
    return orjson.dumps({"ts": ts, "operation": "chat", "tenant": "acme", "app": "agent",
                         "trace_id": "ab" * 16, **kw})


def _replay(config: Config, msgs: list[bytes]) -> tuple[Pipeline, list[dict[str, Any]]]:
    pipe = Pipeline(config)
    alerts: list[dict[str, Any]] = []
    for i in range(0, len(msgs), 256):    # blocks, as `detector replay` feeds them
        alerts += map(alert_record, pipe.feed_many(msgs[i:i + 256]))
    return pipe, alerts + [alert_record(a) for a in pipe.finish()]


def _incident(m: int, c: dict[str, str]) -> dict[str, Any]:
    return {"refusal": 0.3, "unauthorized": 1} if 30 <= m < 34 else {}


def test_a_wild_event_early_in_a_recording_changes_no_alert(config: Config) -> None:
    """A year ahead and in milliseconds, early: both dead-lettered with what was wrong, no
    event late, and the same alerts as without them (e45989b: every later event was late)."""
    msgs = list(stream(40, effect=_incident))
    clean_pipe, clean = _replay(config, msgs)
    year = _event(T0 + 300 + 365 * 86400)
    ms = _event((T0 + 300) * 1000)
    pipe, alerts = _replay(config, [*msgs[:1000], year, ms, *msgs[1000:]])
    assert pipe.late == clean_pipe.late == 0
    assert alerts == clean and any(a["signal"] == "refusal_rate" for a in alerts)
    ahead, unit = sorted(r.detail for r in pipe.rejects)
    assert re.fullmatch(r"\d+ s ahead of event time 2026-01-05T00:0\d:\d\dZ: more than 60 s"
                        r" ahead, not corroborated", ahead)
    assert unit.startswith("looks like milliseconds since the epoch")
    assert {r.reason for r in pipe.rejects} == {"bad_timestamp"}


def test_one_message_of_many_events_ahead_is_one_producer_not_a_quorum(config: Config) -> None:
    """A batch is one producer's word: a hundred events 4 minutes ahead in one message do not
    corroborate each other (votes are messages); they are dead-lettered, nothing is late."""
    msgs = list(stream(20))
    batch = b"[" + b",".join(_event(T0 + 300 + 240 + i / 10) for i in range(100)) + b"]"
    pipe, _ = _replay(config, [*msgs[:1500], batch, *msgs[1500:]])
    assert pipe.late == 0 and pipe.decoded == len(msgs)
    assert len(pipe.rejects) == 100
    assert all("ahead of event time" in r.detail for r in pipe.rejects)


def test_the_very_first_event_cannot_set_event_time_alone(config: Config) -> None:
    msgs = list(stream(20))
    pipe, _ = _replay(config, [_event(T0 + 365 * 86400), *msgs])
    assert pipe.late == 0 and pipe.decoded == len(msgs)
    assert [r.reason for r in pipe.rejects] == ["bad_timestamp"]


def test_a_producer_minutes_ahead_does_not_move_a_live_partition(config: Config) -> None:
    """`detector run`: one producer of ten stamping 4 minutes ahead passes the wall-clock bound
    (input.max_future_seconds, 300 s) but not the event clock: its events are dead-lettered,
    the partition's watermark stays with the others and none of theirs is late."""
    msgs = list(stream(30))
    skewed = [_event(orjson.loads(m)["ts"] + 240) for m in msgs[::10]]
    mixed = [x for i, m in enumerate(msgs) for x in ([m, skewed[i // 10]] if i % 10 == 0 else [m])]
    now, wild = [T0], set(skewed)
    live = Stage1(config, clock=lambda: now[0])
    out = []
    for i in range(0, len(mixed), 50):   # caught up: each fetch read a moment after it was sent
        now[0] = max(orjson.loads(m)["ts"] for m in mixed[i:i + 50] if m not in wild) + 0.5
        out.append(live.feed_many(mixed[i:i + 50]))
        live.drain()                     # as the runner does at each flush
    assert sum(o.late for o in out) == 0
    assert sum(o.decoded for o in out) == len(msgs)
    rejects = [r for o in out for r in o.rejects]
    assert len(rejects) >= len(skewed) - 1   # the last may still be held
    assert all("ahead of event time" in r.detail for r in rejects)
    assert live.wm.time <= now[0] - config.windows.allowed_lateness_seconds


@pytest.mark.parametrize(("ts", "detail"), [
    (1.7976931348623157e308, "after 2100-01-01"),
    ((T0 + 1) * 1e3, "looks like milliseconds since the epoch"),
    ((T0 + 1) * 1e6, "looks like microseconds since the epoch"),
    ((T0 + 1) * 1e9, "looks like nanoseconds since the epoch"),
    (86400.0, "before 2000-01-01"),
])
def test_an_implausible_timestamp_is_dead_lettered_with_what_is_wrong(
        config: Config, ts: float, detail: str) -> None:
    """The float maximum crashed replay on e45989b (ValueError: NaN to integer)."""
    msgs = list(stream(3))
    pipe, _ = _replay(config, [*msgs[:100], _event(ts), *msgs[100:]])
    assert [(r.reason, r.field, r.detail.split(" (")[0]) for r in pipe.rejects] == [
        ("bad_timestamp", "ts", detail)]
    assert pipe.decoded == len(msgs) and pipe.late == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, allow_nan=False, allow_infinity=False), max_size=8))
def test_no_float_timestamp_crashes_or_loses_another_event(tss: list[float]) -> None:
    config = load_config(None, env=False)
    msgs = list(stream(2, per_minute=20))
    wild = [_event(t) for t in tss]
    pipe, _ = _replay(config, [*msgs[:5], *wild, *msgs[5:]])
    assert pipe.decoded + len(pipe.rejects) == len(msgs) + len(wild)   # every event accounted
    assert pipe.late == 0


def test_traffic_resuming_after_a_silence_is_believed(config: Config) -> None:
    """A jump that most traffic agrees on is corroborated at once: nothing rejected."""
    before = list(stream(25))
    after = list(stream(25, start=T0 + 30 * 86400, seed=2))
    pipe, _ = _replay(config, [*before, *after])
    assert pipe.rejects == [] and pipe.late == 0
    assert pipe.decoded == len(before) + len(after)


def test_a_recording_of_fewer_events_than_the_quorum_is_counted(config: Config) -> None:
    """At end of input held events that nothing contradicts are believed: a hard rule fires."""
    pipe, alerts = _replay(config, [_event(T0 + 5, operation="execute_tool", tool_name="x",
                                           tool_authorized=False)])
    assert pipe.rejects == [] and pipe.decoded == 1
    assert [a["signal"] for a in alerts] == ["unauthorized_tool_call"]


def test_input_cut_mid_window_does_not_score_that_window(config: Config) -> None:
    """A recording that stops half-way through a window gives the alerts of one that stops at
    the window before (e45989b scored the cut window: volume looked like a drop)."""
    msgs = list(stream(45))
    whole = [m for m in msgs if orjson.loads(m)["ts"] < T0 + 44 * 60]   # minutes 0-43
    cut = [m for m in msgs if orjson.loads(m)["ts"] < T0 + 44 * 60 + 30]  # and half of 44
    assert _replay(config, cut)[1] == _replay(config, whole)[1]


def test_replay_dead_letters_what_the_clock_still_holds_at_the_end(tmp_path: Path) -> None:
    lines = [*stream(5), _event(T0 + 365 * 86400)]
    src, dlq = tmp_path / "t.jsonl", tmp_path / "dead.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    subprocess.run([sys.executable, "-m", "detector.cli", "replay", str(src), "--quiet",
                    "--alerts-out", str(tmp_path / "a.jsonl"), "--dead-letter", str(dlq)],
                   check=True)
    [dead] = [orjson.loads(x) for x in dlq.read_bytes().splitlines()]
    assert dead["reason"] == "bad_timestamp" and "(end of input)" in dead["detail"]


def test_a_timestamp_rejection_names_its_own_message(config) -> None:
    """The dead letter's source is the message that carried the bad timestamp, not the first
    of the fetch, and the payload is bounded like every dead letter's."""
    from detector.core.stage1 import Stage1
    good = b'{"ts": 1767571200, "operation": "chat", "tenant": "t"}'
    long_tenant = "x" * 100 + "MARKER"
    bad = (b'{"ts": 1767571200123, "operation": "chat", "tenant": "%s"}'
           % long_tenant.encode())
    out = Stage1(config).feed_many([good, good, bad, good, good])
    (rej,) = out.rejects
    assert rej.reason == "bad_timestamp" and rej.message == 2
    assert "milliseconds" in rej.detail and b"MARKER" not in rej.to_json()
