"""Per-core costs for the capacity model in docs/scaling.md (not a test).

    python bench/capacity.py [--tenants 400] [--rate 100] [--hours 1] [--repeat 3]

On clean simulated traffic (``detector simulate --scenario none``: every app, environment and
tenant, all signals), in one process, CPU seconds (``time.process_time``) of:

* stage 1 per event (decode, hard rules, counting into partials);
* stage 2 per scored (cohort, signal) pair-window (merge, scoring, learning, grouping,
  lifecycle), all windows of the run, warm-up included;
* the changelog: bytes of every route key's state as the worker writes it (zlib'd msgpack)
  per (cohort, signal) baseline, and the CPU of writing it (the worker rewrites every route key
  of a partition when a window closes there);
* the stage-2 topic: bytes of a (window, cohort) partial as stage 1 sends it (msgpack), and
  stage 2's CPU to decode and merge one (the stream merges one per flush per worker that saw
  the cohort, not one per window);
* a restore: loading the state back (what a worker that takes over a partition does after
  reading the changelog), per 1,000 cohorts;
* stage 2 split over 2 shards by the finest cohort (:mod:`detector.core.shards`): pairs per
  shard and their spread (max/mean) on this traffic and on the same traffic as one app in one
  environment, and the CPU of the split against one Stage2 (the replicated coarser cohorts).

The check: the same costs measured on ``bench/stream.py``'s traffic (its events, 200,000 of
them here), as worker CPU per million events, to set beside what ``bench/stream.py`` measured
through the broker; the difference is the Kafka edge (fetching, flushing, the Faust agent).

``--spread-only`` prints just the 2-shard spreads (counts, the same every run), on the
simulated traffic and on ``bench/stream.py``'s own (1 M events, 4 apps and one app).

Figures are medians over ``--repeat`` rounds (CPU seconds: the machine is shared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.config import load_config  # noqa: E402
from detector.core.partials import decode_partial, encode, merge_keyed  # noqa: E402
from detector.core.shards import ShardedStage2  # noqa: E402
from detector.core.snapshot import dump_route, load_route, routes  # noqa: E402
from detector.core.stage1 import Stage1  # noqa: E402
from detector.core.stage2 import Stage2  # noqa: E402
from detector.lab.simulate import simulate  # noqa: E402

BLOCK = 4096


def traffic(tenants: int, rate: float, hours: float) -> list[bytes]:
    with tempfile.TemporaryDirectory() as d:
        simulate(Path(d), hours=hours, seed=3, rate=rate, tenants=tenants, scenarios=[])
        return (Path(d) / "traces.jsonl").read_bytes().splitlines()


def one_app(lines: list[bytes]) -> list[bytes]:
    """The same events, all from one app in production (one root cohort)."""
    out = []
    for line in lines:
        try:
            e = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(line)   # the simulator's malformed lines stay malformed
            continue
        if isinstance(e, dict):
            e["app"], e["environment"] = "support-agent", "production"
        out.append(orjson.dumps(e))
    return out


class Run:
    """Stage 1 then stage 2 over the lines, each timed apart."""

    def __init__(self, lines: list[bytes], make: Callable[[], Stage2]) -> None:
        cfg = load_config(None, env=False)
        s1, s2 = Stage1(cfg), make()
        self.s1_cpu = self.s2_cpu = 0.0
        self.events = 0
        self.partials = self.partial_bytes = 0
        self.wire: list[bytes] = []
        for i in range(0, len(lines), BLOCK):
            t = time.process_time()
            out = s1.feed_many(lines[i:i + BLOCK])
            wm = s1.wm
            parts = s1.drain() if wm.due() else []
            t2 = time.process_time()
            self.s1_cpu += t2 - t
            self.events += out.decoded
            self.partials += len(parts)
            wire = [encode(p) for p in parts]
            self.partial_bytes += sum(map(len, wire))
            self.wire += wire[:20_000 - len(self.wire)]
            for p in parts:
                s2.add_partial(p)
            s2.apply(sorted(out.hits, key=lambda h: h.ts), wm.closed if parts else None)
            self.s2_cpu += time.process_time() - t2
        self.stage2 = s2


def merge_us(wire: list[bytes]) -> float:
    """CPU us to decode one partial and merge it into a window's (twice over: the second
    merge finds its key, as a later flush's partial of the same cohort does)."""
    acc: dict[tuple[int, int, tuple[str, ...]], object] = {}
    t = time.process_time()
    for _ in range(2):
        for b in wire:
            p = decode_partial(b)
            merge_keyed(acc, (p.window, p.level, p.cohort), p, 20)  # type: ignore[arg-type]
    return (time.process_time() - t) / (2 * len(wire)) * 1e6


