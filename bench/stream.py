"""Throughput through the streaming edge on an embedded Tansu broker (not a test).

    python bench/stream.py --events 1000000

For 1 event per message and for 100-event JSON-array batches it measures, in one run:
raw aiokafka ``getmany`` + ``orjson.loads`` of the same messages (the floor), then one and two
`detector run` workers (stage 1 done = every trace partition's committed offset of group
``<group>-stage1`` reached the fetch high watermark; stage 1 commits only after its partials
reached stage 2), and each worker's peak RSS (VmHWM). Prints figures and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from harness import WorkerProc, write_config  # noqa: E402

from detector.broker import Tansu  # noqa: E402
from detector.kafka_io import fetch_highwaters, produce  # noqa: E402

P = 4


def events(n: int, t0: float = 1_767_571_200.0, rate: float = 200.0) -> list[bytes]:
    rnd = random.Random(1)
    apps = ["support-agent", "coding-assistant", "sales-copilot", "payments-agent"]
    out = []
    for i in range(n):
        out.append(orjson.dumps({
            "ts": t0 + i / rate, "operation": "chat", "trace_id": f"{rnd.getrandbits(128):032x}",
            "tenant": f"t{i % 12:02d}", "app": apps[i % 4], "environment": "production",
            "model": "m-large", "model_version": "2026-05-01", "prompt_version": "v42",
            "policy_version": "p7", "input_tokens": rnd.randint(10, 2000),
            "output_tokens": rnd.randint(10, 800), "latency_ms": round(rnd.random() * 900, 1),
            "finish_reason": "stop", "refusal": rnd.random() < 0.02,
            "output_format_valid": True}))
    return out


async def raw(bootstrap: str, topic: str, n_events: int, batch: bool) -> float:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                         fetch_max_bytes=32 << 20)
    await c.start()
    got, t0 = 0, None
    deadline = time.monotonic() + 600
    try:
        while got < n_events and time.monotonic() < deadline:
            r = await c.getmany(timeout_ms=500, max_records=10000)
            if r and t0 is None:
                t0 = time.perf_counter()
            for recs in r.values():
                for rec in recs:
                    v = orjson.loads(rec.value)
                    got += len(v) if batch else 1
    finally:
        await c.stop()
    return got / (time.perf_counter() - (t0 or time.perf_counter()))


async def committed_all(bootstrap: str, group: str, topic: str) -> bool:
    tps = [TopicPartition(topic, p) for p in range(P)]
    ends = await fetch_highwaters(bootstrap, dict.fromkeys(tps, 1))
    # OffsetFetch through a consumer that never joins (Tansu drops the admin variant).
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        for tp in tps:
            if ((await c.committed(tp)) or 0) < (ends[tp] or 0):
                return False
        return True
    finally:
        await c.stop()


def hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def through_workers(b: Tansu, tmp: Path, topic: str, n_workers: int, tag: str) -> tuple[
        float, list[int]]:
    group = f"bench-{tag}-{n_workers}"
    cfg = write_config(tmp / f"{group}.toml", brokers=b.bootstrap, partitions=P,
                       traces_topic=topic, alerts_topic=f"alerts-{group}",
                       dead_letter_topic=f"dlq-{group}", group=group,
                       idle_partition_timeout_seconds=5)
    env = {"DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"}
    ws = [WorkerProc(cfg, tmp / f"{group}-{i}.log", env) for i in range(n_workers)]
    try:
        t0 = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if t0 is None and any(w.events("stage1_assigned") for w in ws):
                t0 = time.perf_counter()  # clock starts when the first consumer has partitions
            if t0 and asyncio.run(committed_all(b.bootstrap, f"{group}-stage1", topic)):
                return time.perf_counter() - t0, [hwm_kb(w.pid) for w in ws]
            time.sleep(0.25)
        raise SystemExit(f"{group}: stage 1 did not finish in time; see {ws[0].log_path}")
    finally:
        for w in ws:
            w.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.events
    evs = events(n)
    shapes = {"single": evs,
              "batch100": [b"[" + b",".join(evs[i:i + 100]) + b"]" for i in range(0, n, 100)]}
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    with Tansu(log_dir=tmp) as b:
        for tag, msgs in shapes.items():
            topic = f"traces-{tag}"
            b.create_topics([topic], P)
            t = time.perf_counter()
            asyncio.run(produce(b.bootstrap, topic, msgs, partitions=P))
            print(f"[{tag}] produced {n:,} events in {len(msgs):,} messages: "
                  f"{n / (time.perf_counter() - t):,.0f} events/s", flush=True)
            r = asyncio.run(raw(b.bootstrap, topic, n, tag != "single"))
            print(f"[{tag}] raw getmany + orjson.loads: {r:,.0f} events/s", flush=True)
            one = None
            for k in (1, 2):
                dt, mem = through_workers(b, tmp, topic, k, tag)
                eps = n / dt
                one = one or eps
                print(f"[{tag}] {k} worker(s): {eps:,.0f} events/s (stage 1 committed all "
                      f"{dt:.1f} s after partitions were assigned); raw/worker {r / eps:.1f}x; "
                      f"vs 1 worker {eps / one:.2f}x; peak RSS "
                      f"{', '.join(f'{m / 1024:.0f} MiB' for m in mem)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
