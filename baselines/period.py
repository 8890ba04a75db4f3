"""The period of a quantity's cycle, found from the data in bounded state.

A series' cycle is not always a day of event time: a gauge sampled every five minutes and
replayed one sample a window has a "day" of 288 windows, a batch job may run every few hours.
:class:`PeriodFinder` keeps the series' whole history as at most ``SIZE`` block means whose
width doubles whenever the ring fills (so its span keeps up with the history at a fixed cost),
and at a few fill levels per doubling looks for a cycle in the block means' autocorrelation,
detrended (a ramp or a random walk has no peak). A lag is a period only on clear evidence:
at least two whole cycles in the history, a local peak of the autocorrelation of at least
``ACF_MIN`` with a dip of ``DIP_MIN`` below it on the way (a cycle swings back; drift does
not), and the smallest such lag near the best (the fundamental, not a multiple), whose fold explains
the block means and their steps beyond chance (all of it on ranks, so one burst is not a
cycle), found again by the next look. The period is refined below a block's width by
correlating every block with the ones whole periods before it, and then cycle by cycle from
the phase of each cycle's fundamental. Without such evidence it finds nothing, and the caller
keeps its configured period.

A cycle of 288 windows, found after its fourth cycle (two looks agree), to within a window:

>>> import math, random
>>> rng = random.Random(1)
>>> f = PeriodFinder(60.0)
>>> found = None
>>> for i in range(1200):
...     got = f.learn(math.sin(2 * math.pi * i / 288) + rng.gauss(0, 0.3), 60.0 * i)
...     found = found or (got and (i, round(got[0] / 60.0)))
>>> found
(1152, 289)

Noise, a random walk and a ramp have none:

>>> def finds(xs):
...     f = PeriodFinder(60.0)
...     return any(f.learn(x, 60.0 * i) for i, x in enumerate(xs))
>>> walk = [0.0]
>>> for _ in range(3000):
...     walk.append(walk[-1] + rng.gauss(0, 1))
>>> finds([rng.gauss(0, 1) for _ in range(3000)]), finds(walk), finds(range(3000))
(False, False, False)
"""

from __future__ import annotations

import contextlib
import importlib
import os
from array import array
from collections.abc import Callable
from math import atan2, cos, floor, pi, sin, sqrt
from operator import mul

__all__ = ["PeriodFinder"]

#: Block means kept: the ring's size (its width doubles when full).
SIZE = 48
#: A cycle is looked for when the ring holds this many blocks, and when it is full.
CHECK_AT = (36, SIZE)
#: The least autocorrelation of the detrended block means at a period...
ACF_MIN = 0.6
#: ...and how far it must have dipped below that on the way there.
DIP_MIN = 0.6
#: A lag whose autocorrelation is this share of the best one's counts as the same cycle (the
#: smallest of them is the fundamental).
SAME_CYCLE = 0.85
#: The shortest period looked for, in blocks (a shorter one is not resolved by the ring).
MIN_LAG = 4
#: The history must hold at least this many whole cycles of a period.
CYCLES = 2
#: ...and, folded at the period, its phases must explain its spread beyond what chance does in
#: as many phases, and so must they its steps from block to block: the F statistic of each
#: fold, as a standard score (Paulson), at least this (a normal tail of about 3e-5 a look,
#: were the block means independent).
FOLD_Z = 4.0
#: A period is taken when two successive looks find it within this share (or a block).
CONFIRM = 0.05
#: Tracking: the period is refined while the cycles' phase steps agree this well (the
#: magnitude of their amplitude-weighted mean, 1 when every step is the same)...
COHERENCE = 0.5
#: ...and only within this share of the period the ring found.
DRIFT = 0.05
#: Sub-block refinement: steps per block around the peak.
REFINE_STEPS = 32


