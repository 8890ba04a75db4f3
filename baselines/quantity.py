"""Baseline of a per-event quantity (tokens, latency), scored on a window's mean.

The score divides the shift of the window mean by its standard error, which has three parts:
the per-event spread over √n (few events, little evidence), the window-to-window spread of the
mean that normal traffic shows anyway, and a floor (a thousandth of the level, or half the
smallest step the values have taken), so a constant stretch does not make any change look
infinitely unlikely.

Both horizons start warm: until a horizon has seen 1/rate windows, its level and spread are
the plain mean and variance of what it has seen. The slow horizon's spread grows by at most a
bounded factor per window, so a slow ramp does not become its own yardstick.

The score keeps its meaning on heavy-tailed series: the baseline estimates the kurtosis of its
normal windows' standard scores and reports the standard score with the same tail probability
under a Student t of that kurtosis (window means of many events are near normal and keep their
Gaussian z; a gauge of one value a window often is not). A Gaussian z of 6 is 6 while the tails
look normal, and about 3.4 where they look like a t of 5 degrees of freedom::

>>> round(_calibrate(6.0, float("inf")), 1), round(_calibrate(6.0, 5.0), 1)
(6.0, 3.4)

Windows judged anomalous still teach it (there is no lock-out), with bounded influence: the
window mean is clipped to ``CLIP`` standard errors from each level (for the fast level, until
``PERSIST`` anomalous windows in a row lean the same way). One spike barely moves it::

>>> b = QuantityBaseline(fast=0.1, slow=0.01, adopt_windows=60)
>>> import random
>>> rng = random.Random(1)
>>> def window(mu, n=50):
...     xs = [rng.gauss(mu, 60) for _ in range(n)]
...     return len(xs), sum(xs), sum(x * x for x in xs)
>>> for _ in range(200):
...     b.learn_one(*window(300))
>>> before = b.expected(); round(before / 10) * 10
300
>>> b.score_one(50, 50 * 900, 50 * 900 ** 2)[0] > 10    # output tripled
True
>>> abs(b.score_one(2, 2 * 340, 2 * 340 ** 2)[0]) < 2  # two slightly long outputs
True
>>> b.learn_one(50, 50 * 900, 50 * 900 ** 2, anomalous=True)
>>> abs(b.expected() - before) < 5                      # a spike barely moves it
True

...while a level that persists is adopted, by the slow horizon too, within ``adopt_windows``:

>>> z = [b.score_one(*w)[1] for w in [window(600)]]
>>> for _ in range(100):
...     w = window(600)
...     b.learn_one(*w, anomalous=max(map(abs, b.score_one(*w))) >= 5)
>>> z[0] > 10, [round(e / 10) * 10 for e in (b.expected(), b.expected(slow=True))]
(True, [600, 600])
"""

from __future__ import annotations

import contextlib
import importlib
import os
from array import array
from math import copysign, log1p, sqrt
from typing import Any

from baselines.period import CHECK_AT, SIZE, PeriodFinder

__all__ = ["TWIN", "QuantityBaseline", "as_reference", "as_twin", "new_quantity"]

#: An anomalous window teaches the baseline as if it were this many standard errors away.
CLIP = 3.0
#: ...and teaches the spreads as if it were at most this many: recurring bursts become
#: part of the spread, while one burst cannot blind the baseline for long.
SPREAD_CLIP = 10.0
#: The floor of a level's spread, relative to the level.
FLOOR_REL = 1e-3
#: After this many consecutive anomalous windows on the same side, the fast level learns them
#: unclipped: a shift that persists is followed, a spike of a window or two is not.
PERSIST = 3
#: Learning rate of a time-of-day bin per visit (as for volume).
SEASON_RATE = 0.02
#: The time-of-day cycle is used once a whole period has been seen and it leaves at most this
#: share of the spread around the slow level (a series without a daily cycle never uses it).
SEASON_SHARE = 0.5
#: A period found from the data (on clear evidence of a cycle) is used where its profile,
#: predicting each window before learning it, leaves at most this share of the spread.
FOUND_SHARE = 0.9
#: A period found within this share of the configured one is taken to be it.
SNAP = 0.05
#: Squared standard scores enter the tail estimate clipped here (|z| <= 6): one burst cannot
#: make every later window look ordinary.
TAIL_CLIP = 36.0
#: Windows learned before the tail estimate starts (the first spreads are themselves noisy).
#: The estimate is used once it has seen half a slow horizon of normal windows: a fourth
#: moment needs many windows, and a few hours with a handful of sub-threshold incidents in
#: them would otherwise pass for a heavy tail and blunt the next real one.
TAIL_WARMUP = 10
#: The heaviest tail assumed: a Student t with this many degrees of freedom (finite variance).
NU_MIN = 3.0
#: Excess kurtosis below this is estimation noise (the spreads are themselves estimates): no
#: correction. Above it, only the excess beyond it counts, so the correction starts smoothly.
EXCESS_SLACK = 0.5
_INF = float("inf")


