"""The hostile-input campaign at full size (not a test): a million messages or more of every
hostile class mixed with valid traffic through a real `detector run` on the embedded Tansu
broker (loopback only).

    python bench/hostile.py [--messages 1000000] [--seed 1] [--skip CLASS ...] [--corrupt]

Prints, per class, messages, units (events) and the dead letters they gave by reason, then
the figures: crashes (worker exit, stage-1 errors, tracebacks: must be 0), units accounted for
(decoded + dead-lettered = sent, from the worker's /metrics; the dead-letter topic's records by
reason = the metric's), the worker's peak RSS, and the outputs where the prompt marker was
found (dead-letter topic, alerts topic, the worker's log, /metrics: must be none). Every
problem is printed on a line of its own starting PROBLEM; the exit status is 1 if there is
any. ``--skip`` leaves classes out, to see past one that takes everything down;
``--corrupt`` adds a record batch with a bad CRC to each partition half-way. The classes
and the accounting are in tests/integration/hostile.py (the CI-sized twin is
tests/integration/test_hostile.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from hostile import HOSTILE, VALID, problems, report, run_campaign  # noqa: E402

from detector.lab.broker import Tansu  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=[*HOSTILE, *VALID],
                    metavar="CLASS", help="leave these classes out")
    ap.add_argument("--corrupt", action="store_true",
                    help="half-way, one record batch with a bad CRC into each partition")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="longest wait for the worker to account for everything (s)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    with Tansu(log_dir=tmp) as b:
        tally, out = run_campaign(b, tmp, args.messages, seed=args.seed, skip=args.skip,
                                  corrupt=args.corrupt,
                                  timeout=args.timeout, log=lambda s: print(s, flush=True))
    report(tally, out, log=lambda s: print(s, flush=True))
    print(f"worker log and config in {tmp}")
    return 1 if problems(tally, out) else 0


if __name__ == "__main__":
    sys.exit(main())
