"""Detection limits of the rate test: the smallest change seen within three and ten windows,
and the issue-12 targets measured through the Pipeline beside the optimal sequential bound.

    python bench/detection_limits.py [--threshold 5] [--seeds 5] [--run-length 6e6]

For a cohort with ``n`` relevant events a window and a base rate ``p``, a rise by a factor m
is "seen within three windows" when the typical count (the Poisson median) of three windows
together scores above the threshold, with the current window alone leaning at least half way
(the detector's multi-window rule) and at least 3 events. "Within ten windows" is the same
test on ten windows' typical count together: what a sequential statistic that accumulates
ten windows can see at the same threshold. A collapse is the same for zero events.
Over-dispersion is taken as 1 (pure counting noise): noisier signals need more.

The target rows then run traffic of exactly that shape through the Pipeline at the default
config (tests/test_detection_targets.py: six hours clean, then the rise; one run per seed)
and print the windows to the first alert and to sev2 beside the optimal sequential bound:
an expected delay of ln(run length) / KL windows, KL the Kullback-Leibler divergence per
window of the shifted Poisson counts from the baseline ones.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines.poisson import poisson_score
from detector.config import load_config
from tests.test_detection_targets import SEEDS, TARGETS, delays


def _median(mu: float) -> int:
    return max(0, math.floor(mu + 1 / 3 - 0.02 / max(mu, 1e-9)))   # Poisson median, close


def seen(n: float, p: float, m: float, thr: float, windows: int = 3) -> bool:
    one, many = n * p, windows * n * p
    k1, kw = _median(one * m), _median(many * m)
    lean = windows > 3 or poisson_score(k1, one) >= thr / 2
    return poisson_score(kw, many) >= thr and lean and kw >= 3


def smallest_rise(n: float, p: float, thr: float, windows: int = 3) -> float | None:
    m = 1.1
    while m <= 1 / p:
        if seen(n, p, m, thr, windows):
            return m
        m *= 1.05
    return None


def poisson_kl(lam1: float, lam0: float) -> float:
    """KL divergence of Poisson(lam1) from Poisson(lam0), per window.

    >>> round(poisson_kl(3.0, 1.0), 3)
    1.296
    """
    return lam1 * math.log(lam1 / lam0) - lam1 + lam0


def sequential_bound(n: float, p: float, m: float, run_length: float) -> float:
    """Expected windows to detect a rise ``m`` of ``n * p`` expected events at the given
    average run length between false alarms (Lorden's bound, ln(ARL) / KL).

    >>> round(sequential_bound(100, 0.01, 3, 6e6), 1)
    12.0
    """
    return math.log(run_length) / poisson_kl(n * p * m, n * p)


def _cell(xs: list[int]) -> str:
    return f"{statistics.median(xs):g}/{max(xs)}" if xs else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threshold", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="Pipeline runs per target")
    ap.add_argument("--run-length", type=float, default=6e6,
                    help="windows between false alarms per (cohort, signal) for the bound")
    args = ap.parse_args()
    thr, rates = args.threshold, (0.005, 0.01, 0.05, 0.2)
    for windows in (3, 10):
        print(f"threshold {thr}: smallest rise seen within {windows} windows (x base rate)")
        print(f"{'events/window':>14} " + " ".join(f"{'p=' + str(p):>9}" for p in rates))
        for n in (10, 30, 100, 300, 1000, 3000):
            cells = []
            for p in rates:
                m = smallest_rise(n, p, thr, windows)
                cells.append(f"{f'x{m:.1f}' if m else '-':>9}")
            print(f"{n:>14} " + " ".join(cells))
        print()
    print("collapse to zero seen within 3 windows when n*p >= "
          f"{next(x / 10 for x in range(1, 1000) if poisson_score(0, 3 * x / 10) <= -thr):.1f}"
          " expected events a window")
    config = load_config(None, env=False)
    seeds = range(1, args.seeds + 1)
    print(f"\ntargets through the Pipeline (default config, seeds 1-{args.seeds}), windows "
          f"from the start of the rise; bound at a run length of {args.run_length:.3g}:")
    print(f"{'signal':<28} {'n':>4} {'p':>6} {'rise':>5} {'bound':>6} {'target':>8} "
          f"{'first alert (median/max)':>25} {'sev2 (median/max)':>18} missed")
    for t in TARGETS:
        got = [delays(config, t, s) for s in seeds]
        first = [d[0] for d in got if d[0] is not None]
        sev2 = [d[1] for d in got if d[1] is not None]
        missed = sum(d[0] is None or d[1] is None for d in got)
        print(f"{t.signal:<28} {t.n:>4g} {t.base:>6g} {'x' + format(t.rise, 'g'):>5} "
              f"{sequential_bound(t.n, t.base, t.rise, args.run_length):>6.1f} "
              f"{f'{t.first_within}/{t.sev2_within}':>8} {_cell(first):>25} {_cell(sev2):>18} "
              f"{missed}/{len(got)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
