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
"""

from __future__ import annotations

from math import sqrt

from river import stats

from baselines.poisson import poisson_score

__all__ = ["RateBaseline"]

_PRIOR_K = 0.5   # pseudo-events...
_PRIOR_N = 1.0   # ...per pseudo-unit of denominator


class RateBaseline:
    __slots__ = ("_disp_fast", "_disp_slow", "_fast", "_max_disp", "_slow", "n")

    def __init__(self, fast: float, slow: float, max_dispersion: float = 25.0) -> None:
        self._fast = (stats.EWMean(fast), stats.EWMean(fast))   # numerator, denominator
        self._slow = (stats.EWMean(slow), stats.EWMean(slow))
        # Mean squared raw score on normal windows; 1.0 is pure Poisson noise.
        self._disp_fast = 1.0
        self._disp_slow = 1.0
        self._max_disp = max_dispersion
        self.n = 0

    @staticmethod
    def _rate(pair: tuple[stats.EWMean, stats.EWMean]) -> float:
        num, den = pair
        w = 1.0 / num.fading_factor   # effective number of windows in the sums
        return (num.get() * w + _PRIOR_K) / (den.get() * w + _PRIOR_N)

    def expected(self, slow: bool = False) -> float:
        return self._rate(self._slow if slow else self._fast)

    def raw_scores(self, k: float, n: float) -> tuple[float, float]:
        return (poisson_score(k, n * self._rate(self._fast)),
                poisson_score(k, n * self._rate(self._slow)))

    def score_one(self, k: float, n: float) -> tuple[float, float]:
        """Scores of ``k`` events in ``n`` units against the fast and the slow horizon."""
        zf, zs = self.raw_scores(k, n)
        return zf / sqrt(self._disp_fast), zs / sqrt(self._disp_slow)

    def learn_one(self, k: float, n: float) -> None:
        if n <= 0:
            return
        if self.n:
            zf, zs = self.raw_scores(k, n)
            a = self._fast[0].fading_factor
            self._disp_fast = min(self._max_disp, max(1.0, (1 - a) * self._disp_fast + a * zf * zf))
            b = self._slow[0].fading_factor
            self._disp_slow = min(self._max_disp, max(1.0, (1 - b) * self._disp_slow + b * zs * zs))
        for num, den in (self._fast, self._slow):
            num.update(k)
            den.update(n)
        self.n += 1
