"""The two embedded-broker (Tansu) behaviours the worker works around, measured (not a test).

    python bench/tansu.py [--hops 12] [--joins 10]

1. A waiting fetch: for each fetch wait, the time from producing one record to the consumer's
   getmany returning it (median, max over ``--hops``), and the broker's CPU for one idle
   consumer of 4 partitions polling with that wait (8 s). Kafka answers a waiting fetch when
   records arrive; Tansu only at its next look (`kafka.fetch_max_wait_seconds`).
2. Group joins: two consumers join a group at once, ``--joins`` times, without and with
   :func:`detector.stream.kafka_io.delay_follower_sync`; a join counts as parked when the follower's
   SyncGroup took over 0.5 s (Tansu answers a parked one a second later).

Every wait is bounded; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from harness import join_two  # noqa: E402

from detector.lab.broker import Tansu  # noqa: E402
from detector.stream import kafka_io  # noqa: E402


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def hops(b: Tansu, wait_ms: int, n: int) -> list[float]:
    c = AIOKafkaConsumer("hop", bootstrap_servers=b.bootstrap, group_id=None,
                         auto_offset_reset="latest", fetch_max_wait_ms=wait_ms)
    p = AIOKafkaProducer(bootstrap_servers=b.bootstrap, linger_ms=0)
    await c.start()
    await p.start()
    try:
        await c.getmany(timeout_ms=1000)          # position at the end
        out = []
        for i in range(n):
            await asyncio.sleep(0.05 + 0.137 * (i % 5))   # land at different points of a wait
            t = time.perf_counter()
            await p.send_and_wait("hop", b"x", partition=0)
            for _ in range(20):
                if await c.getmany(timeout_ms=2000):
                    break
            out.append(time.perf_counter() - t)
        return out
    finally:
        await c.stop()
        await p.stop()


async def idle_cpu(b: Tansu, wait_ms: int, seconds: float = 8.0) -> float:
    assert b.proc is not None
    c = AIOKafkaConsumer("idle4", bootstrap_servers=b.bootstrap, group_id=None,
                         auto_offset_reset="earliest", fetch_max_wait_ms=wait_ms)
    await c.start()
    try:
        await c.getmany(timeout_ms=500)
        c0, t = cpu_s(b.proc.pid), time.monotonic()
        while time.monotonic() - t < seconds:
            await c.getmany(timeout_ms=500)
        return (cpu_s(b.proc.pid) - c0) / seconds
    finally:
        await c.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hops", type=int, default=12)
    ap.add_argument("--joins", type=int, default=10)
    args = ap.parse_args()
    with Tansu() as b:
        b.create_topics(["hop"], 1)
        b.create_topics(["join", "idle4"], 4)
        print("fetch wait   hop median   hop max   broker CPU, one idle consumer")
        for wait_ms in (1500, 500, 250, 100, 50, 20):
            d = [x * 1000 for x in asyncio.run(hops(b, wait_ms, args.hops))]
            cpu = asyncio.run(idle_cpu(b, wait_ms))
            print(f"{wait_ms:7d} ms   {statistics.median(d):7.0f} ms   {max(d):5.0f} ms   "
                  f"{cpu:.3f} of a core", flush=True)

        syncs: list[tuple[bool, float]] = []
        send = CoordinatorGroupRebalance._send_sync_group_request

        async def timed(self: CoordinatorGroupRebalance, request: Any) -> Any:
            t = time.monotonic()
            try:
                return await send(self, request)
            finally:
                syncs.append((bool(request._group_assignment), time.monotonic() - t))

        CoordinatorGroupRebalance._send_sync_group_request = timed  # type: ignore[method-assign]
        for label in ("without the follower delay", "with delay_follower_sync"):
            if label.startswith("with "):
                kafka_io.delay_follower_sync()
            syncs.clear()
            for i in range(args.joins):
                asyncio.run(join_two(b.bootstrap, f"join-{label[:4]}-{i}", "join"))
            parked = sum(1 for leader, took in syncs if not leader and took > 0.5)
            print(f"{label}: {parked} of {args.joins} joins left the follower parked",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
