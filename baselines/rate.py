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

import contextlib
import importlib
import os
from collections.abc import Sequence
from math import sqrt
from typing import Any

from baselines.dispersion import Dispersion
from baselines.ewmean import WarmEWMean
from baselines.poisson import poisson_score
from baselines.sequential import _LOG_UP, _RHO_UP_M1, RISE_MIN, ZEROS, Cusum, settle

#: What an idle statistic (no state kept) peeks from.
_IDLE = Cusum()

__all__ = ["PLAIN", "TWIN", "WITH_DATA", "RateBaseline", "as_reference", "as_twin", "new_rate"]

_PRIOR_K = 0.5   # pseudo-events...
_PRIOR_N = 1.0   # ...per pseudo-unit of denominator
#: Events the two-horizon test must expect in the fast horizon's sums to say anything.
DRIFT_MIN_EXPECTED = 10.0


class RateBaseline:
    __slots__ = ("_adopt", "_disp", "_fast", "_frozen", "_pf", "_ps", "_sd", "_slow", "n")

    def __init__(self, fast: float, slow: float, max_dispersion: float = 25.0,
                 adopt_after: int = 90) -> None:
        self._fast = (WarmEWMean(fast), WarmEWMean(fast))   # numerator, denominator
        self._slow = (WarmEWMean(slow), WarmEWMean(slow))
        # From the fast horizon, for both: learnt from the slow horizon's own scores, a ramp
        # would inflate it and hide itself.
        self._disp = Dispersion(fast, max_dispersion)
        self.n = 0
        # Windows the slow horizon has been kept out of in a row; at ``adopt_after`` it takes
        # the fast one's level: a freeze against ramps must not become a lock-out.
        self._frozen = 0
        self._adopt = adopt_after
        self._refresh()

    def _refresh(self) -> None:
        # Derived values, recomputed once per learned window rather than on every score.
        self._pf = self._rate(self._fast)
        self._ps = self._rate(self._slow)
        self._sd = sqrt(self._disp.get())

    @staticmethod
    def _rate(pair: tuple[WarmEWMean, WarmEWMean]) -> float:
        num, den = pair
        # The windows the sums stand for: the horizon, or fewer while it fills, so that a
        # rate known from little data is not taken for exact (a slow horizon that had seen
        # 20 quiet windows would otherwise claim a thousand).
        return (num.total() + _PRIOR_K) / (den.total() + _PRIOR_N)

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
        # (WarmEWMean.get inline: one Python frame fewer per call on this hot path.)
        ew = den._ew
        mu = (d * (ew._ewmean.get() if ew is not None else den._mean._mean) / a + n
              ) * self._ps * c
        if mu < DRIFT_MIN_EXPECTED:
            return 0.0   # a rare event: one occurrence would dominate the sums
        big_k = d * num.get() / a + k
        return poisson_score(big_k * c, mu) / self._sd

    def reference(self, up: bool = True) -> float:
        """The rate a sequential test for a rise (``up``) or a fall measures against: the
        slow rate, or the fast horizon's where its sums show, beyond their counting noise,
        that the rate has moved that way (a bound two standard deviations inside them). A
        benign change the fast horizon has followed, on counts that can tell, is no
        evidence; a rare event's few counts cannot tell, so it keeps the slow reference; and
        the return to normal after a rise is not "a fall" against the risen fast horizon.

        >>> b = RateBaseline(fast=0.1, slow=0.01)
        >>> for _ in range(200):
        ...     b.learn_one(10, 1000)
        >>> round(b.reference(), 3)
        0.01
        >>> for _ in range(60):
        ...     b.learn_one(40, 1000, slow=False)   # a rise the fast horizon has followed
        >>> 0.025 < b.reference() < 0.04
        True
        """
        num, den = self._fast
        ew, ew2 = num._ew, den._ew
        if ew is not None and ew2 is not None:   # (WarmEWMean.total inline, as _update_pair)
            k = ew._ewmean.get() * (1.0 / num.fading_factor)
            units = ew2._ewmean.get() * (1.0 / den.fading_factor)
        else:
            k, units = num.total(), den.total()
        if up:
            return max(self._ps, (k - 2.0 * sqrt(k)) / units if k > 4.0 else 0.0)
        return min(self._ps, (k + 2.0 * sqrt(k) + 1.0) / units) if units > 0 else self._ps

    def peek_up(self, cus: Cusum, k: float, n: float, cap: float) -> Sequence[float]:
        """``cus``'s upward statistics after ``k`` events in ``n`` units, against
        :meth:`reference` at this baseline's dispersion (one call for the scorer)."""
        return cus.peek_up(k, n * self.reference(), self.dispersion(), cap)

    def sequential(self, cus: Cusum | None, k: float, n: float, h: float, d: str
                   ) -> tuple[float, bool, Sequence[float], float] | None:
        """The sequential test's step for ``k`` events in ``n`` units, as the scorer takes
        it (one call for its hot path; the reference for ``sequential`` in
        baselines/_rate.c): ``cus``'s statistics (None: idle) after this window at ``h``
        nats, each design adding at most ``h / 2``, in direction ``d`` ("up", "down" or
        "both"). None when an idle statistic stays idle; else (evidence in standard units,
        + for a rise and - for a fall, whether it confirms a shift: at ``h`` and growing,
        the upward statistics and the downward one to keep, restarted half-way when
        confirmed)."""
        c = _IDLE if cus is None else cus
        if cus is None and d == "up" and k <= RISE_MIN * (n * self._ps):
            return None
        cap = h / 2
        # The designs (x3 and up) leave it deaf to benign wobble under x1.8. (No rise past
        # RISE_MIN of the slow rate, which the reference is at least, on an idle statistic:
        # peek_up's own "no evidence", without working out the reference.)
        ups = (ZEROS if d == "down" or (not c.up and k <= RISE_MIN * (n * self._ps))
               else self.peek_up(c, k, n, cap))
        down = 0.0 if d == "up" else c.peek_down(k, n * self.reference(up=False),
                                                 self.dispersion(), cap)
        up = max(ups)
        if cus is None and up == down == 0.0:
            return None
        return settle(c, ups, up, down, h, d)

    def dispersion(self) -> float:
        """The learned over-dispersion (1.0: pure counting noise)."""
        return self._sd * self._sd

    def rebase(self, k: float, n: float) -> None:
        """Adopt a new normal: ``k`` events in ``n`` units a window, in both horizons."""
        for num, den in (self._fast, self._slow):
            num.reset_to(k)
            den.reset_to(n)
        self._refresh()

    def learn_window(self, k: float, n: float, drift_check: bool, warmup: int, freeze: float
                     ) -> None:
        """Learn a window judged normal: the slow horizon stays out of it while the fast one,
        with this window added, is ``freeze`` or more from it (``drift_check`` and past
        ``warmup`` windows only). One call for the scorer's common case."""
        drifting = drift_check and self.n >= warmup and abs(self.drift_score(k, n)) >= freeze
        self.learn_one(k, n, not drifting)

    def learn_one(self, k: float, n: float, slow: bool = True, anomalous: bool = False
                  ) -> None:
        """Learn a window; ``slow=False`` keeps it out of the slow horizon (the caller saw
        the fast horizon drifting away from it: a ramp must not become the norm), and after
        ``adopt_after`` such windows in a row the slow horizon takes the fast one's level. An
        ``anomalous`` window teaches the fast horizon only, with bounded influence: its count
        winsorised at two (over-dispersed) standard deviations of what the fast horizon
        expects, so a one-window spike barely moves it and a level that persists moves it
        window by window (adopting that level is the caller's: it sees the episode)."""
        if n <= 0:
            return
        disp = self._disp
        if anomalous:
            mu = n * self._pf
            sd = sqrt(disp.get() * max(mu, 1.0))
            k = min(k, mu + 2.0 * sd) if k > mu else max(k, mu - 2.0 * sd)
        # (Dispersion.update, then its get for the new scale, in one call.)
        v = disp.update_get(poisson_score(k, n * self._pf)) if self.n else disp.get()
        # The rates from the sums' totals, as their updates return them.
        tk, tn = _update_pair(self._fast, k, n)
        # The slow rate is recomputed only when its sums move (the same value otherwise).
        slow_moved = slow and not anomalous
        if slow_moved:
            sk, sn = _update_pair(self._slow, k, n)
        if not anomalous:
            self._frozen = 0 if slow else self._frozen + 1
        if self._frozen >= self._adopt:
            snum, sden = self._slow
            snum.reset_to(self._fast[0].get())
            sden.reset_to(self._fast[1].get())
            self._frozen = 0
            slow_moved = True
            sk, sn = snum.total(), sden.total()
        self.n += 1
        self._pf = (tk + _PRIOR_K) / (tn + _PRIOR_N)   # (_rate, inline)
        if slow_moved:
            self._ps = (sk + _PRIOR_K) / (sn + _PRIOR_N)
        self._sd = sqrt(v)


