"""Throughput through the streaming edge on an embedded Tansu broker (not a test).

    python bench/stream.py [--events 1000000] [--repeat 3] [--compression lz4]

For 1 event per message and for 100-event JSON-array batches it measures, in one run:
raw aiokafka ``getmany`` + ``orjson.loads`` of the same messages (the floor), then one and two
`detector run` workers, and each worker's peak RSS (VmHWM). Prints figures and ratios.
``--compression`` has the producer compress the traces (the broker then moves fewer bytes).

A worker's run is timed from the moment its first consumer has partitions until the last
window's alerts are out: the traffic ends with a refusal spike in its last window and one
later event per partition that moves event time past that window's end plus the allowed
lateness; the run is done when the alerts topic holds every alert that the same messages give
through the in-process pipeline (no end-of-input flush: a stream never ends), the spike's
among them. The time stage 1 committed its last offset is printed too, and the CPU seconds the
workers and the broker used in the run (two workers and the broker share 2 cores here).

Each round also times a CPU-bound Python loop in one process and in two at once: what this
machine gives two busy processes against one at that moment, the ceiling of the two-worker
ratio here before the broker takes its share of the same 2 cores.

Stage 2's load per worker is read from each worker's ``stage2_load`` log lines: cohort
windows and (cohort, signal) pairs scored, and their spread over the workers (the busiest
worker's share against the mean: 1.0 is even). ``--traffic one-app`` sends the same events from
a single app in a single environment (one root cohort: the case stage 2 keyed by root cohort
cannot spread). CPU seconds per million events are the workers' own (user + system), with one
and with two workers, and their ratio within a round: the scale-out cost this machine can
measure even where two workers share 2 cores with the broker.

It runs ``--repeat`` rounds of raw, one worker, two workers, back to back; figures are medians
over the rounds, and ratios are medians of the ratios within a round: this shared machine's
speed drifts from minute to minute, and one 10 s run can be 30 % off.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from harness import AlertReader, WorkerProc, write_config  # noqa: E402

from detector.config import load_config  # noqa: E402
from detector.core.pipeline import Pipeline  # noqa: E402
from detector.lab.broker import Tansu  # noqa: E402
from detector.lab.replay import BLOCK_LINES  # noqa: E402
from detector.stream.kafka_io import fetch_highwaters, produce  # noqa: E402

P = 4
_runs = itertools.count()


RATE = 200.0
WINDOW = 60.0   # the packaged config's window


def end_ts(n: int) -> float:
    """Traffic of n events ends on a window boundary, so its last window is a full one."""
    return 1_767_571_200.0 + WINDOW * (n // RATE // WINDOW + 1)


APPS = {"apps": ["support-agent", "coding-assistant", "sales-copilot", "payments-agent"],
        "one-app": ["support-agent"]}


def events(n: int, rate: float = RATE, traffic: str = "apps") -> list[bytes]:
    """Model calls from 12 tenants, under 4 apps (``apps``: one app per tenant) or all under
    one (``one-app``), in production; in the last window tenant t00 refuses 60 % of
    requests."""
    t0 = end_ts(n) - n / rate
    rnd = random.Random(1)
    apps = APPS[traffic]
    spike_from = n - int(WINDOW * rate)
    out = []
    for i in range(n):
        refusal = rnd.random() < (0.6 if i >= spike_from and i % 12 == 0 else 0.02)
        out.append(orjson.dumps({
            "ts": t0 + i / rate, "operation": "chat", "trace_id": f"{rnd.getrandbits(128):032x}",
            "tenant": f"t{i % 12:02d}", "app": apps[i % len(apps)], "environment": "production",
            "model": "m-large", "model_version": "2026-05-01", "prompt_version": "v42",
            "policy_version": "p7", "input_tokens": rnd.randint(10, 2000),
            "output_tokens": rnd.randint(10, 800), "latency_ms": round(rnd.random() * 900, 1),
            "finish_reason": "stop", "refusal": refusal, "output_format_valid": True}))
    return out


def closers(n: int) -> list[bytes]:
    """One event per partition (produce() is round-robin) past the last window's end plus
    the allowed lateness (30 s), so the last window of traffic closes as a live stream's
    would, and not so far that the next, empty window closes too."""
    ts = end_ts(n) + 45
    return [orjson.dumps({"ts": ts, "operation": "chat", "tenant": "t00",
                          "app": "support-agent"}) for _ in range(P)]


def expected_alerts(msgs: list[bytes]) -> set[tuple[str, str]]:
    """(alert id, status) of every alert the in-process pipeline gives for ``msgs``."""
    pipe = Pipeline(load_config(None, env=False))
    out: set[tuple[str, str]] = set()
    for i in range(0, len(msgs), BLOCK_LINES):
        out.update((a.id, a.status) for a in pipe.feed_many(msgs[i:i + BLOCK_LINES]))
    return out


def _spin(n: int, go: Any, took: Any) -> None:
    go.wait()
    t = time.perf_counter()
    d: dict[int, int] = {}
    for i in range(n):
        d[i & 1023] = d.get(i & 1023, 0) + i
    took.put(time.perf_counter() - t)


def two_cores(n: int = 6_000_000) -> float:
    """What this machine gives two CPU-bound Python processes against one, now (~1 s each):
    the ceiling of two workers' speed-up here, before the broker takes its share. Each loop
    times itself from a common start: forking this process (~1 GB) takes ~0.15 s."""
    ctx = multiprocessing.get_context("fork")
    longest = []
    for k in (1, 2):
        go, took = ctx.Event(), ctx.Queue()
        ps = [ctx.Process(target=_spin, args=(n, go, took)) for _ in range(k)]
        for p in ps:
            p.start()
        go.set()
        longest.append(max(took.get(timeout=60) for _ in ps))
        for p in ps:
            p.join()
    return 2 * longest[0] / longest[1]


async def raw(bootstrap: str, topic: str, n_events: int) -> float:
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
                    got += len(v) if isinstance(v, list) else 1
    finally:
        await c.stop()
    return got / (time.perf_counter() - (t0 or time.perf_counter()))


async def topic_ends(bootstrap: str, topic: str) -> dict[TopicPartition, int | None]:
    """Each partition's log end (the topic does not change during a run: found once)."""
    tps = [TopicPartition(topic, p) for p in range(P)]
    return await fetch_highwaters(bootstrap, dict.fromkeys(tps, 1))


