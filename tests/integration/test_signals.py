"""Stopping by signal, and temp files: `detector run` and `detector demo` stop on SIGTERM and
SIGINT without losing counted events or leaving a child process or a temp folder behind, and
the demo's children die with it even when it is SIGKILLed.

Each test points TMPDIR at a fresh folder of its own and checks what is left in it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from harness import (
    ROOT,
    AlertReader,
    WorkerProc,
    descendants,
    files_under,
    identity,
    living,
    produce_lines,
    replay,
    start_demo,
    wait_until,
    write_config,
)

from detector.lab.broker import Tansu, free_port
from tests import services as svc

pytestmark = pytest.mark.integration

ENV = {"DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"}
T0 = 1_767_571_200.0


def _chats(minute0: int, minutes: int, refusing: range = range(0)) -> list[bytes]:
    """100 chats a minute for tenant t1 from ``minute0``; 60 % refusals in the minutes listed
    in ``refusing`` (2 % otherwise)."""
    out = []
    for i in range(minutes * 100):
        m = minute0 + i // 100
        refused = (i % 100) < (60 if m in refusing else 2)
        out.append(orjson.dumps({"ts": T0 + m * 60 + (i % 100) * 0.6, "operation": "chat",
                                 "tenant": "t1", "app": "support-agent", "refusal": refused}))
    return out


def _consumed(w: WorkerProc) -> int:
    ev = w.events("stage1_progress")
    return int(ev[-1]["events"]) if ev else 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_on_signal_and_a_successor_loses_nothing(
        broker: Tansu, names: dict[str, str], tmp_path: Path, sig: signal.Signals) -> None:
    """A worker counts 26 minutes of traffic, the last in an open window and a refusal spike
    under way, and is stopped by ``sig``: it exits 0 in a bounded time, with no child left and
    its temp folder removed. A second worker in the same group reads only what came after (the
    first committed what it counted) and the alerts are those of a replay of everything."""
    refusing = range(24, 28)
    first, later = _chats(0, 26, refusing), _chats(26, 8, refusing)
    cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap, partitions=2,
                       idle_partition_timeout_seconds=2, **names)
    expected = replay(cfg, first + later)
    assert any(x["signal"] == "refusal_rate" for x in expected)
    tmp_a = tmp_path / "tmp-a"
    tmp_a.mkdir()
    a = WorkerProc(cfg, tmp_path / "a.log", {**ENV, "TMPDIR": str(tmp_a)})
    try:
        wait_until(lambda: a.events("stage1_assigned"), 90, "the first worker to join")
        produce_lines(broker.bootstrap, names["traces_topic"], first, partitions=2)
        wait_until(lambda: _consumed(a) >= len(first) or not a.alive(), 60,
                   f"the first worker to count {len(first)} events")
        wait_until(lambda: '"stage2_partition_loaded"' in a.log(), 30, "stage 2 to start")
        kids = descendants(a.pid)
        a.proc.send_signal(sig)
        rc = a.proc.wait(60)   # generous: bench/shutdown.py measures it
    finally:
        a.stop()
    assert rc == 0, (rc, a.log()[-3000:])
    assert not living(kids)
    assert files_under(tmp_a) == []
    assert _consumed(a) == len(first)
    assert "Traceback" not in a.log()

    b = WorkerProc(cfg, tmp_path / "b.log", ENV)
    reader = AlertReader(broker.bootstrap, names["alerts_topic"])
    try:
        wait_until(lambda: b.events("stage1_assigned"), 90, "the second worker to join")
        produce_lines(broker.bootstrap, names["traces_topic"], later, partitions=2)
        wait_until(lambda: len(reader.poll()) >= len(expected), 90,
                   f"{len(expected)} alerts across the two workers")
        reader.poll(2.0)
        wait_until(lambda: _consumed(b) >= len(later), 30, "the second worker's progress line")
        # Nothing counted twice: the second worker starts at the first one's commits.
        assert _consumed(b) == len(later)
        assert sorted(map(identity, reader.alerts)) == sorted(map(identity, expected))
    finally:
        reader.close()
        b.stop()


@contextlib.contextmanager
def _streaming_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], set[int], Path]]:
    """A demo with TMPDIR ``tmp_path/tmp``, once it streams (its table header is out): the
    process, its children (broker and worker) and its TMPDIR. Whatever is left is killed."""
    tmp, out = tmp_path / "tmp", tmp_path / "demo.out"
    tmp.mkdir()
    p = start_demo(tmp, out, "--duration", "300")
    kids: set[int] = set()
    try:
        wait_until(lambda: b"time " in out.read_bytes() or p.poll() is not None, 120,
                   "the demo to start streaming")
        assert p.poll() is None, out.read_text()
        kids = descendants(p.pid)
        assert len(kids) == 2, kids
        yield p, kids, tmp
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        for k in living(kids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(k, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_demo_stops_on_signal_with_its_children_and_temp_folder(
        tmp_path: Path, sig: signal.Signals) -> None:
    with _streaming_demo(tmp_path) as (p, kids, tmp):
        p.send_signal(sig)
        # A bound, not a speed check: in a full CI run the SIGINT case needed more than 60 s
        # (twice), though alone it stops in under 25 s; see the closing note of 2026-12-07.
        rc = p.wait(180)
        assert rc == (0 if sig == signal.SIGTERM else 130), (tmp_path / "demo.out").read_text()
        assert not living(kids)
        assert files_under(tmp) == []


def test_demo_sigkilled_its_children_die(tmp_path: Path) -> None:
    with _streaming_demo(tmp_path) as (p, kids, tmp):
        p.kill()
        p.wait(10)
        wait_until(lambda: not living(kids), 30, "the demo's broker and worker to die with it")
        # What no process can remove once it is SIGKILLed: the demo's config and two logs
        # (the simulated traffic is deleted as soon as it is read).
        assert sum(f.stat().st_size for f in files_under(tmp) if f.is_file()) < 1 << 20


def test_run_stop_is_bounded_when_the_broker_does_not_answer(
        names: dict[str, str], tmp_path: Path) -> None:
    """The broker freezes (SIGSTOP), then the worker gets SIGTERM: its final commit cannot
    finish, yet it exits within its bound, with status 1, a log line saying so and its temp
    folder removed (it waited forever)."""
    from detector.stream.app import STOP_WITHIN_S

    b = Tansu(free_port()).start()
    tmp_w = tmp_path / "tmp-w"
    tmp_w.mkdir()
    cfg = write_config(tmp_path / "cfg.toml", brokers=b.bootstrap, partitions=2,
                       idle_partition_timeout_seconds=2, **names)
    w = WorkerProc(cfg, tmp_path / "w.log", {**ENV, "TMPDIR": str(tmp_w)})
    try:
        wait_until(lambda: w.events("stage1_assigned"), 90, "the worker to join")
        produce_lines(b.bootstrap, names["traces_topic"], _chats(0, 2), partitions=2)
        wait_until(lambda: '"stage2_partition_loaded"' in w.log(), 60, "stage 2 to start")
        os.kill(b.proc.pid, signal.SIGSTOP)   # type: ignore[union-attr]
        w.proc.send_signal(signal.SIGTERM)
        rc = w.proc.wait(STOP_WITHIN_S + 30)
    finally:
        if b.proc is not None:
            os.kill(b.proc.pid, signal.SIGCONT)
        w.stop()
        b.stop()
    assert rc == 1
    assert w.events("stop_timeout")
    assert files_under(tmp_w) == []


def test_test_services_die_with_the_test_process(tmp_path: Path) -> None:
    """A test process that is SIGKILLed (a CI job cancelled) takes its Alertmanager with it."""
    svc.require_binary("prometheus-alertmanager")
    code = ("import os, signal, sys; sys.path.insert(0, 'tests'); import services as svc\n"
            "with svc.alertmanager() as am:\n"
            "    print(am.proc.pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)})
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    pid = int(r.stdout.split()[0])
    try:
        wait_until(lambda: not living({pid}), 30, "Alertmanager to die with its parent")
    finally:
        for k in living({pid}):
            os.kill(k, signal.SIGKILL)


def test_demo_loops_stopped_mid_stream_leave_no_connection_open() -> None:
    """A stop mid-stream (what SIGTERM and Ctrl-C set) ends the demo's producer and alert
    reader at their next turn and closes their clients. Cancelled mid-request instead, an
    aiokafka client could leave a connection open, and the broker then held its shutdown
    for its grace period on it."""
    import asyncio
    import gc

    from aiokafka.conn import AIOKafkaConnection

    from detector.config import load_config
    from detector.lab.demo import _play, _Sent
    from detector.stream.kafka_io import ensure_topics

    lines = [orjson.dumps({"ts": T0 + i * 0.05, "operation": "chat", "tenant": "t1",
                           "app": "support-agent"}) for i in range(20_000)]

    def connected() -> list[AIOKafkaConnection]:
        return [o for o in gc.get_objects() if isinstance(o, AIOKafkaConnection)
                and o.connected()]

    async def stopped_after(b: Tansu, seconds: float) -> tuple[int, list[dict[str, object]]]:
        await ensure_topics(b.bootstrap, {"ai-traces": 4, "ai-alerts": 1})
        stop, sent = asyncio.Event(), _Sent()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        seen = await asyncio.wait_for(
            _play(b.bootstrap, lines, 20.0, float("inf"), load_config(None, env=False), sent,
                  stop, 0.1), 60)
        return int(sent.last is not None), seen

    with Tansu() as b:
        for seconds in (0.6, 1.3, 2.1):   # stops landing at different points of the loops
            streamed, seen = asyncio.run(stopped_after(b, seconds))
            assert streamed == 1          # it was mid-stream when the stop came
            assert seen == []             # no worker: nothing on the alerts topic
            assert connected() == []