def _update_pair(pair: tuple[WarmEWMean, WarmEWMean], k: float, n: float) -> tuple[float, float]:
    """``(num.update(k), den.update(n))`` of a horizon's two sums, in one frame: they are
    learned and reset together, so they hand over to the EWMean together (each is still
    checked). The same arithmetic as :meth:`WarmEWMean.update` (tests/test_hot_paths.py)."""
    num, den = pair
    ew, ew2 = num._ew, den._ew
    if ew is not None and ew2 is not None:
        e, e2 = ew._ewmean, ew2._ewmean
        e.update(k)     # EWMean.update(x)
        e2.update(n)
        inv = 1.0 / num.fading_factor
        return e.get() * inv, e2.get() * (1.0 / den.fading_factor)
    m, m2 = num._mean, den._mean
    if ew is None and ew2 is None:
        c, c2 = m.n + 1.0, m2.n + 1.0
        if c * num.fading_factor < 1.0 and c2 * den.fading_factor < 1.0:   # no hand-over yet
            m.n, m2.n = c, c2   # Mean.update(x): weight 1
            m._mean += (1.0 / c) * (k - m._mean)
            m2._mean += (1.0 / c2) * (n - m2._mean)
            return m._mean * c, m2._mean * c2
    return num.update(k), den.update(n)



