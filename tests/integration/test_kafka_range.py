"""`replay --kafka` / `backtest --kafka` on the real (Tansu) broker: a time range read by
offsets gives the alerts that replaying the same events from a file gives, and nothing outside
the range is read."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from detector.lab.broker import Tansu

pytestmark = pytest.mark.integration

DETECTOR = [sys.executable, "-m", "detector.cli"]


def _stamp(line: bytes, previous: int) -> int:
    """The event time of a line in ms (of a batch's first event); the previous one for a
    malformed line."""
    try:
        doc = orjson.loads(line)
        ev = doc[0] if isinstance(doc, list) else doc
        ts = ev["ts"]
        if isinstance(ts, str):
            return int(datetime.fromisoformat(ts).timestamp() * 1000)
        return int(float(ts) * 1000)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return previous


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def test_a_time_range_replays_as_the_same_events_from_a_file(
        broker: Tansu, names: dict[str, str], spike_sim: Path, tmp_path: Path) -> None:
    lines = (spike_sim / "traces.jsonl").read_bytes().splitlines()
    stamps: list[int] = []
    for line in lines:
        stamps.append(_stamp(line, stamps[-1] if stamps else 0))
    topic = names["traces_topic"]
    broker.create_topics([topic], partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20,
                             batch_size=256 * 1024)
    try:
        for line, ts in zip(lines, stamps, strict=True):
            producer.send(topic, line, timestamp_ms=ts)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    # From 10 minutes in (the secret leak's hard-rule event is inside) to 10 before the end.
    since, until = stamps[0] + 600_000, stamps[-1] - 600_000
    # offsets by time: the first record stamped at or after each bound (stamps are not
    # monotonic: late events), exactly what offsets_for_times answers
    first = next(i for i, t in enumerate(stamps) if t >= since)
    last = next(i for i, t in enumerate(stamps) if t >= until)
    assert 0 < first < last < len(lines)
    ranged = tmp_path / "range.jsonl"
    ranged.write_bytes(b"\n".join(lines[first:last]) + b"\n")

    from_file = tmp_path / "file.jsonl"
    from_kafka = tmp_path / "kafka.jsonl"
    dlq_file, dlq_kafka = tmp_path / "file.dlq", tmp_path / "kafka.dlq"
    r = subprocess.run([*DETECTOR, "replay", str(ranged), "--alerts-out", str(from_file),
                        "--dead-letter", str(dlq_file), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*DETECTOR, "replay", "--kafka", "--brokers", broker.bootstrap,
                        "--topic", topic, "--since", _iso(since), "--until", _iso(until),
                        "--alerts-out", str(from_kafka), "--dead-letter", str(dlq_kafka)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "events decoded" in r.stderr
    alerts = from_file.read_bytes()
    assert alerts.count(b"\n") >= 3 and b'"secret_leak"' in alerts
    assert from_kafka.read_bytes() == alerts
    assert dlq_kafka.read_bytes() == dlq_file.read_bytes()
    # the whole file pages more than the range (the range really is cut)
    r = subprocess.run([*DETECTOR, "replay", str(spike_sim / "traces.jsonl"), "--quiet"],
                       capture_output=True, timeout=300)
    assert r.returncode == 0 and r.stdout != alerts

    # backtest reads the same range (spooled once, replayed per pass)
    js = tmp_path / "bt.json"
    r = subprocess.run([*DETECTOR, "backtest", "--kafka", "--brokers", broker.bootstrap,
                        "--topic", topic, "--since", _iso(since), "--until", _iso(until),
                        "--out", str(tmp_path / "bt.html"), "--json", str(js)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ids = {orjson.loads(line)["id"] for line in alerts.splitlines()}
    assert {a["id"] for a in orjson.loads(js.read_bytes())["configs"][0]["alerts"]} == ids


def test_a_missing_topic_is_a_clear_error(broker: Tansu) -> None:
    r = subprocess.run([*DETECTOR, "replay", "--kafka", "--brokers", broker.bootstrap,
                        "--topic", "no-such-topic", "--since", "2026-01-05T00:00:00Z",
                        "--until", "2026-01-05T01:00:00Z", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "topic 'no-such-topic' does not exist" in r.stderr, r.stderr