def state_figures(s2: Stage2) -> tuple[int, int, int, float, float]:
    """(cohorts, pairs, changelog bytes, CPU s to write it all, CPU s to load it all)."""
    cohorts = len(s2.models)
    pairs = sum(len(m.baselines) for m in s2.models.values())
    t = time.process_time()
    docs = [dump_route(s2, r) for r in sorted(routes(s2))]
    dump = time.process_time() - t
    fresh = Stage2(s2.config)
    t = time.process_time()
    for d in docs:
        load_route(fresh, d)
    load = time.process_time() - t
    assert len(fresh.models) == cohorts
    return cohorts, pairs, sum(map(len, docs)), dump, load


def check(n: int) -> tuple[float, float, float]:
    """bench/stream.py's events in process: CPU s per million events of stage 1, stage 2 and
    the changelog writes (every route key at each window close, as the worker does live)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import stream  # the bench's traffic generator

    evs = stream.events(n) + stream.closers(n)
    cfg = load_config(None, env=False)
    s1, s2 = Stage1(cfg), Stage2(cfg)
    c1 = c2 = cw = 0.0
    for i in range(0, len(evs), BLOCK):
        t = time.process_time()
        out = s1.feed_many(evs[i:i + BLOCK])
        parts = s1.drain() if s1.wm.due() else []
        t2 = time.process_time()
        c1 += t2 - t
        before = s2.windows_closed
        for p in parts:
            s2.add_partial(p)
        s2.apply(sorted(out.hits, key=lambda h: h.ts), s1.wm.closed if parts else None)
        t3 = time.process_time()
        c2 += t3 - t2
        if s2.windows_closed != before:
            for r in routes(s2):
                dump_route(s2, r)
        cw += time.process_time() - t3
    return c1 / n * 1e6, c2 / n * 1e6, cw / n * 1e6


def stream_spreads() -> None:
    """The 2-shard spread on bench/stream.py's traffic, 4 apps and one app."""
    sys.path.insert(0, str(ROOT / "bench"))
    import stream

    n = 1_000_000
    for kind in ("apps", "one-app"):
        evs = stream.events(n, traffic=kind) + stream.closers(n)
        sh = Run(evs, lambda: ShardedStage2(load_config(None, env=False), 2)).stage2
        assert isinstance(sh, ShardedStage2)
        xs = [x.pairs_scored for x in sh.shards]
        print(f"bench/stream.py's traffic ({kind}), 2 shards by finest cohort: pairs "
              f"{', '.join(f'{x:,}' for x in xs)}, spread (max/mean) {spread(xs):.2f}",
              flush=True)


