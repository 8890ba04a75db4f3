"""Time from SIGTERM to exit, measured (not a test).

    python bench/shutdown.py [--runs 5] [--demo-runs 3]

1. `detector run` on the real Tansu broker: a worker joins, consumes 2,000 events on 2
   partitions (stage 2 started), gets SIGTERM; the time until the process has exited (final
   stage-1 flush, offset commit, leaving both consumer groups, Faust's shutdown) and its exit
   code. A fresh worker and group each run; one broker for all.
2. `detector demo --duration 300`: SIGTERM once its producer streams; the time until the demo
   has exited, its broker and worker included.

Prints each run, then the median and range. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from harness import WorkerProc, produce_lines, wait_until, write_config  # noqa: E402

from detector.lab.broker import Tansu  # noqa: E402

ENV = {"DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"}


def _chats(n: int, t0: float = 1_767_571_200.0) -> list[bytes]:
    return [orjson.dumps({"ts": t0 + i * 0.6, "operation": "chat", "tenant": "t1",
                          "app": "support-agent"}) for i in range(n)]


def run_once(b: Tansu, work: Path, i: int) -> tuple[float, int | None]:
    names = {"traces_topic": f"tr-{i}", "alerts_topic": f"al-{i}",
             "dead_letter_topic": f"dl-{i}", "group": f"g-{i}"}
    cfg = write_config(work / f"cfg-{i}.toml", brokers=b.bootstrap, partitions=2,
                       idle_partition_timeout_seconds=2, **names)
    w = WorkerProc(cfg, work / f"w-{i}.log", ENV)
    try:
        wait_until(lambda: w.events("stage1_assigned"), 90, "the worker to join")
        lines = _chats(2000)
        produce_lines(b.bootstrap, names["traces_topic"], lines, partitions=2)
        wait_until(lambda: '"stage2_partition_loaded"' in w.log(), 60, "stage 2 to start")
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        rc = w.proc.wait(120)
        return time.monotonic() - t0, rc
    finally:
        w.stop()


def demo_once(work: Path) -> tuple[float, int | None]:
    env = {**os.environ, "TMPDIR": str(work), "PYTHONPATH": str(ROOT)}
    with (work / "demo.out").open("wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "detector.lab.demo", "--duration", "300",
                              "--hours", "1.5"], cwd=ROOT, env=env, stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            # The table header prints once the producer and the alert reader run.
            wait_until(lambda: b"time " in (work / "demo.out").read_bytes(), 120,
                       "the demo to stream")
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            rc = p.wait(120)
            return time.monotonic() - t0, rc
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def _report(what: str, got: list[tuple[float, int | None]]) -> None:
    for s, rc in got:
        print(f"  {what}: {s:.2f} s, exit {rc}")
    ts = [s for s, _ in got]
    print(f"{what}: SIGTERM -> exit median {statistics.median(ts):.2f} s "
          f"(min {min(ts):.2f}, max {max(ts):.2f}, {len(ts)} runs)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--demo-runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp:
        work = Path(tmp)
        if a.runs:
            with Tansu(log_dir=work) as b:
                _report("detector run", [run_once(b, work, i) for i in range(a.runs)])
        if a.demo_runs:
            _report("detector demo", [demo_once(work) for _ in range(a.demo_runs)])


if __name__ == "__main__":
    main()
