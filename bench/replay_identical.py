"""Check that this tree's replay output is byte-identical to another tree's on simulated traffic.

    python bench/replay_identical.py BASE_TREE [--hours 4] [--seed 1] [--keep DIR]

BASE_TREE is a checkout of the commit whose behaviour must be kept, with its C extension built
or copied in (``git worktree add ../ref 9a60c0a && cp detector/_tally*.so ../ref/detector/``).
It simulates ``--hours`` of traffic with every default incident (this tree's simulator), replays
it with each tree's code (``detector replay`` with ``--alerts-out``, ``--scores-out`` and
``--dead-letter``) and compares the three files byte for byte: a speed-up must not change what
pages, what every (window, cohort, signal) scored, or what was rejected. Exit status 1 and the
first differing line on any difference. (About a minute for 4 hours; too slow for the tests.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
OUTPUTS = ("alerts", "scores", "dead")
_RUN = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from detector.cli import main; "
        "raise SystemExit(main())")


def replay(tree: Path, path: Path, out: Path) -> None:
    """``detector replay`` of TREE's code over PATH, its three outputs into OUT."""
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", _RUN, str(tree), "replay", str(path), "--quiet",
                    "--alerts-out", str(out / "alerts"), "--scores-out", str(out / "scores"),
                    "--dead-letter", str(out / "dead")], check=True, cwd=tree)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []   # none written


def first_difference(a: list[bytes], b: list[bytes]) -> str | None:
    for i, (la, lb) in enumerate(zip(a, b, strict=False), 1):
        if la != lb:
            return f"line {i}:\n  base {la[:300]!r}\n  this {lb[:300]!r}"
    if len(a) != len(b):
        return f"{len(a)} lines against {len(b)}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path, help="checkout of the commit whose output must be kept")
    ap.add_argument("--hours", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="work here (kept) instead of a temporary folder")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-identical-"))
    subprocess.run([sys.executable, "-c", _RUN, str(HERE), "simulate", "--out",
                    str(work / "sim"), "--hours", str(args.hours), "--seed", str(args.seed)],
                   check=True, cwd=HERE)
    path = work / "sim" / "traces.jsonl"
    replay(args.base.resolve(), path, work / "base")
    replay(HERE, path, work / "this")
    bad = 0
    for name in OUTPUTS:
        a, b = _lines(work / "base" / name), _lines(work / "this" / name)
        diff = first_difference(a, b)
        verdict = "identical" if diff is None else f"DIFFERENT at {diff}"
        print(f"{name:7} {len(a):>9,} lines  {verdict}")
        bad += diff is not None
    print(f"input: {path} ({args.hours:g} h, seed {args.seed})")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
