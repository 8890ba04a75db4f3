"""Baseline of traffic volume (events per window) with a learned daily cycle.

Volume is modelled on a log scale as level + season[time-of-day bin]; the season is used once
a whole period has been seen, until then the fast level follows the cycle on its own and the
slow horizon stays out (it would page on the cycle itself). Scores are Poisson scores divided
by the learned over-dispersion.

>>> b = VolumeBaseline(fast=0.1, slow=0.01, bins=24, period=86400.0)
>>> for w in range(100):
...     b.learn_one(1000, w * 60.0)
>>> round(b.expected(0.0))
1000
>>> b.score_one(200, 6000.0)[0] < -10     # traffic fell to a fifth
True
"""

from __future__ import annotations

from array import array
from math import exp, log, sqrt

from river import stats

from baselines.poisson import poisson_score

__all__ = ["VolumeBaseline"]


class VolumeBaseline:
    __slots__ = (
        "_bins",
        "_disp_fast",
        "_disp_slow",
        "_fast",
        "_first",
        "_last",
        "_max_disp",
        "_period",
        "_season",
        "_season_rate",
        "_slow",
        "n",
    )

    def __init__(self, fast: float, slow: float, bins: int, period: float,
                 max_dispersion: float = 25.0) -> None:
        self._fast = stats.EWMean(fast)
        self._slow = stats.EWMean(slow)
        self._season = array("d", bytes(8 * bins))
        self._bins = bins
        self._period = period
        # Each bin is seen period/bins seconds a day; a half-life of about two days of them.
        self._season_rate = 0.05
        self._disp_fast = 1.0
        self._disp_slow = 1.0
        self._max_disp = max_dispersion
        self._first = -1.0
        self._last = -1.0
        self.n = 0

    def _bin(self, t: float) -> int:
        return int((t % self._period) / self._period * self._bins)

    def _seasonal(self) -> bool:
        return self._last - self._first >= self._period

    def expected(self, t: float, slow: bool = False) -> float:
        s = self._season[self._bin(t)] if self._seasonal() else 0.0
        return max(0.1, exp((self._slow if slow else self._fast).get() + s) - 0.5)

    def _raw(self, k: float, t: float) -> tuple[float, float]:
        zf = poisson_score(k, self.expected(t))
        zs = poisson_score(k, self.expected(t, slow=True)) if self._seasonal() else 0.0
        return zf, zs

    def score_one(self, k: float, t: float) -> tuple[float, float]:
        """Scores of ``k`` events in the window starting at ``t`` (epoch seconds)."""
        if not self.n:
            return 0.0, 0.0
        zf, zs = self._raw(k, t)
        return zf / sqrt(self._disp_fast), zs / sqrt(self._disp_slow)

    def learn_one(self, k: float, t: float) -> None:
        x = log(k + 0.5)
        if self.n:
            zf, zs = self._raw(k, t)
            a = self._fast.fading_factor
            self._disp_fast = min(self._max_disp, max(1.0, (1 - a) * self._disp_fast + a * zf * zf))
            b = self._slow.fading_factor
            self._disp_slow = min(self._max_disp, max(1.0, (1 - b) * self._disp_slow + b * zs * zs))
            i = self._bin(t)
            self._season[i] += self._season_rate * (x - self._fast.get() - self._season[i])
        else:
            self._first = t
        self._last = t
        s = self._season[self._bin(t)] if self._seasonal() else 0.0
        self._fast.update(x - s)
        self._slow.update(x - s)
        self.n += 1
