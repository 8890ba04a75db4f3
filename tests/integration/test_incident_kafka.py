"""`detector incident ALERT_ID --kafka` on the real (Tansu) broker: the alert's emissions read
from the alerts topic give the golden drafts the file gives; an unknown id, a missing topic and
a range without the alert are clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from detector.lab.broker import Tansu

pytestmark = pytest.mark.integration

DETECTOR = [sys.executable, "-m", "detector.cli"]
FIXTURES = Path(__file__).parents[1] / "fixtures" / "incident"
ALERT = "a-54b4e09024827981ecb1"


def _incident(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DETECTOR, "incident", *args], capture_output=True, text=True,
                          timeout=120)


def test_drafts_from_the_alerts_topic_match_the_golden_file(
        broker: Tansu, names: dict[str, str]) -> None:
    topic = names["alerts_topic"]
    broker.create_topics([topic], partitions=4)
    lines = (FIXTURES / "alerts.jsonl").read_bytes().splitlines()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    try:
        producer.send(topic, b"not an alert", key=b"x")   # another writer's junk: passed over
        for line in lines:   # keyed by alert id, as the worker writes them
            producer.send(topic, line, key=orjson.loads(line)["id"].encode())
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)

    r = _incident(ALERT, "--kafka", "--brokers", broker.bootstrap, "--topic", topic)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (FIXTURES / "expected.md").read_text("utf-8")

    r = _incident("a-nope", "--kafka", "--brokers", broker.bootstrap, "--topic", topic)
    assert r.returncode == 1
    assert f"no alert a-nope in topic {topic} on {broker.bootstrap}" in r.stderr
    # Records are stamped when produced: a range long before holds none of them.
    r = _incident(ALERT, "--kafka", "--brokers", broker.bootstrap, "--topic", topic,
                  "--since", "2020-01-01T00:00:00Z", "--until", "2020-01-02T00:00:00Z")
    assert r.returncode == 1 and f"no alert {ALERT}" in r.stderr
    r = _incident(ALERT, "--kafka", "--brokers", broker.bootstrap, "--topic", "no-such-topic")
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

