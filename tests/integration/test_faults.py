"""Broker faults: unreachable at start (clear message, retries, then runs); gone mid-stream
and back (the worker survives and resumes).

"Gone mid-stream" twice over: the real broker process frozen (SIGSTOP: every request times out
and no connection answers, as when a broker host stalls) and brought back with SIGCONT; and
every connection to it reset and refused (a cut link, see netcut.py: what clients see when a
broker restarts or a partition drops them) and then restored. A restart of this broker cannot
stand in: with Tansu's memory storage (the only local one) a restart loses every topic, offset
and changelog."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from harness import AlertReader, WorkerProc, produce_lines, wait_until, write_config
from netcut import Link

from detector.lab.broker import Tansu, free_port

pytestmark = pytest.mark.integration


def _unauthorized(ts: float, tenant: str) -> bytes:
    return orjson.dumps({"ts": ts, "operation": "execute_tool", "tenant": tenant,
                         "app": "support-agent", "tool_name": "send_email",
                         "tool_authorized": False, "trace_id": "ab" * 16})


def _traffic(t0: float, n: int) -> list[bytes]:
    return [orjson.dumps({"ts": t0 + i * 0.5, "operation": "chat", "app": "support-agent",
                          "tenant": "t1"}) for i in range(n)]


def test_unreachable_at_start_then_runs(names: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "cfg.toml", brokers=f"127.0.0.1:{port}", partitions=2,
                       idle_partition_timeout_seconds=2, **names)
    w = WorkerProc(cfg, tmp_path / "worker.log")
    b = Tansu(port)
    reader = None
    try:
        wait_until(lambda: len(w.events("broker_unreachable")) >= 2 or not w.alive(), 30,
                   "two 'broker_unreachable' retries in the worker log")
        assert w.alive()
        first = w.events("broker_unreachable")[0]
        assert f"127.0.0.1:{port}" in first["message"] and first["retry_in_s"] > 0
        assert "Traceback" not in w.log()
        b.start()
        wait_until(lambda: w.events("stage1_assigned") or not w.alive(), 90,
                   "the worker to join once the broker is up")
        produce_lines(b.bootstrap, names["traces_topic"],
                      [*_traffic(1_767_571_200.0, 20), _unauthorized(1_767_571_210.0, "t1")],
                      partitions=2)
        reader = AlertReader(b.bootstrap, names["alerts_topic"])
        got = wait_until(lambda: reader.poll(), 60, "the hard-rule alert")
        assert got[0]["signal"] == "unauthorized_tool_call" and got[0]["severity"] == "sev1"
    finally:
        if reader is not None:
            reader.close()
        w.stop()
        b.stop()



def _outage_and_back(names: dict[str, str], tmp_path: Path, bootstrap: str,
                     gone: Callable[[], None], back: Callable[[], None]) -> WorkerProc:
    """A worker alerts, the broker is gone for 20 s (``gone``, then ``back``), and the worker,
    still alive, alerts on traffic sent after. Returns the (stopped) worker for its log."""
    cfg = write_config(tmp_path / "cfg.toml", brokers=bootstrap, partitions=2,
                       idle_partition_timeout_seconds=2, **names)
    w = WorkerProc(cfg, tmp_path / "worker.log")
    reader = None
    try:
        wait_until(lambda: w.events("stage1_assigned") or not w.alive(), 90,
                   "the worker to join")
        t0 = 1_767_571_200.0
        reader = AlertReader(bootstrap, names["alerts_topic"])
        produce_lines(bootstrap, names["traces_topic"],
                      [*_traffic(t0, 20), _unauthorized(t0 + 10, "t1")], partitions=2)
        first = wait_until(lambda: reader.poll(), 60, "the alert before the outage")
        assert first[0]["cohort"]["tenant"] == "t1"
        gone()
        try:
            time.sleep(20)                     # longer than the session timeout (10 s)
            assert w.alive(), "the worker died while the broker was gone"
        finally:
            back()
        # Back: new traffic, a new incident in another cohort, and the alert comes out.
        produce_lines(bootstrap, names["traces_topic"],
                      [*_traffic(t0 + 60, 20), _unauthorized(t0 + 70, "t2")], partitions=2)
        after = wait_until(lambda: [a for a in reader.poll() if a["cohort"]["tenant"] == "t2"],
                           120, "the alert after the broker came back")
        assert after[0]["signal"] == "unauthorized_tool_call"
        assert w.alive() and "Traceback" not in w.log()
        return w
    finally:
        if reader is not None:
            reader.close()
        w.stop()


def test_broker_frozen_mid_stream_and_back(names: dict[str, str], tmp_path: Path) -> None:
    b = Tansu(free_port()).start()
    try:
        _outage_and_back(names, tmp_path, b.bootstrap,
                         lambda: os.kill(b.proc.pid, signal.SIGSTOP),   # type: ignore[union-attr]
                         lambda: os.kill(b.proc.pid, signal.SIGCONT))   # type: ignore[union-attr]
    finally:
        b.stop()


def test_broker_connections_reset_and_refused_then_back(names: dict[str, str],
                                                        tmp_path: Path) -> None:
    link = Link(free_port(), target=free_port()).start()  # up first: the broker advertises it
    b = Tansu(link.target, advertised_port=link.port).start()
    before: list[int] = []

    def cut() -> None:
        before.append(link.connections)
        link.cut()

    try:
        w = _outage_and_back(names, tmp_path, f"127.0.0.1:{link.port}", cut, link.restore)
        assert link.connections > before[0] + 1   # the worker really did reconnect
        # The client's retry warnings are held back, not logged dozens of times a second.
        assert 1 <= w.log().count("Unable connect") <= 6
        assert "repeats_held_back" in w.log()
    finally:
        b.stop()
        link.close()
