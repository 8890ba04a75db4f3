"""`detector run` on hostile input: a poison message in a fetch is dead-lettered alone, and the
rest of the fetch is counted (e45989b logged stage1_error and dropped it)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from harness import AlertReader, WorkerProc, produce_lines, wait_until, write_config

from detector.lab.broker import Tansu

pytestmark = pytest.mark.integration

MARK = b"PROMPTTEXTMARKER"


def test_a_poison_message_loses_nothing_else_of_its_fetch(broker: Tansu, names: dict[str, str],
                                                          tmp_path: Path) -> None:
    ts0 = 1767571200
    base = {"operation": "chat", "tenant": "t1", "app": "a"}
    good = [orjson.dumps({"ts": ts0 + i / 100, **base}) for i in range(4000)]
    poison = orjson.dumps({"ts": ts0, **base})[:-1] + b', "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    marked = orjson.dumps({"ts": ts0, **base, "tenant": "x" * 300 + MARK.decode()})
    # The page comes from an event after the poison message, in the same fetch.
    tool = orjson.dumps({"ts": ts0 + 41, **base, "operation": "execute_tool",
                         "tool_name": "drop_db", "tool_authorized": False,
                         "trace_id": "b" * 32})
    lines = [*good[:2000], poison, marked, *good[2000:], tool]
    cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap, partitions=1, **names)
    w = WorkerProc(cfg, tmp_path / "worker.log")
    alerts = AlertReader(broker.bootstrap, names["alerts_topic"])
    dead = AlertReader(broker.bootstrap, names["dead_letter_topic"])
    try:
        wait_until(lambda: w.events("stage1_assigned") or not w.alive(), 90,
                   "the worker's stage-1 consumer to join its group")
        assert w.alive(), w.log()[-3000:]
        produce_lines(broker.bootstrap, names["traces_topic"], lines, partitions=1)
        wait_until(lambda: any(a["signal"] == "unauthorized_tool_call" for a in alerts.poll()),
                   120, "the unauthorized tool call after the poison message to page")
        wait_until(lambda: len(dead.poll()) >= 2, 60, "two dead letters")
        dead.poll(2.0)   # anything more would be a difference too
        assert [(d["reason"], d["field"]) for d in dead.alerts] == [
            ("too_deep", None), ("out_of_range", "tenant")]
        assert dead.alerts[1]["payload"]["tenant"]["chars"] == 316
        assert not w.events("stage1_error"), w.log()[-3000:]
        assert MARK not in w.log().encode()
        assert all(MARK not in orjson.dumps(d) for d in dead.alerts)
    finally:
        alerts.close()
        dead.close()
        assert w.stop() is not None
