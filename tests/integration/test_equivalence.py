"""Replay and Kafka streaming of the same simulated file give the same alerts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from harness import (
    ROOT,
    AlertReader,
    WorkerProc,
    file_lines,
    identity,
    produce_lines,
    replay,
    wait_assigned,
    wait_until,
    write_config,
)

from detector.lab.broker import Tansu
from detector.lab.scenarios import signals_config
from detector.lab.simulate import simulate

pytestmark = pytest.mark.integration

# canary_regression: its canary_gap alert compares two route keys of one app that the
# whole-root-cohort routing put on different stage-2 partitions (issue 17).
SCENARIOS = ["unauthorized_tool", "refusal_spike", "traffic_drop", "eval_drop", "spend_surge",
             "canary_regression"]


def _dlq(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, dict[str, bytes]]]:
    async def read() -> list[tuple[bytes, dict[str, bytes]]]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest")
        await c.start()
        out: list[tuple[bytes, dict[str, bytes]]] = []
        try:
            deadline = time.monotonic() + 30
            while len(out) < n and time.monotonic() < deadline:
                for recs in (await c.getmany(timeout_ms=500)).values():
                    out += [(r.value, dict(r.headers)) for r in recs]
        finally:
            await c.stop()
        return out
    return asyncio.run(read())


def _canon(alert: dict[str, object]) -> bytes:
    return orjson.dumps(alert, option=orjson.OPT_SORT_KEYS)


def test_stream_equals_replay(broker: Tansu, names: dict[str, str], tmp_path: Path) -> None:
    simulate(tmp_path / "sim", hours=2.0, rate=20.0, seed=3, scenarios=SCENARIOS)
    lines = file_lines(tmp_path / "sim" / "traces.jsonl")
    # Replay and stream agree when no partition goes quiet for longer than the idle timeout
    # while its data is still coming: past it, the stream closes windows without that
    # partition (as it must live) and its later events are late. The producer below writes
    # 1 MB batches per partition; on a loaded machine 3 s between them was seen twice.
    cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap, partitions=4,
                       idle_partition_timeout_seconds=20, **names)
    cfg.write_text(signals_config(cfg.read_text()))   # evaluators and prices: issue 14's too
    expected = replay(cfg, lines)
    signals = {a["signal"] for a in expected}
    assert {"unauthorized_tool_call", "eval_faithfulness", "cost", "canary_gap"} <= signals

    w = WorkerProc(cfg, tmp_path / "worker.log")
    reader = AlertReader(broker.bootstrap, names["alerts_topic"])
    try:
        wait_assigned(w)
        produce_lines(broker.bootstrap, names["traces_topic"], lines, partitions=4)
        wait_until(lambda: len(reader.poll()) >= len(expected), 180,
                   f"{len(expected)} alerts on {names['alerts_topic']}")
        reader.poll(2.0)  # anything beyond the expected count would be a difference too
        got = reader.alerts
        assert sorted(map(identity, got)) == sorted(map(identity, expected))  # short diff
        assert sorted(map(_canon, got)) == sorted(map(_canon, expected))      # every field
        assert [k.decode() for k in reader.keys] == [a["id"] for a in got]  # key = alert id
        assert "Traceback" not in w.log()

        # Rejected input went to the dead-letter topic with its reason in a header.
        from detector.config import load_config
        from detector.core.pipeline import Pipeline
        p = Pipeline(load_config(cfg, env=False))
        for ln in lines:
            p.feed(ln)
        dlq = _dlq(broker.bootstrap, names["dead_letter_topic"], len(p.rejects))
        assert sorted(h["reason"].decode() for _, h in dlq) == sorted(
            r.reason for r in p.rejects)
        assert sorted(v for v, _ in dlq) == sorted(r.to_json() for r in p.rejects)
    finally:
        reader.close()
        assert w.stop() is not None
    # Faust's data directory went to a temporary one, not into the worker's cwd.
    assert not (ROOT / f"{names['group']}-data").exists()