# -- the C twin -----------------------------------------------------------------------------
# baselines/_rate.c holds the same state as plain doubles and does the same arithmetic in the
# same order (tests/test_rate_twin.py holds it to this module bit for bit). Used unless it was
# not built (no compiler) or DETECTOR_NO_EXTENSIONS is set, as the counting twin is.
# Its learn_plain is the twin of detector.core.scoring.learn_plain_py, its with_data of
# detector.core.scoring.with_data_py.
TWIN: Any = None
PLAIN: Any = None
WITH_DATA: Any = None
if not os.environ.get("DETECTOR_NO_EXTENSIONS"):
    with contextlib.suppress(ImportError):
        _c = importlib.import_module("baselines._rate")
        TWIN, PLAIN, WITH_DATA = _c.Rate, _c.learn_plain, _c.with_data
        _c.designs(_LOG_UP, _RHO_UP_M1, RISE_MIN, ZEROS)


def new_rate(fast: float, slow: float, max_dispersion: float = 25.0, adopt_after: int = 90
             ) -> Any:
    """A fresh rate baseline: the C twin when there is one, else the reference."""
    cls = TWIN if TWIN is not None else RateBaseline
    return cls(fast, slow, max_dispersion, adopt_after)


def _sums(w: WarmEWMean) -> tuple[float, float, float, bool]:
    if w._ew is not None:
        return w.fading_factor, 0.0, w._ew.get(), True
    return w.fading_factor, float(w._mean.n), w._mean.get(), False


def as_twin(b: Any, twin: Any = None) -> Any:
    """``b``'s state in the C twin (``twin``: its type, by default the one in use), or ``b``
    itself when there is none (state loaded from a snapshot is the reference's)."""
    cls = twin if twin is not None else TWIN
    if cls is None or type(b) is not RateBaseline:
        return b
    d = b._disp
    r = cls.__new__(cls)
    r.set_state((*_sums(b._fast[0]), *_sums(b._fast[1]), *_sums(b._slow[0]),
                 *_sums(b._slow[1]), d._rate, d._cap, d._m1, d._m2, b._pf, b._ps, b._sd,
                 b.n, b._frozen, b._adopt))
    return r


def _warm(ff: float, n: float, mean: float, ew: bool) -> WarmEWMean:
    w = WarmEWMean(ff)
    if ew:
        w.reset_to(mean)
    elif n:
        w._mean.n = n
        w._mean._mean = mean
    return w


def as_reference(r: Any) -> RateBaseline:
    """The C twin's state as the reference (what snapshots write); a reference as it is."""
    if type(r) is RateBaseline:
        return r
    s = r.state()
    b = RateBaseline.__new__(RateBaseline)
    b._fast = (_warm(*s[0:4]), _warm(*s[4:8]))
    b._slow = (_warm(*s[8:12]), _warm(*s[12:16]))
    d = b._disp = Dispersion(s[16], s[17])
    d._m1, d._m2 = s[18], s[19]
    b._pf, b._ps, b._sd = s[20], s[21], s[22]
    b.n, b._frozen, b._adopt = s[23], s[24], s[25]
    return b
