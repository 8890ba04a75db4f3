"""Count-aware scores: how surprising is ``k`` events when ``mu`` were expected?

The score is the standard-normal quantile of the Poisson tail probability, computed with the
Wilson–Hilferty cube-root approximation (accurate to a few hundredths of a unit from k = 1),
so 3 of 10 and 300 of 1000 give very different evidence and one threshold means the same for
every signal.

>>> round(poisson_score(3, 0.5), 2)      # exact tail P(X>=3) = 0.0144 -> z = 2.19
2.14
>>> round(poisson_score(300, 100), 1)    # overwhelming
15.9
>>> round(poisson_score(0, 10), 2)       # a collapse: P(X=0) = 4.5e-5 -> z = -3.92
-3.8
>>> poisson_score(0, 0.3) > -1           # zero of a handful expected: no evidence
True
"""

from __future__ import annotations

from math import sqrt

__all__ = ["poisson_score"]


def poisson_score(k: float, mu: float) -> float:
    """Signed score: positive when ``k`` is surprisingly high, negative when low."""
    if mu <= 0.0:
        mu = 1e-9
    high = k >= mu
    if high:
        if not k > 0:
            return 0.0
    else:
        k += 1.0   # P(X <= k) = 1 - P(X >= k + 1)
    # P(X >= k) = P(chi2(2k) <= 2 mu); Wilson–Hilferty on the chi-square. (Inline, with the
    # clamps as comparisons: this runs for every rate and volume score.)
    z = 3.0 * sqrt(k) * (1.0 - 1.0 / (9.0 * k) - (mu / k) ** (1.0 / 3.0))
    if high:
        return z if z > 0.0 else 0.0
    return z if z < 0.0 else 0.0