class QuantityBaseline:
    __slots__ = ("_a", "_adopt", "_b", "_bins", "_conf", "_finder", "_fit", "_lf", "_ls", "_m2",
                 "_m4", "_origin", "_period", "_prev", "_res", "_run", "_season", "_streak", "_t",
                 "_tn", "_vf", "_vn", "_vs", "_w", "n")

    def __init__(self, fast: float, slow: float, adopt_windows: int = 120, bins: int = 24,
                 period: float = 86400.0, step: float | None = 60.0) -> None:
        self._a = fast
        self._b = slow
        self._adopt = adopt_windows
        self._lf = self._ls = 0.0      # levels (means of window means)
        self._vf = self._vs = 0.0      # excess variance of window means between windows
        self._vn = 0.0                 # the fast one's, remembered over the slow horizon
        self._w = 0.0                  # per-event variance within a window
        self._prev = 0.0               # the last window mean, and the smallest step seen
        self._res = 0.0
        self._streak = 0               # recent windows with the fast level off the slow one
        self._run = 0                  # consecutive anomalous windows, signed by their side
        # Time of day (only when the caller gives window times): offset per bin from the slow
        # level, the first and last time seen, and the spread around the slow level without
        # and with the offsets.
        self._season = array("d", bytes(8 * bins))
        self._bins, self._period = bins, period
        # The cycle's period may be found from the data (``step``: seconds per window; None:
        # always ``period``). A period found near the configured one is the configured one.
        self._conf = period
        self._origin = 0.0             # the time the phase counts from
        self._finder: PeriodFinder | None = PeriodFinder(step) if step else None
        self._t = [-1.0, -1.0]
        self._fit = [0.0, 0.0]
        # Second and fourth moments of the fast standard score over the slow horizon: how
        # heavy the window means' tails are (their kurtosis), for the score's calibration.
        self._m2 = self._m4 = 0.0
        self._tn = 0   # windows in that estimate
        self.n = 0

    def _bin(self, t: float) -> int:
        return int(((t - self._origin) % self._period) / self._period * self._bins)

    def period(self) -> float:
        """The cycle's period in use (seconds): the configured one unless one was found."""
        return self._period

    def _found(self, p: float, origin: float, t: float) -> None:
        """Use the period ``p`` the finder found (or refined). First found, the time-of-day
        profile is rebuilt from the finder's history; refined, the profile is kept and the
        phase stays continuous at ``t``."""
        if abs(p - self._conf) <= SNAP * self._conf:
            p, origin = self._conf, 0.0
        old = self._period
        if p == old:
            return
        f = self._finder
        if old == self._conf and f is not None:
            fold = f.fold(self._bins, p, origin)
            if fold is None:
                return
            # The profile starts from the history; its fit, as the share of the spread the
            # history's blocks leave when each is predicted from the others of its phase.
            prof, before, after = fold
            self._season[:] = array("d", prof)
            self._fit[1] = self._fit[0] * min(1.0, after / before) if before > 0 else self._fit[0]
            self._origin = origin
            self._t[0] = min(self._t[0], origin)
        else:
            phase = ((t - self._origin) % old) / old
            self._origin = t - phase * p
        self._period = p

    def seasonal(self) -> bool:
        """Whether the time-of-day cycle is in use (chosen from the data)."""
        return (self._t[1] - self._t[0] >= self._period
                and self._fit[1] <= (SEASON_SHARE if self._period == self._conf
                                     else FOUND_SHARE) * self._fit[0])

    def expected(self, slow: bool = False) -> float:
        return self._ls if slow else self._lf

    def score_one(self, n: float, s: float, q: float, t: float | None = None
                  ) -> tuple[float, float]:
        """Scores of a window with ``n`` values summing to ``s`` (squares to ``q``), starting
        at ``t`` (epoch seconds; None: no time of day)."""
        if n <= 0 or not self.n:
            return 0.0, 0.0
        m = s / n
        if t is not None:   # (_offset, seasonal and _bin, inline)
            tt, period = self._t, self._period
            if tt[1] - tt[0] >= period and self._fit[1] <= (
                    SEASON_SHARE if period == self._conf else FOUND_SHARE) * self._fit[0]:
                m -= self._season[int(((t - self._origin) % period) / period * self._bins)]
        # Squared standard errors of a mean of n values, fast and slow: the per-event spread
        # over n with a floor (a thousandth of the level, or half the smallest step), plus the
        # window-to-window spread. A calm stretch does not make the next burst of a bursty
        # series look new: the fast spread never falls below the spread around the fast level
        # over the slow horizon. (Inline in both score_one and learn_one, and max of two as a
        # conditional expression: the same values without a call each.)
        fl, h = FLOOR_REL * abs(self._lf), self._res / 2
        fl = h if h > fl else fl
        base = self._w / n + (fl * fl if fl > 0 else 1e-12)
        vf, vs, vn = self._vf, self._vs, self._vn
        ef, es = base + (vn if vn > vf else vf), base + (vn if vn > vs else vs)
        zf, zs = (m - self._lf) / sqrt(ef), (m - self._ls) / sqrt(es)
        if self._tn * self._b < 0.5 or self._m2 <= 0:
            return zf, zs   # (tail_dof is inf: what _calibrate gives, no correction)
        nu = self.tail_dof()
        if nu == _INF:
            return zf, zs
        return _calibrate(zf, nu), _calibrate(zs, nu)

    def tail_dof(self) -> float:
        """Degrees of freedom of the Student t whose kurtosis the normal windows' standard
        scores have shown (``inf``: no heavier than normal, or not yet known)."""
        if self._tn * self._b < 0.5 or self._m2 <= 0:
            return _INF
        excess = self._m4 / (self._m2 * self._m2) - 3.0 - EXCESS_SLACK
        return max(NU_MIN, 4.0 + 6.0 / excess) if excess > 0 else _INF

    def rebase(self, n: float, s: float, q: float) -> None:
        """Adopt a new normal: the mean and per-event spread of ``n`` values summing to ``s``
        (squares to ``q``), in both horizons at once."""
        if n <= 0:
            return
        m = s / n
        self._lf = self._ls = self._prev = m
        self._w = max(0.0, q / n - m * m)
        self._vs = max(self._vs, self._vf)
        self._streak = self._run = 0

    def learn_one(self, n: float, s: float, q: float, anomalous: bool = False,
                  t: float | None = None) -> None:
        """Learn a window; an ``anomalous`` one with bounded influence (see the module)."""
        if n <= 0:
            return
        m = s / n
        # (max and min of two as conditional expressions, here and below: the same values,
        # without a builtin call each, on every quantity of every window.)
        var = q / n - m * m
        var = var if var > 0.0 else 0.0
        k = self.n + 1
        if t is not None:
            f = self._finder
            if f is not None:
                got = f.learn(m, t)
                if got is not None:
                    self._found(got[0], got[1], t)
            # The time-of-day profile learns (then _bin and seasonal, inline: no three calls
            # a quantity and window).
            tt, season = self._t, self._season
            if tt[0] < 0:
                tt[0] = t
            tt[1] = t
            period = self._period
            i = int(((t - self._origin) % period) / period * self._bins)
            if self.n:
                r = m - self._ls
                b = max(self._b, 1.0 / self.n)   # over the slow horizon: a whole cycle
                fit = self._fit
                fit[0] += b * (r * r - fit[0])
                fit[1] += b * ((r - season[i]) ** 2 - fit[1])
                if not anomalous:    # an anomalous window does not teach the cycle
                    season[i] += SEASON_RATE * (r - season[i])
            if (tt[1] - tt[0] >= period and self._fit[1] <= (
                    SEASON_SHARE if period == self._conf else FOUND_SHARE) * self._fit[0]):
                m -= season[i]
        if self.n == 0:
            self._lf = self._ls = self._prev = m
            self._w = var
            self.n = 1
            return
        step = abs(m - self._prev)
        if step > 0 and (self._res == 0 or step < self._res):
            self._res = step
        self._prev = m
        # (The squared standard errors, as score_one works them out.)
        fl, h = FLOOR_REL * abs(self._lf), self._res / 2
        fl = h if h > fl else fl
        base = self._w / n + (fl * fl if fl > 0 else 1e-12)
        vf, vs, vn = self._vf, self._vs, self._vn
        ef, es = base + (vn if vn > vf else vf), base + (vn if vn > vs else vs)
        rf, rs = m - self._lf, m - self._ls
        df = rf * rf
        if k > TAIL_WARMUP and not anomalous:   # the tails of normal traffic
            u = min(df / ef, TAIL_CLIP)
            self._tn += 1
            r = 1.0 / self._tn
            r = r if r > self._b else self._b
            self._m2 += r * (u - self._m2)
            self._m4 += r * (u * u - self._m4)
        if not anomalous:
            self._run = 0
        else:
            side = 1 if rf > 0 else -1
            self._run = self._run + side if self._run * side > 0 else side
            df = min(df, SPREAD_CLIP * SPREAD_CLIP * ef)
            cf, cs = CLIP * sqrt(ef), CLIP * sqrt(es)
            if abs(self._run) < PERSIST:
                rf = max(-cf, min(cf, rf))
            rs = max(-cs, min(cs, rs))
            var = min(var, CLIP * CLIP * self._w) if self._w > 0 else var
        noise = self._w / n
        inv = 1.0 / k
        a = inv if inv > self._a else self._a   # warm: plain means at first
        b = inv if inv > self._b else self._b
        e = df - noise
        e = e if e > 0.0 else 0.0
        self._vf += a * (e - self._vf)
        self._vn += b * (e - self._vn)
        # The slow spread learns at most CLIP fast spreads: a ramp cannot become its own yardstick.
        s2, lim = rs * rs, CLIP * CLIP * ef
        e = (lim if lim < s2 else s2) - noise
        self._vs += b * ((e if e > 0.0 else 0.0) - self._vs)
        self._lf += a * rf
        self._ls += b * rs
        self._w += a * (var - self._w)
        self.n = k
        # The fast level away from the slow one by more than CLIP of its usual spread, for
        # most of adopt_windows: a level that persisted, the new normal for the slow horizon.
        vf, vn = self._vf, self._vn
        base = ef - (vn if vn > vf else vf)
        if (self._lf - self._ls) ** 2 > CLIP * CLIP * (base + (vn if vn < vf else vf)):
            self._streak += 1
            if self._streak >= self._adopt:
                self._ls, self._vs, self._streak = self._lf, max(self._vs, self._vf), 0
        elif self._streak:
            self._streak -= 1


