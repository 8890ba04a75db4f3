"""Benchmark: from the offending event to Alertmanager's API, through the whole detector.

For each of ``--incidents`` incidents (one at a time, each in its own tenant): produce one
unauthorized tool call to the trace topic of a real broker (Tansu, loopback), let the real
worker (`python -m detector.stream.app`) decode it, fire the hard rule and hand the alert to its
Alertmanager sink, and time until Debian's Alertmanager lists it in GET /api/v2/alerts.
Prints median, p95, p99 and max. Every wait is bounded.

    python bench/paging.py [--incidents 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from harness import WorkerProc, wait_until, write_config  # noqa: E402
from services import alertmanager, http_json  # noqa: E402

from detector.lab.broker import Tansu, free_port  # noqa: E402

PER_INCIDENT_TIMEOUT_S = 15.0


def _event(i: int) -> bytes:
    return orjson.dumps({"ts": time.time(), "operation": "execute_tool", "tenant": f"b{i:04d}",
                         "app": "bench-agent", "tool_name": "send_email",
                         "tool_authorized": False, "trace_id": f"{i + 1:032x}"})


def _seen(am: str, tenant: str) -> bool:
    q = f'{am}/api/v2/alerts?filter=tenant%3D%22{tenant}%22'
    return bool(http_json(q))


async def _run(bootstrap: str, topic: str, am: str, n: int) -> list[float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    delays: list[float] = []
    try:
        await producer.send_and_wait(topic, _event(10_000))      # warm the path
        await asyncio.sleep(2)
        for i in range(n):
            t0 = time.perf_counter()
            await producer.send_and_wait(topic, _event(i))
            deadline = t0 + PER_INCIDENT_TIMEOUT_S
            while not _seen(am, f"b{i:04d}"):
                if time.perf_counter() > deadline:
                    raise SystemExit(f"incident {i} not in Alertmanager after "
                                     f"{PER_INCIDENT_TIMEOUT_S} s")
                await asyncio.sleep(0.005)
            delays.append(time.perf_counter() - t0)
    finally:
        await producer.stop()
    return delays


def measure(incidents: int) -> list[float]:
    """Seconds from each offending event to Alertmanager listing its alert."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-paging-"))
    names = {"traces_topic": "traces", "alerts_topic": "alerts", "dead_letter_topic": "dlq",
             "group": "bench"}
    with Tansu(free_port()) as broker, alertmanager() as am:
        cfg = write_config(tmp / "cfg.toml", brokers=broker.bootstrap, partitions=1,
                           idle_partition_timeout_seconds=2, **names)
        w = WorkerProc(cfg, tmp / "worker.log", env={"DETECTOR_ALERTMANAGER_URLS": am.url})
        try:
            wait_until(lambda: w.events("stage1_assigned") or not w.alive(), 90, "worker join")
            return asyncio.run(_run(broker.bootstrap, names["traces_topic"], am.url, incidents))
        finally:
            w.stop()


def report(d: list[float]) -> None:
    d_ms = sorted(x * 1000 for x in d)
    q = statistics.quantiles(d_ms, n=100, method="inclusive")   # never past the max
    print(f"event -> Alertmanager API, {len(d_ms)} incidents through Kafka and the worker:")
    print(f"  median {statistics.median(d_ms):.0f} ms   p95 {q[94]:.0f} ms   "
          f"p99 {q[98]:.0f} ms   max {d_ms[-1]:.0f} ms   (target p99 < 2000 ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--incidents", type=int, default=200)
    report(measure(ap.parse_args().incidents))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
