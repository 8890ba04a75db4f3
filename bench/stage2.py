"""Stage 2 alone: (cohort, signal) window updates per second on one core.

    python bench/stage2.py [--events 1000000] [--repeat 3] [--case dense|sparse|both]
                           [--file traces.jsonl] [--base TREE]

The traffic of ``bench/replay.py`` (dense, and sparse: ``simulate --rate 30`` over every
cohort), or ``--file``, goes through stage 1 once; what stage 1 hands stage 2 (partials,
hard-rule hits, watermarks: what ``Pipeline.feed_many`` passes on) is kept as msgpack, and
stage 2 alone is timed over it, from partials decoded before the clock starts to the last
alert. A (cohort, signal) window update is one signal of one cohort's closed window with data
in it (volume: every cohort window stage 2 closes, silent ones included): what scoring and
learning work on. CPU time of this process, median of ``--repeat`` runs.

``--base TREE`` times another checkout's stage 2 too (an earlier commit's, e.g. main before
a change), in a child process with the same harness and input, the two taking turns each
repeat, so a slow spell of a shared machine lands on both alike; it prints both and their
ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# The checkout whose code is timed: ``--tree``, read before anything of it is imported.
sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
                       if "--tree" in sys.argv[:-1] else HERE))

from detector.config import load_config  # noqa: E402
from detector.core.partials import decode_partial, encode  # noqa: E402
from detector.core.signals import EVENTS  # noqa: E402
from detector.core.stage1 import Stage1  # noqa: E402
from detector.core.stage2 import Stage2  # noqa: E402
from detector.lab.replay import BLOCK_LINES  # noqa: E402
from detector.runtime import tune_gc  # noqa: E402

#: The sparse case's events per second (as bench/replay.py).
SPARSE_RATE = 30.0

Step = tuple[list[bytes], list, float | None]   # partials (msgpack), hits, watermark


def record(lines: list[bytes]) -> list[Step]:
    """What stage 1 hands stage 2 over ``lines``, in blocks as ``detector replay`` feeds."""
    config = load_config(None, env=False)
    s1 = Stage1(config)
    steps: list[Step] = []
    for i in range(0, len(lines), BLOCK_LINES):
        out = s1.feed_many(lines[i:i + BLOCK_LINES])
        wm = s1.wm
        parts, watermark = [], None
        if wm.due():
            parts = [encode(p) for p in s1.drain()]
            if parts:
                watermark = wm.closed
        if parts or out.hits:
            steps.append((parts, sorted(out.hits, key=lambda h: h.ts), watermark))
    out = s1.finish()
    steps.append(([encode(p) for p in s1.agg.drain_complete()],
                  sorted(out.hits, key=lambda h: h.ts), s1.wm.closed))
    return steps


def run(steps: list[Step]) -> tuple[float, Stage2, int]:
    """(CPU seconds, the stage 2, alert emissions) of one pass over ``steps``."""
    s2 = Stage2(load_config(None, env=False))
    decoded = [([decode_partial(b) for b in parts], hits, wm) for parts, hits, wm in steps]
    n_alerts = 0
    add, apply = s2.add_partial, s2.apply
    t0 = time.process_time()
    for parts, hits, wm in decoded:
        for p in parts:
            add(p)
        n_alerts += len(apply(hits, wm))
    return time.process_time() - t0, s2, n_alerts


def updates(steps: list[Step]) -> int:
    """(cohort, signal) window updates over ``steps``: counted on an untimed pass."""
    s2 = Stage2(load_config(None, env=False))
    scorer = s2.scorer
    kinds = [(s.kind, s.num, s.den) for s in scorer.signals]
    count = 0
    learn = scorer.learn

    def counting(p, own, ds):  # type: ignore[no-untyped-def]
        nonlocal count
        c = p.counts
        for kind, num, den in kinds:
            n = c[EVENTS] if kind == "volume" else c[num] if kind == "quantity" else c[den]
            count += kind == "volume" or n > 0
        return learn(p, own, ds)

    scorer.learn = counting  # type: ignore[method-assign]
    for parts, hits, wm in steps:
        for b in parts:
            s2.add_partial(decode_partial(b))
        s2.apply(hits, wm)
    return count


def worker(path: Path, repeat: int) -> None:
    """One tree's figures, as lines the parent reads: seconds per run, then the checks."""
    lines = [line.rstrip(b"\n") for line in path.open("rb") if line.strip()]
    steps = record(lines)
    for _ in range(repeat):
        t, s2, n_alerts = run(steps)
        print(f"run {t:.6f} {s2.windows_closed} {n_alerts}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--file", help="a JSON Lines file to use instead of simulating")
    ap.add_argument("--base", help="also time this checkout's stage 2 (the before)")
    ap.add_argument("--case", choices=["dense", "sparse", "both"], default="both")
    ap.add_argument("--tree", help=argparse.SUPPRESS)     # a child timing that tree's code
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tune_gc()   # as `detector replay` runs
    if args.worker:
        worker(Path(args.file), args.repeat)
        return 0
    if args.file:
        measure(Path(args.file), args)
        return 0
    from detector.lab.simulate import simulate

    for case, rate in (("dense", args.events / (4.0 * 3600)), ("sparse", SPARSE_RATE)):
        if args.case in (case, "both"):
            with tempfile.TemporaryDirectory(prefix=f"bench-stage2-{case}-") as d:
                tmp = Path(d)
                simulate(tmp, hours=max(4.0, args.events / (rate * 3600)), seed=1, rate=rate)
                print(f"== {case}: simulate --rate {rate:,.0f}")
                measure(tmp / "traces.jsonl", args)
    return 0


def _child(path: Path, tree: Path | None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--file", str(path),
           "--repeat", "1"]
    if tree is not None:
        cmd += ["--tree", str(tree)]
    out = subprocess.run(cmd, cwd=tree or HERE, check=True, capture_output=True, text=True)
    return out.stdout.split()


def measure(path: Path, args: argparse.Namespace) -> None:
    lines = [line.rstrip(b"\n") for line in path.open("rb") if line.strip()]
    steps = record(lines)
    n = updates(steps)
    print(f"input: {path} — {len(lines):,} lines; {n:,} (cohort, signal) window updates")
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.base:
        trees.insert(0, (f"base {args.base}", Path(args.base).resolve()))
    times: dict[str, list[float]] = {name: [] for name, _ in trees}
    seen: set[tuple[str, str]] = set()
    for _ in range(args.repeat):
        for name, tree in trees:   # taking turns, each in its own process
            _, t, windows, alerts = _child(path, tree)
            times[name].append(float(t))
            seen.add((windows, alerts))
    if len(seen) != 1:
        raise SystemExit(f"the trees closed different windows or paged differently: {seen}")
    windows, alerts = seen.pop()
    rates = {}
    for name, ts in times.items():
        t = statistics.median(ts)
        rates[name] = n / t
        print(f"{name:<24} {n / t:>10,.0f} updates/s  ({t:.2f} s median of "
              f"{len(ts)}: {', '.join(f'{x:.2f}' for x in ts)}; {1e6 * t / n:.1f} µs each)")
    print(f"windows closed {windows}, alert emissions {alerts}")
    if args.base:
        print(f"this tree / base         {rates['this tree'] / rates[trees[0][0]]:>10.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
