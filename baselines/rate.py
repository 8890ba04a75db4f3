"""Baseline of a rate: events with a flag per unit of a denominator, tested as counts.

The expected rate is a ratio of exponentially weighted sums (a fast and a slow horizon) with
a weak prior, so a rate never seen before is not "infinitely" surprising. Scores are Poisson
scores divided by the learned over-dispersion (Laney's p' idea): real traffic varies more than
pure counting noise, and a signal that is noisier by nature needs stronger evidence.

>>> b = RateBaseline(fast=0.1, slow=0.01)
>>> for _ in range(50):
...     b.learn_one(5, 100)        # 5 % refusals
>>> round(b.expected(), 3)
0.05
>>> fast, slow = b.score_one(30, 100)
>>> fast > 5 and slow > 5           # 30 of 100: clearly abnormal
True
>>> abs(b.score_one(6, 100)[0]) < 1  # 6 of 100: normal noise
True
>>> for _ in range(30):
...     b.learn_one(9, 100, slow=False)  # 9 %: a creep the slow horizon is kept out of
>>> max(b.score_one(9, 100)) < 5 <= b.drift_score(9, 100)
True
"""

from __future__ import annotations

from math import sqrt

from baselines.dispersion import Dispersion
from baselines.ewmean import WarmEWMean
from baselines.poisson import poisson_score

__all__ = ["RateBaseline"]

_PRIOR_K = 0.5   # pseudo-events...
_PRIOR_N = 1.0   # ...per pseudo-unit of denominator
#: Events the two-horizon test must expect in the fast horizon's sums to say anything.
DRIFT_MIN_EXPECTED = 10.0


class RateBaseline:
    __slots__ = ("_disp", "_fast", "_pf", "_ps", "_sd", "_slow", "n")

    def __init__(self, fast: float, slow: float, max_dispersion: float = 25.0) -> None:
        self._fast = (WarmEWMean(fast), WarmEWMean(fast))   # numerator, denominator
        self._slow = (WarmEWMean(slow), WarmEWMean(slow))
        # From the fast horizon, for both: learnt from the slow horizon's own scores, a ramp
        # would inflate it and hide itself.
        self._disp = Dispersion(fast, max_dispersion)
        self.n = 0
        self._refresh()

    def _refresh(self) -> None:
        # Derived values, recomputed once per learned window rather than on every score.
        self._pf = self._rate(self._fast)
        self._ps = self._rate(self._slow)
        self._sd = sqrt(self._disp.get())

    @staticmethod
    def _rate(pair: tuple[WarmEWMean, WarmEWMean]) -> float:
        num, den = pair
        w = 1.0 / num.fading_factor   # effective number of windows in the sums
        return (num.get() * w + _PRIOR_K) / (den.get() * w + _PRIOR_N)

    def expected(self, slow: bool = False) -> float:
        return self._ps if slow else self._pf

    def score_one(self, k: float, n: float) -> tuple[float, float]:
        """Scores of ``k`` events in ``n`` units against the fast and the slow horizon."""
        d = self._sd
        return poisson_score(k, n * self._pf) / d, poisson_score(k, n * self._ps) / d

    def drift_score(self, k: float, n: float) -> float:
        """How far the fast horizon, with this window added, has moved from the slow one: its
        decayed sums scored as counts against the slow rate. A slow ramp that no single
        window shows moves these sums window by window; the slow horizon barely moves.

        The decayed sums of Poisson counts vary less than counts of the same mean (by
        1 / (1 + d) for decay d), so both sides are scaled by 1 + d first."""
        num, den = self._fast
        a = num.fading_factor
        d = 1.0 - a
        c = 1.0 + d
        big_k = d * num.get() / a + k
        mu = (d * den.get() / a + n) * self._ps * c
        if mu < DRIFT_MIN_EXPECTED:
            return 0.0   # a rare event: one occurrence would dominate the sums
        return poisson_score(big_k * c, mu) / self._sd

    def learn_one(self, k: float, n: float, slow: bool = True) -> None:
        """Learn a window; ``slow=False`` keeps it out of the slow horizon (the caller saw
        the fast horizon drifting away from it: a ramp must not become the norm)."""
        if n <= 0:
            return
        if self.n:
            self._disp.update(poisson_score(k, n * self._pf))
        for num, den in (self._fast, self._slow) if slow else (self._fast,):
            num.update(k)
            den.update(n)
        self.n += 1
        self._refresh()
