"""Over-dispersion: how much noisier a signal is than pure counting noise.

The variance of the fast horizon's raw scores on normal windows (1.0 is pure Poisson noise),
floored at 1 and capped. It is the variance around the scores' own mean, not their mean
square: during a slow ramp the scores lean the same way for hours, and a mean square would
call that lean "noise" and let the ramp hide itself.

>>> d = Dispersion(0.05, cap=25.0)
>>> for z in [1.5] * 200:       # a steady lean, no scatter
...     d.update(z)
>>> d.get()
1.0
>>> for z in [2.5, -2.5] * 200:  # real scatter: about six times Poisson
...     d.update(z)
>>> round(d.get())
6
"""

from __future__ import annotations

__all__ = ["Dispersion"]

_CLIP = 3.0


class Dispersion:
    __slots__ = ("_cap", "_m1", "_m2", "_rate")

    def __init__(self, rate: float, cap: float) -> None:
        self._rate = rate
        self._cap = cap
        self._m1 = 0.0
        self._m2 = 1.0

    def update(self, z: float) -> None:
        # Clipped: a handful of extreme windows (a step back down after a drift the baseline
        # had followed) must not make the signal look noisy for hours and blind it.
        z = -_CLIP if z < -_CLIP else _CLIP if z > _CLIP else z
        a = self._rate
        self._m1 += a * (z - self._m1)
        self._m2 += a * (z * z - self._m2)

    def update_get(self, z: float) -> float:
        """``update(z)``, then ``get()``, in one call (a rate learns this way every window)."""
        z = -_CLIP if z < -_CLIP else _CLIP if z > _CLIP else z
        a = self._rate
        m1 = self._m1 = self._m1 + a * (z - self._m1)
        m2 = self._m2 = self._m2 + a * (z * z - self._m2)
        v = m2 - m1 * m1
        v = v if v > 1.0 else 1.0
        cap = self._cap
        return v if v < cap else cap

    def get(self) -> float:
        v = self._m2 - self._m1 * self._m1
        v = v if v > 1.0 else 1.0            # min(cap, max(1.0, v)) without the calls
        cap = self._cap
        return v if v < cap else cap
