"""Peak RSS and speed of one worker reading compressed 100-event batches, per stage-1 fetch
size (``kafka.fetch_max_bytes``) and, with ``--before DIR``, for the code of another source
tree (e.g. ``git archive <commit> | tar -x -C DIR`` plus the built ``detector/core/_tally*.so``).
Not a test.

    python bench/fetch_memory.py [--events 1000000] [--compression lz4 --compression zstd]
        [--fetch-bytes 8388608 --fetch-bytes 33554432] [--before DIR] [--repeat 3]

A fetch's limit counts compressed bytes, and aiokafka hands out the records of a fetch
decompressed: the fetch size and the records taken at once are what a worker holds. Each
codec's traces (bench/stream.py's events, as 100-event messages) are produced once; each
round then runs every variant once, in turn, each as a new consumer group reading the topic
from the start. A run is timed from the first assignment until stage 1 has committed every
offset (checked each second); peak RSS is the worker's VmHWM. Ratios are taken within a
round, against the first variant.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests" / "integration")]
import harness  # noqa: E402
from stream import P, committed_all, cpu_s, events, hwm_kb, messages, topic_ends  # noqa: E402

from detector.lab.broker import Tansu  # noqa: E402
from detector.stream.kafka_io import produce  # noqa: E402

_runs = itertools.count()


class Variant(NamedTuple):
    label: str
    tree: Path                 # the source tree the worker runs
    fetch_bytes: int | None    # kafka.fetch_max_bytes; None: the tree has no such key


class Run(NamedTuple):
    seconds: float             # first assignment until stage 1 had committed everything
    rss_mib: float             # the worker's peak RSS
    cpu: float                 # the worker's CPU seconds in that time


def run_once(b: Tansu, tmp: Path, topic: str, v: Variant) -> Run:
    group = f"mem-{next(_runs)}"
    cfg = harness.write_config(tmp / f"{group}.toml", brokers=b.bootstrap, partitions=P,
                               traces_topic=topic, alerts_topic=f"alerts-{group}",
                               dead_letter_topic=f"dlq-{group}", group=group,
                               idle_partition_timeout_seconds=5)
    text = re.sub(r"(?m)^fetch_max_bytes = .*\n", "", cfg.read_text())
    if v.fetch_bytes is not None:
        text = text.replace("\n[kafka]\n", f"\n[kafka]\nfetch_max_bytes = {v.fetch_bytes}\n")
    cfg.write_text(text)
    ends = asyncio.run(topic_ends(b.bootstrap, topic))
    # WorkerProc runs `python -m detector.stream.app` in harness.ROOT, first on the worker's path.
    harness.ROOT, root = v.tree, harness.ROOT
    try:
        w = harness.WorkerProc(cfg, tmp / f"{group}.log",
                               {"DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"})
    finally:
        harness.ROOT = root
    try:
        deadline = time.monotonic() + 900
        while not w.events("stage1_assigned"):
            if not w.alive() or time.monotonic() > deadline:
                raise SystemExit(f"{v.label}: the worker did not start; see {w.log_path}")
            time.sleep(0.05)
        t0, cpu0 = time.perf_counter(), cpu_s(w.pid)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            if asyncio.run(committed_all(b.bootstrap, f"{group}-stage1", ends)):
                return Run(time.perf_counter() - t0, hwm_kb(w.pid) / 1024, cpu_s(w.pid) - cpu0)
        raise SystemExit(f"{v.label}: stage 1 did not commit everything; see {w.log_path}")
    finally:
        w.stop()


def report(codec: str, n: int, variants: list[Variant], runs: dict[str, list[Run]]) -> None:
    base = runs[variants[0].label]
    for v in variants:
        rs = runs[v.label]
        pairs = list(zip(rs, base, strict=True))
        speed = statistics.median(y.seconds / x.seconds for x, y in pairs)
        cpu = statistics.median(x.cpu / y.cpu for x, y in pairs)
        eps = n / statistics.median(r.seconds for r in rs)
        rss = statistics.median(r.rss_mib for r in rs)
        print(f"[{codec}] {v.label}: median {eps:,.0f} events/s, peak RSS {rss:.0f} MiB "
              f"({', '.join(f'{r.rss_mib:.0f}' for r in rs)}); against {variants[0].label}: "
              f"speed {speed:.2f}x, CPU {cpu:.2f}x (medians of the rounds' ratios)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compression", choices=("gzip", "snappy", "lz4", "zstd"), action="append")
    ap.add_argument("--fetch-bytes", type=int, action="append",
                    help="a kafka.fetch_max_bytes to measure (repeatable; default: the config's)")
    ap.add_argument("--before", type=Path, help="also run this source tree's worker, first")
    args = ap.parse_args()
    variants = [Variant(f"{args.before.name} (before)", args.before.resolve(), None)] \
        if args.before else []
    variants += [Variant(f"fetch_max_bytes={f or 'default'}", ROOT, f)
                 for f in args.fetch_bytes or [None]]
    n = args.events
    msgs = messages("batch100", events(n))
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as td, Tansu() as b:
        tmp = Path(td)
        for codec in args.compression or ["lz4"]:
            topic = f"traces-{codec}"
            b.create_topics([topic], P)
            asyncio.run(produce(b.bootstrap, topic, msgs, partitions=P, compression_type=codec))
            print(f"[{codec}] {n:,} events in {len(msgs):,} messages, "
                  f"{sum(map(len, msgs)) / 2**20:,.0f} MiB before compression", flush=True)
            runs: dict[str, list[Run]] = {v.label: [] for v in variants}
            for i in range(args.repeat):
                for v in variants:
                    runs[v.label].append(r := run_once(b, tmp, topic, v))
                    print(f"[{codec}] round {i + 1} {v.label}: {n / r.seconds:,.0f} events/s, "
                          f"peak RSS {r.rss_mib:.0f} MiB, CPU {r.cpu:.1f} s", flush=True)
            report(codec, n, variants, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