class PeriodFinder:
    __slots__ = ("_acc", "_block", "_cand", "_last", "_ring", "_step", "_t0", "_track",
                 "period")

    def __init__(self, step: float) -> None:
        self._step = step            # seconds per window
        self._ring = array("d")      # block means since the first value
        self._block = 1              # windows per block
        self._t0 = -1.0              # the first value's time
        self._acc = [0.0, 0.0]       # the current block's sum and count
        self._last = 0.0             # the last block mean (carried over blocks without data)
        # Once a period is found, its tracking (see _follow): [cycle start, this cycle's sum
        # of x cos, of x sin, of x, count, the previous cycle's x cos and x sin sums, its mean,
        # the sum of each cycle's coefficient times the previous one's conjugate (re, im), the
        # period the cycles are cut at, the sum of those products' magnitudes].
        self._track = array("d")
        self._cand = 0.0             # a period the last look found, until the next confirms it
        #: The period found (seconds), 0 while none is.
        self.period = 0.0

    def learn(self, x: float, t: float) -> tuple[float, float] | None:
        """Learn a window's value ``x`` at ``t`` (seconds). Returns (period in seconds, its
        phase origin in seconds) when it found or refined a period, else None."""
        if self._t0 < 0:
            self._t0 = t
        if self.period:
            return self._follow(x, t)
        w = self._step * self._block
        i = int((t - self._t0) / w + 1e-9)
        acc = self._acc
        ring = self._ring
        got = None
        while i > len(ring):   # the current block is over: push it (and carry empty ones)
            if len(ring) == SIZE:   # full (and looked at): halve the resolution
                self._ring = ring = array("d", [(ring[j] + ring[j + 1]) / 2
                                                for j in range(0, SIZE, 2)])
                self._block *= 2
                w = self._step * self._block
                i = int((t - self._t0) / w + 1e-9)
                continue
            if acc[1]:
                self._last = acc[0] / acc[1]
            acc[0] = acc[1] = 0.0
            ring.append(self._last)
            if len(ring) in CHECK_AT:
                got = self._look() or got
        acc[0] += x
        acc[1] += 1.0
        return got

    def fold(self, bins: int, period: float, origin: float
             ) -> tuple[list[float], float, float] | None:
        """The history folded onto ``bins`` phases of ``period`` counted from ``origin`` (the
        detrended block means' average per phase; a phase no block fell in takes its nearest
        neighbour's), with the mean square of the detrended history before and after taking
        out, from each block, its phase's mean over the other blocks."""
        if len(self._ring) < 2:
            return None
        x = _detrended(self._ring)
        w = self._block * self._step
        at = [int((((self._t0 + (i + 0.5) * w - origin) % period) / period) * bins) % bins
              for i in range(len(x))]
        sums, cnt = [0.0] * bins, [0] * bins
        for j, v in zip(at, x, strict=True):
            sums[j] += v
            cnt[j] += 1
        have = [j for j in range(bins) if cnt[j]]
        near = [min(have, key=lambda h: min((h - j) % bins, (j - h) % bins)) for j in range(bins)]
        prof = [sums[h] / cnt[h] for h in near]
        mean = sum(prof) / bins
        prof = [v - mean for v in prof]
        before = sum(v * v for v in x) / len(x)
        # Each block against its phase's mean without it (cross-validated: a fold of noise
        # predicts the block it left out worse than no fold at all).
        after = sum((v - (sums[j] - v) / (cnt[j] - 1) + mean) ** 2 if cnt[j] > 1 else v * v
                    for j, v in zip(at, x, strict=True)) / len(x)
        return prof, before, after

    def _follow(self, x: float, t: float) -> tuple[float, float] | None:
        """Refine the period found, cycle by cycle: the phase of each cycle's fundamental
        (its Fourier coefficient at the period found) moves from one cycle to the next by
        2 pi (found / true - 1); the average move, each step weighted by the two cycles'
        amplitudes (the pulse-pair estimate), gives the true period to a small fraction of a
        window once many cycles have been seen, where the ring's blocks could not."""
        tr = self._track
        got = None
        if not tr:
            if self._ring:   # the history the period was found in is no longer needed
                self._ring = array("d")
            self._track = tr = array("d", [t, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                           self.period, 0.0])
        ref = tr[10]
        if t >= tr[0] + ref:   # a cycle is over
            if tr[4]:
                c, s = tr[1], tr[2]
                pc, ps = tr[5], tr[6]
                if pc or ps:
                    tr[8] += c * pc + s * ps
                    tr[9] += s * pc - c * ps
                    tr[11] += sqrt((c * c + s * s) * (pc * pc + ps * ps))
                    step = atan2(tr[9], tr[8])
                    p = ref / (1.0 - step / (2 * pi))
                    # Only while the cycles keep their phase (coherent) and near the period
                    # the ring found: a weak cycle's phase wanders and says nothing.
                    if (tr[8] * tr[8] + tr[9] * tr[9] >= (COHERENCE * tr[11]) ** 2
                            and abs(p - ref) <= DRIFT * ref and p != self.period):
                        self.period = p
                        got = (p, self._t0)
                tr[5], tr[6], tr[7] = c, s, tr[3] / tr[4]
            tr[1] = tr[2] = tr[3] = tr[4] = 0.0
            tr[0] += ref * floor((t - tr[0]) / ref)
        theta = 2 * pi * (t - tr[0]) / ref
        y = x - tr[7]    # the level leaks into the coefficient where a period is fractional
        tr[1] += y * cos(theta)
        tr[2] += y * sin(theta)
        tr[3] += x
        tr[4] += 1.0
        return got

    def _look(self) -> tuple[float, float] | None:
        x = _detrended(self._ring)
        k = len(x)
        var = sum(map(mul, x, x)) / k   # (the generator's products, in its order)
        if var <= 0.0:
            return None
        lag: float
        if self.period:   # found before: refined at the finer precision a longer span gives
            lag = self.period / (self._block * self._step)
            p = _refine(x, lag, 0.5)
        else:
            found = _fundamental(x)
            if found is None:
                self._cand = 0.0
                return None
            lag = found
            p = _refine(x, lag, 1.0) * self._block * self._step
            # Found twice in a row (the second look with a third or more of history added):
            # what one look finds in a short history can be chance.
            cand, self._cand = self._cand, p
            if not cand or abs(p - cand) > max(CONFIRM * p, self._block * self._step):
                return None
            p /= self._block * self._step
        self.period = p * self._block * self._step
        return self.period, self._t0