async def committed_all(bootstrap: str, group: str, ends: dict[TopicPartition, int | None]
                        ) -> bool:
    # OffsetFetch through a consumer that never joins (Tansu drops the admin variant).
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        for tp, end in ends.items():
            if end is None or ((await c.committed(tp)) or 0) < end:
                return False   # an unknown end is not "all committed"
        return True
    finally:
        await c.stop()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def sched_s(pid: int) -> tuple[float, float]:
    """Seconds the process's main thread (the event loop) has run, and has waited in the run
    queue (runnable, not running: the machine's other load), so far."""
    f = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(f[0]) / 1e9, int(f[1]) / 1e9


def loop_time(ws: list[WorkerProc], since: list[tuple[float, float]]) -> tuple[float, float]:
    """The workers' main threads' run and run-queue seconds since ``since``, all together."""
    now = [sched_s(w.pid) for w in ws]
    return (sum(a[0] - b[0] for a, b in zip(now, since, strict=True)),
            sum(a[1] - b[1] for a, b in zip(now, since, strict=True)))


def hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Load(NamedTuple):
    """One worker's stage-2 work in a run."""

    windows_closed: int     # window closes, summed over its stage-2 partitions
    cohort_windows: int     # cohort windows scored
    pairs_scored: int       # (cohort, signal) pairs scored


def stage2_load(w: WorkerProc) -> Load:
    """Sum of the worker's stage-2 partitions' last totals; a partition it lost and got back
    starts again from zero, so each run of its totals counts once."""
    done: dict[int, list[int]] = {}
    last: dict[int, list[int]] = {}
    for e in w.events("stage2_load"):
        q = e["partition"]
        now = [e["windows_closed"], e["cohort_windows"], e["pairs_scored"]]
        prev = last.get(q)
        if prev is not None and now[0] < prev[0]:   # a fresh state object: bank the old one
            done[q] = [a + b for a, b in zip(done.get(q, [0, 0, 0]), prev, strict=True)]
        last[q] = now
    tot = [0, 0, 0]
    for d in (done, last):
        for v in d.values():
            tot = [a + b for a, b in zip(tot, v, strict=True)]
    return Load(*tot)


def spread(xs: list[int]) -> float:
    """The busiest's share against the mean (1.0: even)."""
    return max(xs) / (sum(xs) / len(xs)) if sum(xs) else float("nan")


class Run(NamedTuple):
    seconds: float          # from the first assignment until the last window's alerts were out
    committed: float        # ... until stage 1 had committed everything (checked each second)
    rss_kb: list[int]       # peak RSS per worker
    worker_cpu: float       # CPU seconds the workers used in that time, all together
    broker_cpu: float       # ... and the broker
    spread: float           # seconds between the first and the last worker's partitions
    load: list[Load]        # stage-2 work per worker
    loop_run: float = 0.0   # seconds the workers' main threads (event loops) ran
    loop_wait: float = 0.0  # ... and were runnable but waited for a core (the machine's load)


def assigned_spread(ws: list[WorkerProc]) -> float:
    """Seconds between the first and the last worker's stage-1 assignment (log times)."""
    ts = [datetime.fromisoformat(e["ts"]).timestamp()
          for w in ws for e in w.events("stage1_assigned")[:1]]
    return max(ts) - min(ts) if len(ts) == len(ws) else float("nan")


