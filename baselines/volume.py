"""Baseline of traffic volume (events per window) with a learned daily cycle.

Volume is modelled on a log scale as level + season[time-of-day bin]. The season is learned
as the offset from the slow level; until a whole period has been seen the fast level follows
the cycle on its own and the slow horizon stays out (it would page on the cycle itself).
Scores are Poisson scores divided by the learned over-dispersion.

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

from baselines.dispersion import Dispersion
from baselines.ewmean import WarmEWMean
from baselines.poisson import poisson_score

__all__ = ["VolumeBaseline"]

#: Learning rate of a season bin per visit; a bin sees period/bins/window updates a day
#: (60 with the defaults), so a day's shape settles within a few days.
_SEASON_RATE = 0.02
#: Learning is bounded to this many standard deviations of a window's count, once the
#: baseline has this many windows.
_CLIP_SD = 3.0
_CLIP_AFTER = 20


class VolumeBaseline:
    __slots__ = ("_bins", "_disp", "_fast", "_first", "_last", "_period", "_season", "_slow",
                 "n")

    def __init__(self, fast: float, slow: float, bins: int, period: float,
                 max_dispersion: float = 25.0) -> None:
        self._fast = WarmEWMean(fast)       # level of log volume, de-seasonalised
        self._slow = WarmEWMean(slow)
        self._season = array("d", bytes(8 * bins))   # log offset per time-of-day bin
        self._bins = bins
        self._period = period
        self._disp = Dispersion(fast, max_dispersion)   # from the fast horizon, for both
        self._first = -1.0
        self._last = -1.0
        self.n = 0

    def _bin(self, t: float) -> int:
        return int((t % self._period) / self._period * self._bins)

    def _seasonal(self) -> bool:
        return self._last - self._first >= self._period

    def expected(self, t: float, slow: bool = False) -> float:
        s = self._season[self._bin(t)]
        return max(0.1, exp((self._slow if slow else self._fast).get() + s) - 0.5)

    def _raw(self, k: float, t: float) -> tuple[float, float]:
        zf = poisson_score(k, self.expected(t))
        # The slow horizon needs a whole period of season first, or it pages on the cycle.
        zs = poisson_score(k, self.expected(t, slow=True)) if self._seasonal() else 0.0
        return zf, zs

    def score_one(self, k: float, t: float) -> tuple[float, float]:
        """Scores of ``k`` events in the window starting at ``t`` (epoch seconds)."""
        if not self.n:
            return 0.0, 0.0
        zf, zs = self._raw(k, t)
        d = sqrt(self._disp.get())
        return zf / d, zs / d

    def rebase(self, k: float, t: float) -> None:
        """Adopt a new normal: ``k`` events a window around ``t``, in both horizons."""
        level = log(k + 0.5) - self._season[self._bin(t)]
        self._fast.reset_to(level)
        self._slow.reset_to(level)

    def learn_one(self, k: float, t: float) -> None:
        x = log(k + 0.5)
        period = self._period
        i = int((t % period) / period * self._bins)   # _bin(t), without the call
        season = self._season
        fast, slow = self._fast, self._slow
        n = self.n
        if n:
            # What the window is measured against: expected(t), with the bin worked out once.
            e = exp(fast.get() + season[i]) - 0.5
            e = e if e > 0.1 else 0.1   # max(0.1, ...) without the call
            disp = self._disp
            if n >= _CLIP_AFTER:
                # Bounded influence: a surge (or a gap) moves the level by at most a few
                # standard deviations of counting noise a window, so the window after a
                # threefold burst is not "a drop" against a level the burst dragged up.
                lim = _CLIP_SD * sqrt(disp.get() / (1.0 if e < 1.0 else e))
                le = log(e + 0.5)
                x = min(max(x, le - lim), le + lim)
            disp.update(poisson_score(k, e))
            # The season is the offset from the slow level, which a day's cycle barely moves;
            # against the fast level (which follows the cycle) it would learn nothing.
            season[i] += _SEASON_RATE * (x - slow.get() - season[i])
        else:
            self._first = t
        self._last = t
        d = x - season[i]
        fast.update(d)
        slow.update(d)
        self.n = n + 1
