"""Stage 1's per-event costs in process: decoding by key order, counting in C and Python.

    python bench/stage1.py [--events 200000] [--repeat 5]

On bench/stream.py's traffic in 100-event batches, best of ``--repeat``, in µs an event:
decoding with keys in the contract's order and with sorted keys (and ``orjson.loads`` of the
same bytes, the baseline), and the counting (detector/core/_tally.c against
``Counting._add_py``). The runs of each group take turns.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests" / "integration")]

from stream import events  # noqa: E402

from detector.config import load_config  # noqa: E402
from detector.core import counting  # noqa: E402
from detector.core.aggregator import Aggregator  # noqa: E402
from detector.core.events import decode_many  # noqa: E402

CHUNK = 82   # messages a stage-1 chunk holds at 100 events each (stage1_runner.CHUNK_EVENTS)


def turns(fs: list[Callable[[], object]], n: int, repeat: int) -> list[float]:
    """µs an event for each of ``fs``, the best of ``repeat`` runs, the functions taking
    turns so that a slow minute of the machine does not fall on one of them only."""
    out = [float("inf")] * len(fs)
    for _ in range(repeat):
        for i, f in enumerate(fs):
            t = time.perf_counter()
            f()
            out[i] = min(out[i], time.perf_counter() - t)
    return [x / n * 1e6 for x in out]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n, r = args.events, args.repeat
    if counting._tally is None:
        raise SystemExit("detector.core._tally is not built (or DETECTOR_NO_EXTENSIONS is set)")
    evs = events(n)
    srt = [orjson.dumps(orjson.loads(e), option=orjson.OPT_SORT_KEYS) for e in evs]
    batches = {name: [b"[" + b",".join(e[i:i + 100]) + b"]" for i in range(0, n, 100)]
               for name, e in (("contract order", evs), ("sorted keys", srt))}
    chunks = {k: [v[i:i + CHUNK] for i in range(0, len(v), CHUNK)] for k, v in batches.items()}

    print(f"{n:,} events in 100-event messages; µs an event, best of {r}")
    names = list(batches)
    fs = [*(lambda ms=batches[k]: [orjson.loads(m) for m in ms] for k in names),
          *(lambda cs=chunks[k]: [decode_many(c) for c in cs] for k in names)]
    us = turns(fs, n, r)
    for i, name in enumerate(names):
        print(f"  orjson.loads, {name:15s} {us[i]:6.3f}")
    for i, name in enumerate(names):
        print(f"  decode_many, {name:16s} {us[len(names) + i]:6.3f}")

    cfg = load_config(None, env=False)
    dec = [decode_many(c)[0] for c in chunks["contract order"]]
    def count(python: bool) -> Callable[[], None]:
        def run() -> None:
            agg = Aggregator(cfg)
            add = agg._add_py if python else agg.add_many
            for d in dec:
                add(d)
        return run
    c_cnt, py_cnt = turns([count(False), count(True)], n, r)
    print(f"  counting: C {c_cnt:.3f}, Python {py_cnt:.3f} ({py_cnt / c_cnt:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