def through_workers(b: Tansu, tmp: Path, topic: str, n_workers: int, tag: str,
                    expected: set[tuple[str, str]]) -> Run:
    """One timed run. Each call is a new consumer group, reading the topic from the start."""
    group = f"bench-{tag}-{n_workers}-{next(_runs)}"
    cfg = write_config(tmp / f"{group}.toml", brokers=b.bootstrap, partitions=P,
                       traces_topic=topic, alerts_topic=f"alerts-{group}",
                       dead_letter_topic=f"dlq-{group}", group=group,
                       idle_partition_timeout_seconds=5)
    env = {"DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"}
    ends = asyncio.run(topic_ends(b.bootstrap, topic))
    assert b.proc is not None
    broker_pid = b.proc.pid
    ws = [WorkerProc(cfg, tmp / f"{group}-{i}.log", env) for i in range(n_workers)]
    reader = AlertReader(b.bootstrap, f"alerts-{group}")
    try:
        t0 = t_committed = None
        checked = 0.0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if t0 is None:
                if any(w.events("stage1_assigned") for w in ws):
                    t0 = time.perf_counter()  # the clock starts when a consumer has partitions
                    workers_cpu0 = [cpu_s(w.pid) for w in ws]
                    sched0 = [sched_s(w.pid) for w in ws]
                    broker_cpu0 = cpu_s(broker_pid)
                else:
                    time.sleep(0.05)
                continue
            # The watcher must not take CPU the workers need (2 cores here): a long poll of the
            # alerts topic returns as soon as an alert is there, and the commit check, which
            # starts a consumer (~10 ms of CPU) and reads the committed offsets against ends
            # found before the run, runs once a second.
            if t_committed is None and time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                if asyncio.run(committed_all(b.bootstrap, f"{group}-stage1", ends)):
                    t_committed = time.perf_counter() - t0
            if expected <= {(a["id"], a["status"]) for a in reader.poll(0.5)}:
                dt = time.perf_counter() - t0
                cpu = sum(cpu_s(w.pid) - c for w, c in zip(ws, workers_cpu0, strict=True))
                bcpu = cpu_s(broker_pid) - broker_cpu0
                rss = [hwm_kb(w.pid) for w in ws]
                loop = loop_time(ws, sched0)
                # Every window is closed (its alerts are out); the last log lines say so.
                time.sleep(0.5)
                return Run(dt, t_committed or dt, rss, cpu, bcpu, assigned_spread(ws),
                           [stage2_load(w) for w in ws], *loop)
        raise SystemExit(f"{group}: the last window's alerts did not come out in time; "
                         f"see {ws[0].log_path}")
    finally:
        reader.close()
        for w in ws:
            w.stop()


def messages(shape: str, evs: list[bytes]) -> list[bytes]:
    """The events as messages of one shape, plus the closers."""
    tail = closers(len(evs))
    if shape == "single":
        return evs + tail
    return [b"[" + b",".join(evs[i:i + 100]) + b"]" for i in range(0, len(evs), 100)] + tail


