"""Helpers for the integration tests, the demo and the benchmarks: a config file for a broker,
worker processes (``python -m detector.stream.app``), producing files and reading alerts back.

Every wait is bounded and fails with a message that says what did not happen."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer

from detector.lab.processes import die_with_parent

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, **kafka: Any) -> Path:
    """The packaged default config with [kafka] keys replaced (and [metrics] port 0)."""
    text = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")
    head, sep, tail = text.partition("\n[kafka]\n")
    body, sep2, rest = tail.partition("\n[")
    for key, value in kafka.items():
        line = f"{key} = {orjson.dumps(value).decode()}"
        body, n = re.subn(rf"(?m)^#?\s*{key} = .*$", line, body, count=1)
        if not n:
            body += f"\n{line}"
    rest = re.sub(r"(?m)^port = \d+", "port = 0", rest)
    path.write_text(head + sep + body + sep2 + rest, "utf-8")
    return path


class WorkerProc:
    """One `detector run` worker process with its log in a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detector.stream.app", "--config", str(config)],
            cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # TMPDIR: what a SIGKILLed worker cannot remove stays in the test's own folder.
            env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(log.parent),
                 **(env or {})},
            start_new_session=True, preexec_fn=die_with_parent())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if f'"event":"{name}"' in line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append(orjson.loads(line))
        return out

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._fh.close()
        return self.proc.returncode


def descendants(pid: int) -> set[int]:
    """Every living process under ``pid`` (children, theirs, ...), from /proc."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for f in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = {int(x) for x in f.read_text().split()}
                todo += kids - out
                out |= kids
    return out


def living(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (not gone, not a zombie)."""
    out = set()
    for p in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                out.add(p)
    return out


def start_demo(tmp: Path, out: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`detector demo` (1.5 h of event time, ``args`` added) with TMPDIR ``tmp``, its output in
    ``out``."""
    with out.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "detector.lab.demo", "--hours", "1.5", *args],
            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), **env})


def files_under(root: Path) -> list[Path]:
    """Everything left under ``root``, sorted."""
    return sorted(root.rglob("*"))


def wait_until(pred: Callable[[], T], timeout: float, what: str, every: float = 0.5) -> T:
    """Poll ``pred`` until truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def wait_assigned(w: WorkerProc, timeout: float = 90) -> None:
    """Until the worker's stage-1 consumer has partitions; fails with its log if it died."""
    wait_until(lambda: w.events("stage1_assigned") or not w.alive(), timeout,
               "the worker's stage-1 consumer to join its group")
    assert w.alive(), w.log()[-3000:]


class AlertReader:
    """Reads the alerts topic from the beginning in the background (its own event loop
    thread would be overkill: each poll() runs a short getmany)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.alerts: list[dict[str, Any]] = []
        self.keys: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._c: AIOKafkaConsumer | None = None

    def _ensure(self) -> AIOKafkaConsumer:
        if self._c is None:
            async def make() -> AIOKafkaConsumer:  # aiokafka binds to the running loop
                c = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap,
                                     group_id=None, auto_offset_reset="earliest",
                                     metadata_max_age_ms=2000,
                                     # Tansu answers a waiting fetch only at its next look,
                                     # a share of this wait: keep what we time short.
                                     fetch_max_wait_ms=50)
                await c.start()
                return c
            self._c = self._loop.run_until_complete(make())
        return self._c

    def poll(self, seconds: float = 0.5) -> list[dict[str, Any]]:
        c = self._ensure()
        got = self._loop.run_until_complete(c.getmany(timeout_ms=int(seconds * 1000)))
        for recs in got.values():
            for r in recs:
                self.keys.append(r.key or b"")
                self.alerts.append(orjson.loads(r.value))
        return self.alerts

    def close(self) -> None:
        if self._c is not None:
            self._loop.run_until_complete(self._c.stop())
        self._loop.close()


async def join_two(bootstrap: str, group: str, topic: str) -> list[list[int]]:
    """Two consumers join ``group`` on ``topic`` at once; each one's partitions, once both
    have some (or after 15 s)."""
    cs = [AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                           session_timeout_ms=6000, heartbeat_interval_ms=1500)
          for _ in range(2)]
    for c in cs:
        await c.start()
        c.subscribe([topic])
    try:
        for _ in range(150):     # Tansu holds a join 3 s (half the session timeout)
            if all(c.assignment() for c in cs):
                break
            await asyncio.sleep(0.1)
        return sorted(sorted(tp.partition for tp in c.assignment()) for c in cs)
    finally:
        for c in cs:
            await c.stop()


def produce_lines(bootstrap: str, topic: str, lines: list[bytes], partitions: int) -> int:
    from detector.stream.kafka_io import produce
    return asyncio.run(produce(bootstrap, topic, lines, partitions=partitions))


def file_lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().split(b"\n") if ln.strip()]


def replay(cfg_path: Path | None, lines: list[bytes]) -> list[dict[str, Any]]:
    """Pipeline replay of the same messages, without ``finish()`` (a stream never ends); the
    alerts as the contract's JSON values, as a consumer of the alert topic reads them."""
    from detector.config import load_config
    from detector.core.alert import alert_record
    from detector.core.pipeline import Pipeline
    p = Pipeline(load_config(cfg_path, env=False))
    out: list[dict[str, Any]] = []
    for ln in lines:
        out += map(alert_record, p.feed(ln))
    return out


def identity(a: dict[str, Any]) -> tuple[Any, ...]:
    return (a["id"], a["status"], a["severity"], a["signal"],
            tuple(sorted(a["cohort"].items())))