def _fundamental(values: list[float]) -> int | None:
    """The smallest lag that is clearly a cycle of ``values`` (see the module), if any. The
    tests are on ranks: one burst in a heavy-tailed series is one rank, not most of the
    spread (which any fold that puts it in a phase of its own would seem to explain)."""
    x = _ranks(values)
    k = len(x)
    # (sum over map(mul): the same products added in the same order as a generator's, with no
    # Python frame per term.)
    var = sum(map(mul, x, x)) / k
    if var <= 0.0:
        return None
    acf = [1.0] + [s / (k - lag) / var
                   for lag, s in enumerate(_lag_sums(x, k // CYCLES + 1), 1)]
    lags = []
    low = 1.0
    for lag in range(1, k // CYCLES + 1):
        a = acf[lag]
        low = min(low, a)
        if (lag >= MIN_LAG and a >= ACF_MIN and a - low >= DIP_MIN
                and a >= acf[lag - 1] and a >= acf[lag + 1]):
            lags.append((lag, a))
    if not lags:
        return None
    best = max(a for _, a in lags)
    lag = min(lag for lag, a in lags if a >= SAME_CYCLE * best)
    # The levels and their steps: a random walk's levels fold into anything, its steps do not.
    steps = _ranks([values[i + 1] - values[i] for i in range(k - 1)])
    return lag if min(_fold_z(x, lag), _fold_z(steps, lag)) >= FOLD_Z else None


def _lag_sums_py(x: list[float], top: int) -> list[float]:
    """For each lag 1..``top``, the sum of ``x``'s products with itself ``lag`` apart: the
    reference for ``lag_sums`` in baselines/_quantity.c (tests/test_quantity_twin.py), which
    adds in the same order. (sum over map(mul): no Python frame per term.)

    >>> _lag_sums_py([1.0, -2.0, 0.5], 2)
    [-3.0, 0.5]
    """
    k = len(x)
    return [sum(map(mul, x[:k - lag], x[lag:])) for lag in range(1, top + 1)]


_lag_sums: Callable[[list[float], int], list[float]] = _lag_sums_py
if not os.environ.get("DETECTOR_NO_EXTENSIONS"):
    with contextlib.suppress(ImportError):
        _lag_sums = importlib.import_module("baselines._quantity").lag_sums


def _ranks(v: list[float]) -> list[float]:
    """Ranks of ``v`` less their mean (ties share their average rank).

    >>> _ranks([10.0, -3.0, 10.0, 500.0])
    [0.0, -1.5, 0.0, 1.5]
    """
    order = sorted(range(len(v)), key=v.__getitem__)
    out = [0.0] * len(v)
    mid = (len(v) - 1) / 2
    if len(set(v)) == len(v):   # no ties (the usual case): each value its own rank
        for i, m in enumerate(order):
            out[m] = i - mid
        return out
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for m in order[i:j + 1]:
            out[m] = (i + j) / 2 - mid
        i = j + 1
    return out


def _fold_z(x: list[float], lag: int) -> float:
    """How far folding ``x`` at ``lag`` explains its spread beyond chance: the one-way
    analysis of variance's F over the ``lag`` phases, as a standard score (Paulson's
    approximation of the F distribution).

    >>> round(_fold_z([0.0, 1.0] * 8, 2), 1) > 10, round(_fold_z([0.0, 1.0, 1.0, 0.0] * 4, 2), 1)
    (True, -1.6)
    """
    k = len(x)
    sums, cnt = [0.0] * lag, [0] * lag
    for i, v in enumerate(x):
        sums[i % lag] += v
        cnt[i % lag] += 1
    m = sum(x) / k
    total = sum((v - m) ** 2 for v in x)
    between = sum(c * (s / c - m) ** 2 for s, c in zip(sums, cnt, strict=True) if c)
    within = total - between
    if within <= 1e-12 * total:
        return float("inf")
    f = (between / (lag - 1)) / (within / (k - lag))
    a, b, c = 2.0 / (9.0 * (lag - 1)), 2.0 / (9.0 * (k - lag)), f ** (1.0 / 3.0)
    return ((1.0 - b) * c - (1.0 - a)) / sqrt(b * c * c + a)


def _detrended(ring: array) -> list[float]:
    """The values less their least-squares line."""
    k = len(ring)
    dx, sxx = _centred(k)
    my = sum(ring) / k
    # (The products and sums of the generators they replace, in the same order.)
    slope = sum(map(mul, dx, [v - my for v in ring])) / sxx
    return [v - my - slope * d for d, v in zip(dx, ring, strict=True)]


_CENTRED: dict[int, tuple[list[float], float]] = {}


def _centred(k: int) -> tuple[list[float], float]:
    """The positions 0..k-1 less their mean, and the sum of their squares (exact: multiples of
    0.25), for each ring size met (a handful: the sizes looked at)."""
    got = _CENTRED.get(k)
    if got is None:
        mx = (k - 1) / 2
        dx = [j - mx for j in range(k)]
        got = (dx, sum(d ** 2 for d in dx))
        if len(_CENTRED) < 64:   # bounded
            _CENTRED[k] = got
    return got


def _refine(x: list[float], lag: float, width: float) -> float:
    """The period (in blocks, fractional) within ``width`` of ``lag`` that best lines every
    value up with the ones whole periods before it (linear interpolation between blocks)."""
    k = len(x)
    best, arg = -float("inf"), lag
    steps = int(width * REFINE_STEPS)
    for s in range(-steps, steps + 1):
        p = lag + s / REFINE_STEPS
        # Pearson's correlation, not the plain product: interpolation shrinks the spread of
        # what it interpolates, which would favour whole lags.
        xy = xx = yy = 0.0
        for i in range(k):
            xi = x[i]
            j = i - p
            while j >= 0.0:
                lo = int(j)
                f = j - lo
                v = x[lo] + f * (x[lo + 1] - x[lo]) if f else x[lo]
                xy += xi * v
                xx += xi * xi
                yy += v * v
                j -= p
        r = xy / sqrt(xx * yy) if xx > 0 and yy > 0 else -1.0
        if r > best:
            best, arg = r, p
    return arg
