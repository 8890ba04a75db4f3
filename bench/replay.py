"""Throughput and memory of the replay core, against `orjson.loads` alone on the same input.

    python bench/replay.py [--events 1000000] [--repeat 3] [--case dense|sparse|both]
                           [--file traces.jsonl] [--tree DIR]

Simulates about ``--events`` events, dense (over 4 h) and sparse (30 events/s over every
cohort: few events per (cohort, signal) window, so stage 2 dominates), or reads ``--file``;
holds the lines in memory, then, in the same process, times (a) `orjson.loads` of every line
and (b) the detection core (decode, hard rules, windows, scoring, alert lifecycle) over the
same lines, the two taking turns every 16,384 lines; it reports the median of ``--repeat``
such runs (and every run's ratio). It prints events/s for both and their ratio, the core's
peak memory (a process-wide peak: the sparse case's counts only what it adds over the dense
one's), and the baseline state per (cohort, signal): serialized bytes (what a changelog table
stores) and resident bytes. Times are the process's CPU time, so other work on a shared
machine is not counted as the core's (both passes are single-threaded). ``--tree DIR`` times
another checkout's code (an earlier commit's, see ``bench/replay_versus.py``) with this
harness.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

# The checkout whose code is timed: ``--tree``, read before anything of it is imported.
sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
                       if "--tree" in sys.argv[:-1] else Path(__file__).resolve().parents[1]))

from detector.config import load_config

if (Path(sys.path[0]) / "detector" / "core").is_dir():
    from detector.core.pipeline import Pipeline
    from detector.core.snapshot import dump_route, load_route, routes
    from detector.core.stage2 import Stage2
    from detector.lab.replay import BLOCK_LINES
    from detector.runtime import tune_gc
else:   # a checkout from before the layers (issue 16), e.g. e45989b
    from detector.pipeline import Pipeline, Stage2  # type: ignore[no-redef]
    from detector.replay import BLOCK_LINES  # type: ignore[no-redef]
    from detector.state import dump_route, load_route, routes  # type: ignore[no-redef]

    from detector.cli import tune_gc  # type: ignore[no-redef,attr-defined]

#: The sparse case's events per second (issue 15: what most tenants look like).
SPARSE_RATE = 30.0
#: Lines per turn: the two passes alternate every CHUNK lines, so both see the same machine.
CHUNK = 64 * BLOCK_LINES


def _orjson_chunk(lines: list[bytes]) -> float:
    loads = orjson.loads
    t0 = time.process_time()
    for line in lines:
        try:  # noqa: SIM105 - contextlib.suppress costs a frame per line in the baseline
            loads(line)
        except orjson.JSONDecodeError:
            pass
    return time.process_time() - t0


def _interleaved_pass(lines: list[bytes]) -> tuple[float, float, Pipeline, int]:
    """(orjson seconds, core seconds, pipeline, alert emissions) over all lines.

    The core does what `detector replay` does, blocks of lines through one pipeline; every
    CHUNK lines it yields to `orjson.loads` of the next chunk, so a slow spell of this shared
    machine (its speed drifts by +-15 % within a minute) lands on both sides alike."""
    pipe = Pipeline(load_config(None, env=False))
    feed = pipe.feed_many
    n_alerts = 0
    t_json = t_core = 0.0
    for c in range(0, len(lines), CHUNK):
        chunk = lines[c:c + CHUNK]
        t_json += _orjson_chunk(chunk)
        t0 = time.process_time()
        for i in range(0, len(chunk), BLOCK_LINES):
            n_alerts += len(feed(chunk[i:i + BLOCK_LINES]))
        t_core += time.process_time() - t0
    t0 = time.process_time()
    n_alerts += len(pipe.finish())
    t_core += time.process_time() - t0
    return t_json, t_core, pipe, n_alerts


def _state_sizes(s2: Stage2) -> tuple[int, float, float]:
    """(pairs, serialized bytes per pair, resident bytes per pair) of stage-2 state.

    Resident: the state's own dump loaded into a fresh Stage2 under tracemalloc, so only
    allocations that make up the state are counted."""
    pairs = sum(len(m.baselines) for m in s2.models.values())
    blobs = [dump_route(s2, r) for r in routes(s2)]
    serialized = sum(map(len, blobs))
    fresh = Stage2(load_config(None, env=False))
    gc.collect()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for b in blobs:
        load_route(fresh, b)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    resident = sum(st.size_diff for st in after.compare_to(snap0, "filename"))
    return pairs, serialized / max(1, pairs), resident / max(1, pairs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--file", help="a JSON Lines file to use instead of simulating")
    ap.add_argument("--tree", help="time this checkout's code instead of this one's")
    ap.add_argument("--case", choices=["dense", "sparse", "both"], default="both",
                    help="dense: --events over 4 h; sparse: simulate --rate 30, all cohorts, "
                    "as long as --events needs (4 h at least)")
    args = ap.parse_args()
    tune_gc()   # as `detector replay` runs (both passes below run under it)

    if args.file:
        return _measure(Path(args.file), args.repeat)
    from detector.lab.simulate import simulate

    for case, rate in (("dense", args.events / (4.0 * 3600)), ("sparse", SPARSE_RATE)):
        if args.case in (case, "both"):
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-replay-{case}-"))
            # every incident needs 4 h; the sparse case then has more events than --events
            simulate(tmp, hours=max(4.0, args.events / (rate * 3600)), seed=1, rate=rate)
            print(f"== {case}: simulate --rate {rate:,.0f}")
            _measure(tmp / "traces.jsonl", args.repeat)
    return 0


def _measure(path: Path, repeat: int) -> int:
    lines = [line.rstrip(b"\n") for line in path.open("rb") if line.strip()]
    events = sum(1 for _ in lines) + sum(line.count(b'"operation"') - 1
                                         for line in lines if line.startswith(b"["))
    print(f"input: {path} — {len(lines):,} lines, ~{events:,} events, "
          f"{sum(map(len, lines)) / len(lines):.0f} bytes/line")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runs = []
    for _ in range(repeat):
        t_j, t_c, pipe, n_alerts = _interleaved_pass(lines)
        runs.append((t_j / t_c, t_j, t_c))
    ratios = sorted(r[0] for r in runs)
    _, t_json, t_core = sorted(runs)[len(runs) // 2]   # the median run
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pairs, ser_per_pair, res_per_pair = _state_sizes(pipe.stage2)
    decoded = pipe.decoded

    json_rate = events / t_json
    core_rate = decoded / t_core
    print(f"orjson.loads alone     {json_rate:>12,.0f} events/s  ({t_json:.2f} s, median run)")
    print(f"detection core         {core_rate:>12,.0f} events/s  ({t_core:.2f} s, "
          f"{n_alerts} alert emissions)")
    print(f"core / orjson          {core_rate / json_rate:>12.1%}   (target >= 25 %; "
          f"{len(runs)} runs: {', '.join(f'{r * decoded / events:.1%}' for r in ratios)})")
    print(f"peak RSS growth        {(rss1 - rss0) / 1024:>12,.1f} MiB over holding the input")
    print(f"(cohort, signal) pairs {pairs:>12,}")
    print(f"state per pair         {ser_per_pair:>12,.0f} B serialized, "
          f"{res_per_pair:,.0f} B resident   (target <= 2048 B)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
