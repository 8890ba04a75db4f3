"""This tree's replay core against another tree's, on the same input, in one run.

    python bench/replay_versus.py BASE_TREE [--file traces.jsonl] [--rounds 5]

BASE_TREE is a checkout of an earlier commit with its C extension built or copied in, e.g.
``git worktree add ../base e45989b && cp detector/_tally*.so ../base/detector/``. Each round
runs this tree's ``bench/replay.py --repeat 1`` on the base tree's code (``--tree``), then on
this tree's, as separate processes with the same interpreter, harness and input (a 4-hour
``detector simulate`` file by default), so a slow spell of a shared machine lands on both
alike. Each run reports its core's speed as a share of ``orjson.loads`` on the same lines (CPU
time); this prints every round's pair, the medians and this tree's median over the base's (the
issue-12 target: at least 0.90).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SHARE = re.compile(rb"core / orjson\s+([0-9.]+)%")


def core_share(tree: Path, path: Path) -> float:
    """Core events/s over orjson events/s, as a fraction, from one run on TREE's code."""
    out = subprocess.run(
        [sys.executable, str(HERE / "bench" / "replay.py"), "--file", str(path), "--repeat", "1",
         "--tree", str(tree)], cwd=tree, check=True, capture_output=True).stdout
    m = SHARE.search(out)
    if m is None:
        raise SystemExit(f"no 'core / orjson' figure from {tree}:\n{out.decode()}")
    return float(m.group(1)) / 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path, help="checkout of the commit to compare against")
    ap.add_argument("--file", type=Path, help="JSON Lines input (default: simulate 4 h, seed 1)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    path = args.file
    if path is None:
        out = Path(tempfile.mkdtemp(prefix="bench-versus-"))
        subprocess.run([sys.executable, "-m", "detector.cli", "simulate", "--out", str(out),
                        "--hours", "4", "--seed", "1"], cwd=HERE, check=True,
                       capture_output=True)
        path = out / "traces.jsonl"
    base, this = [], []
    for r in range(args.rounds):
        base.append(core_share(args.base.resolve(), path))
        this.append(core_share(HERE, path))
        print(f"round {r + 1}: base {base[-1]:.1%}  this {this[-1]:.1%}  "
              f"ratio {this[-1] / base[-1]:.2f}", flush=True)
    mb, mt = statistics.median(base), statistics.median(this)
    per_round = statistics.median(t / b for t, b in zip(this, base, strict=True))
    print(f"median core/orjson: base {mb:.1%}  this {mt:.1%}  this/base {mt / mb:.2f} "
          f"(median of per-round ratios {per_round:.2f}; target >= 0.90)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