def _calibrate(z: float, nu: float) -> float:
    """The standard score with the same tail probability as ``z`` has under a unit-variance
    Student t of ``nu`` degrees of freedom (Wallace's 1959 approximation, monotone).

    >>> round(_calibrate(5.0, float("inf")), 2), round(_calibrate(5.0, 4.0), 1)
    (5.0, 3.0)
    """
    if nu == _INF or z == 0.0:
        return z
    t2 = z * z * nu / (nu - 2.0)
    return copysign((8.0 * nu + 1.0) / (8.0 * nu + 3.0) * sqrt(nu * log1p(t2 / nu)), z)


# -- the C twin -----------------------------------------------------------------------------
# baselines/_quantity.c holds the same state as plain doubles and does the same arithmetic in
# the same order (tests/test_quantity_twin.py holds it to this module bit for bit); the period
# finder stays this package's PeriodFinder, which the twin calls. Used unless it was not built
# (no compiler) or DETECTOR_NO_EXTENSIONS is set, as the rate twin is.
TWIN: Any = None
if not os.environ.get("DETECTOR_NO_EXTENSIONS"):
    with contextlib.suppress(ImportError):
        _c = importlib.import_module("baselines._quantity")
        TWIN = _c.Quantity
        _c.finder_steps(SIZE, CHECK_AT)


