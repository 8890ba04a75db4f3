"""An exponentially weighted mean that starts from the mean of its first values.

river's ``EWMean`` starts at the first value it sees; with a long horizon (a small fading
factor) that one value keeps most of the weight for a long time: after 20 updates at 0.023 it
still has 63 %. For a rare-event rate whose first window had no events the baseline then sits
near zero, every later event looks anomalous, and anomalous windows are never learned. This
keeps river's exact ``Mean`` until 1/fading_factor values have been seen, then hands over to
river's ``EWMean`` seeded with that mean (the same as weighting by max(α, 1/n)).

>>> m = WarmEWMean(0.1)
>>> for x in [0.0] + [1.0] * 9:
...     _ = m.update(x)
>>> round(m.get(), 2)      # river's EWMean would say 0.61
0.9
"""

from __future__ import annotations

from typing import Any

from river import stats

__all__ = ["WarmEWMean"]


class WarmEWMean:
    # The hot paths below reach river's state one level down (its Rust EWMean, Mean's two
    # numbers): the same arithmetic without a Python frame per call, on every signal of every
    # window. tests/test_hot_paths.py holds them to river's public methods bit for bit.
    __slots__ = ("_ew", "_mean", "fading_factor")

    def __init__(self, fading_factor: float) -> None:
        self.fading_factor = fading_factor
        # Exactly one of the two is set: the exact mean until the hand-over, then the EWMean.
        # (river has no type information: both are Any to mypy, None checked by the code.)
        self._mean: Any = stats.Mean()
        self._ew: Any = None

    def update(self, x: float) -> float:
        """Learn ``x``; returns ``total()`` after it (the rates want both: one call)."""
        ew = self._ew
        if ew is not None:
            e = ew._ewmean
            e.update(x)   # EWMean.update(x)
            return e.get() * (1.0 / self.fading_factor)
        m = self._mean
        n = m.n + 1.0  # Mean.update(x): weight 1
        m.n = n
        m._mean += (1.0 / n) * (x - m._mean)
        if n * self.fading_factor >= 1.0:
            self._ew = stats.EWMean(self.fading_factor)
            self._ew.update(m._mean)
            self._mean = None
            return self.total()
        return m._mean * n

    def weight(self) -> float:
        """How many values the mean stands for: those seen, up to the horizon's 1/α."""
        return self._mean.n if self._ew is None else 1.0 / self.fading_factor

    def total(self) -> float:
        """The decayed sum: the mean times the values it stands for (``get() * weight()``)."""
        ew = self._ew
        if ew is not None:
            return ew._ewmean.get() * (1.0 / self.fading_factor)
        m = self._mean
        return m._mean * m.n

    def reset_to(self, x: float) -> None:
        """Forget the history: the mean is ``x`` from now on, as if long established."""
        self._ew = stats.EWMean(self.fading_factor)
        self._ew.update(x)
        self._mean = None

    def get(self) -> float:
        ew = self._ew
        return ew._ewmean.get() if ew is not None else self._mean._mean
