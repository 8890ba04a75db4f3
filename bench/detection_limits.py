"""Detection limits of the rate test: the smallest change seen within three windows.

    python bench/detection_limits.py [--threshold 5]

For a cohort with ``n`` relevant events a window and a base rate ``p``, a rise by a factor m
is "seen within three windows" when the typical count (the Poisson median) of three windows
together scores above the threshold, with the current window alone leaning at least half way
(the detector's multi-window rule) and at least 3 events. A collapse is the same for zero
events. Over-dispersion is taken as 1 (pure counting noise): noisier signals need more.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines.poisson import poisson_score


def _median(mu: float) -> int:
    return max(0, math.floor(mu + 1 / 3 - 0.02 / max(mu, 1e-9)))   # Poisson median, close


def seen(n: float, p: float, m: float, thr: float) -> bool:
    one, three = n * p, 3 * n * p
    k1, k3 = _median(one * m), _median(three * m)
    return poisson_score(k3, three) >= thr and poisson_score(k1, one) >= thr / 2 and k3 >= 3


def smallest_rise(n: float, p: float, thr: float) -> float | None:
    m = 1.1
    while m <= 1 / p:
        if seen(n, p, m, thr):
            return m
        m *= 1.05
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threshold", type=float, default=5.0)
    thr = ap.parse_args().threshold
    print(f"threshold {thr}: smallest rise seen within 3 windows (x base rate)")
    print(f"{'events/window':>14} " + " ".join(f"{'p=' + str(p):>9}" for p in (0.005, 0.01,
                                                                              0.05, 0.2)))
    for n in (10, 30, 100, 300, 1000, 3000):
        cells = []
        for p in (0.005, 0.01, 0.05, 0.2):
            m = smallest_rise(n, p, thr)
            cells.append(f"{f'x{m:.1f}' if m else '-':>9}")
        print(f"{n:>14} " + " ".join(cells))
    print("collapse to zero seen within 3 windows when n*p >= "
          f"{next(x / 10 for x in range(1, 1000) if poisson_score(0, 3 * x / 10) <= -thr):.1f}"
          " expected events a window")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