def new_quantity(fast: float, slow: float, adopt_windows: int = 120, bins: int = 24,
                 period: float = 86400.0, step: float | None = 60.0) -> Any:
    """A fresh quantity baseline: the C twin when there is one, else the reference."""
    if TWIN is None:
        return QuantityBaseline(fast, slow, adopt_windows, bins, period, step)
    return TWIN(fast, slow, adopt_windows, bins, period, PeriodFinder(step) if step else None)


def as_twin(b: Any, twin: Any = None) -> Any:
    """``b``'s state in the C twin (``twin``: its type, by default the one in use), or ``b``
    itself when there is none or it is no QuantityBaseline (snapshots hold the reference's)."""
    cls = twin if twin is not None else TWIN
    if cls is None or type(b) is not QuantityBaseline:
        return b
    return cls.from_state((b._a, b._b, b._adopt, b._lf, b._ls, b._vf, b._vs, b._vn, b._w,
                           b._prev, b._res, b._streak, b._run, b._bins, b._period, b._conf,
                           b._origin, b._t[0], b._t[1], b._fit[0], b._fit[1], b._m2, b._m4,
                           b._tn, b.n, tuple(b._season), b._finder))


def as_reference(q: Any) -> QuantityBaseline:
    """The C twin's state as the reference (what snapshots write); a reference as it is."""
    if type(q) is QuantityBaseline:
        return q
    s = q.state()
    b = QuantityBaseline.__new__(QuantityBaseline)
    (b._a, b._b, b._adopt, b._lf, b._ls, b._vf, b._vs, b._vn, b._w, b._prev, b._res,
     b._streak, b._run, b._bins, b._period, b._conf, b._origin) = s[:17]
    b._t, b._fit = [s[17], s[18]], [s[19], s[20]]
    b._m2, b._m4, b._tn, b.n = s[21:25]
    b._season, b._finder = array("d", s[25]), s[26]
    return b