def spread(xs: list[int]) -> float:
    return max(xs) / (sum(xs) / len(xs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tenants", type=int, default=400)
    ap.add_argument("--rate", type=float, default=100.0, help="events/s of the simulation")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--spread-only", action="store_true",
                    help="only the 2-shard spreads (simulated and bench/stream.py traffic)")
    args = ap.parse_args()
    lines = traffic(args.tenants, args.rate, args.hours)
    single = one_app(lines)
    print(f"simulate --scenario none --tenants {args.tenants} --rate {args.rate:g} --hours "
          f"{args.hours:g}: {len(lines):,} lines", flush=True)
    pb: list[float] = []
    mu: list[float] = []
    if args.spread_only:
        for name, src in (("simulated", lines), ("simulated as one app", single)):
            sh = Run(src, lambda: ShardedStage2(load_config(None, env=False), 2)).stage2
            assert isinstance(sh, ShardedStage2)
            xs = [x.pairs_scored for x in sh.shards]
            print(f"{name}, 2 shards by finest cohort: pairs {', '.join(f'{x:,}' for x in xs)}"
                  f", spread (max/mean) {spread(xs):.2f}", flush=True)
        stream_spreads()
        return 0
    s1_us, s2_us, b_pair, dump_us, load_ms, ratio = [], [], [], [], [], []
    sp: dict[str, list[float]] = {"apps": [], "one-app": []}
    chk: list[tuple[float, float, float]] = []
    for i in range(args.repeat):
        one = Run(lines, lambda: Stage2(load_config(None, env=False)))
        s2 = one.stage2
        cohorts, pairs, nbytes, dump, load = state_figures(s2)
        pb.append(one.partial_bytes / one.partials)
        mu.append(merge_us(one.wire))
        s1_us.append(one.s1_cpu / one.events * 1e6)
        s2_us.append(one.s2_cpu / s2.pairs_scored * 1e6)
        b_pair.append(nbytes / pairs)
        dump_us.append(dump / pairs * 1e6)
        load_ms.append(load / cohorts * 1000 * 1000)
        for name, src in (("apps", lines), ("one-app", single)):
            sh = Run(src, lambda: ShardedStage2(load_config(None, env=False), 2)).stage2
            assert isinstance(sh, ShardedStage2)
            sp[name].append(spread([x.pairs_scored for x in sh.shards]))
            if name == "apps":
                sharded = Run(lines, lambda: ShardedStage2(load_config(None, env=False), 2))
                ratio.append(sharded.s2_cpu / one.s2_cpu)
        chk.append(check(200_000))
        print(f"round {i + 1}: bench/stream.py's traffic in process: stage 1 {chk[-1][0]:.2f}, "
              f"stage 2 {chk[-1][1]:.2f}, changelog writes {chk[-1][2]:.2f} CPU s per million "
              f"events", flush=True)
        print(f"round {i + 1}: {one.events:,} events, {len(s2.models):,} cohorts "
              f"({cohorts:,}), {s2.pairs_scored:,} pair-windows scored, {pairs:,} pairs held; "
              f"stage 1 {s1_us[-1]:.2f} us/event, partial {pb[-1]:.0f} B merged in "
              f"{mu[-1]:.1f} us, "
              f"stage 2 {s2_us[-1]:.1f} us/pair-window, "
              f"changelog {b_pair[-1]:.0f} B/pair (all {nbytes / 1e6:.2f} MB), write "
              f"{dump_us[-1]:.1f} us/pair, restore {load_ms[-1]:.0f} ms/1,000 cohorts; "
              f"2 shards: pairs spread {sp['apps'][-1]:.2f} (one app {sp['one-app'][-1]:.2f}), "
              f"stage-2 CPU {ratio[-1]:.2f}x one Stage2", flush=True)

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3g} (rounds {', '.join(f'{x:.3g}' for x in xs)})"

    print(f"stage 1, CPU us per event: {med(s1_us)}")
    print(f"stage 2, CPU us per scored pair-window: {med(s2_us)}")
    print(f"stage-2 topic, bytes per (window, cohort) partial: {med(pb)}; decoded and merged "
          f"in {med(mu)} CPU us")
    print(f"changelog, bytes per (cohort, signal) pair: {med(b_pair)}")
    print(f"changelog write, CPU us per pair: {med(dump_us)}")
    print(f"restore, CPU ms per 1,000 cohorts: {med(load_ms)}")
    print("bench/stream.py's traffic in process, CPU s per million events: stage 1 "
          f"{med([c[0] for c in chk])}, stage 2 {med([c[1] for c in chk])}, changelog writes "
          f"{med([c[2] for c in chk])}")
    print(f"2 shards by finest cohort, pairs spread (max/mean): {med(sp['apps'])}; one app in "
          f"one environment: {med(sp['one-app'])}; stage-2 CPU against one Stage2: {med(ratio)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