def report(tag: str, n: int, raws: list[float], runs: dict[int, list[Run]],
           cores: list[float]) -> None:
    print(f"[{tag}] this machine: two CPU-bound processes do {statistics.median(cores):.2f}x "
          f"the work of one (median of {', '.join(f'{c:.2f}' for c in cores)})", flush=True)
    r = statistics.median(raws)
    print(f"[{tag}] raw getmany + orjson.loads: {r:,.0f} events/s (median of "
          f"{', '.join(f'{x:,.0f}' for x in raws)})", flush=True)
    for k, rs in runs.items():
        med = sorted(rs)[len(rs) // 2]   # the median run
        eps = n / med.seconds
        # Ratios within a round (runs next to each other in time): this machine's speed drifts
        # from minute to minute, so a ratio of medians taken minutes apart is noisier.
        vs_raw = statistics.median(n / x.seconds / y for x, y in zip(rs, raws, strict=True))
        line = (f"[{tag}] {k} worker(s): {eps:,.0f} events/s, median of "
                f"{', '.join(f'{n / x.seconds:,.0f}' for x in rs)} (last window's alerts out "
                f"{med.seconds:.1f} s after partitions were assigned; stage 1 committed all at "
                f"{med.committed:.1f} s); worker/raw {vs_raw:.0%} (median of the rounds)")
        if k != 1 and 1 in runs:
            vs_one = statistics.median(y.seconds / x.seconds
                                       for x, y in zip(rs, runs[1], strict=True))
            line += f"; vs 1 worker {vs_one:.2f}x (median of the rounds)"
        per_m = [x.worker_cpu / n * 1e6 for x in rs]
        line += (f"; worker CPU {statistics.median(per_m):.1f} s per million events (median of "
                 f"{', '.join(f'{c:.1f}' for c in per_m)})")
        if k != 1 and 1 in runs:
            cpu_vs = [x.worker_cpu / y.worker_cpu for x, y in zip(rs, runs[1], strict=True)]
            line += (f", {statistics.median(cpu_vs):.2f}x one worker's (median of "
                     f"{', '.join(f'{c:.2f}' for c in cpu_vs)})")
        loads = [f"{ld.cohort_windows:,} cohort windows / {ld.pairs_scored:,} pairs"
                 for ld in med.load]
        line += f"; stage 2 per worker: {'; '.join(loads)}"
        if k > 1:
            sp = [spread([ld.pairs_scored for ld in x.load]) for x in rs]
            spw = [spread([ld.cohort_windows for ld in x.load]) for x in rs]
            line += (f"; spread (max/mean) of pairs scored {statistics.median(sp):.2f} "
                     f"(rounds {', '.join(f'{v:.2f}' for v in sp)}), of cohort windows "
                     f"{statistics.median(spw):.2f}")
        print(f"{line}; peak RSS {', '.join(f'{m / 1024:.0f} MiB' for m in med.rss_kb)}; "
              f"CPU in that run: workers {med.worker_cpu:.1f} s, broker {med.broker_cpu:.1f} s "
              f"({(med.worker_cpu + med.broker_cpu) / med.seconds:.2f} of {os.cpu_count()} "
              f"cores)", flush=True)


def measure(b: Tansu, tmp: Path, traffic: str, args: argparse.Namespace) -> None:
    """Every shape's rounds on one kind of traffic."""
    n = args.events
    evs = events(n, traffic=traffic)
    expected = expected_alerts(evs + closers(n))
    spike = [i for i, s in expected if s == "firing"]
    print(f"[{traffic}] the in-process pipeline gives {len(expected)} alert emissions "
          f"({len(spike)} firing) for these events", flush=True)
    if not spike:
        raise SystemExit("no alert from the last window's spike: nothing to wait for")
    for shape in args.shape or ("single", "batch100"):
        tag = shape if traffic == "apps" else f"{shape}-{traffic}"
        topic = f"traces-{tag}"
        b.create_topics([topic], P)
        msgs = messages(shape, evs)   # built one shape at a time: 1 M events is ~0.5 GB
        t = time.perf_counter()
        asyncio.run(produce(b.bootstrap, topic, msgs, partitions=P,
                            compression_type=args.compression))
        print(f"[{tag}] produced {n:,} events in {len(msgs):,} messages "
              f"({sum(map(len, msgs)) / 1e6:,.0f} MB, compression {args.compression}): "
              f"{n / (time.perf_counter() - t):,.0f} events/s", flush=True)
        del msgs
        # Rounds of raw, 1 worker, 2 workers: what is compared runs minutes, not tens of
        # minutes, apart.
        raws: list[float] = []
        cores: list[float] = []
        runs: dict[int, list[Run]] = {k: [] for k in args.workers or (1, 2)}
        for i in range(args.repeat):
            cores.append(two_cores())
            raws.append(asyncio.run(raw(b.bootstrap, topic, n + P)))
            for k, rs in runs.items():
                rs.append(through_workers(b, tmp, topic, k, tag, expected))
            print(f"[{tag}] round {i + 1}: two cores {cores[-1]:.2f}x one, "
                  f"raw {raws[-1]:,.0f} events/s, " + ", ".join(
                f"{k} worker(s) {n / rs[-1].seconds:,.0f}"
                + (f" (assigned {rs[-1].spread:.2f} s apart, pairs spread "
                   f"{spread([ld.pairs_scored for ld in rs[-1].load]):.2f}, CPU "
                   f"{rs[-1].worker_cpu / runs[1][-1].worker_cpu:.2f}x one worker's)"
                   if k > 1 and 1 in runs else "")
                for k, rs in runs.items()), flush=True)
        report(tag, n, raws, runs, cores)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of measurements (median)")
    ap.add_argument("--shape", choices=("single", "batch100"), action="append",
                    help="measure only this message shape (repeatable; default: both)")
    ap.add_argument("--workers", type=int, choices=(1, 2), action="append",
                    help="measure only with this many workers (repeatable; default: 1 and 2)")
    ap.add_argument("--traffic", choices=tuple(APPS), action="append",
                    help="apps: 12 tenants under 4 apps; one-app: the same tenants under one "
                         "app in one environment (repeatable; default: apps)")
    ap.add_argument("--compression", choices=("gzip", "snappy", "lz4", "zstd"),
                    help="the producer compresses the traces with this codec (default: none)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    with Tansu(log_dir=tmp) as b:
        for traffic in args.traffic or ("apps",):
            measure(b, tmp, traffic, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
