"""An exponentially weighted mean that starts from the mean of its first values.

river's ``EWMean`` starts at the first value it sees; with a long horizon (a small fading
factor) that one value keeps most of the weight for a long time: after 20 updates at 0.023 it
still has 63 %. For a rare-event rate whose first window had no events the baseline then sits
near zero, every later event looks anomalous, and anomalous windows are never learned. This
keeps river's exact ``Mean`` until 1/fading_factor values have been seen, then hands over to
river's ``EWMean`` seeded with that mean (the same as weighting by max(α, 1/n)).

>>> m = WarmEWMean(0.1)
>>> for x in [0.0] + [1.0] * 9:
...     m.update(x)
>>> round(m.get(), 2)      # river's EWMean would say 0.61
0.9
"""

from __future__ import annotations

from river import stats

__all__ = ["WarmEWMean"]


class WarmEWMean:
    __slots__ = ("_ew", "_mean", "fading_factor")

    def __init__(self, fading_factor: float) -> None:
        self.fading_factor = fading_factor
        # Exactly one of the two is set: the exact mean until the hand-over, then the EWMean.
        self._mean: stats.Mean | None = stats.Mean()
        self._ew: stats.EWMean | None = None

    def update(self, x: float) -> None:
        ew = self._ew
        if ew is not None:
            ew.update(x)
            return
        m = self._mean
        assert m is not None   # exactly one of the two is set
        m.update(x)
        if m.n * self.fading_factor >= 1.0:
            ew = self._ew = stats.EWMean(self.fading_factor)
            ew.update(m.get())
            self._mean = None

    def weight(self) -> float:
        """How many values the mean stands for: those seen, up to the horizon's 1/α."""
        m = self._mean
        return m.n if m is not None else 1.0 / self.fading_factor

    def total(self) -> float:
        """The decayed sum: the mean times the values it stands for (``get() * weight()``)."""
        ew = self._ew
        if ew is not None:
            return ew.get() * (1.0 / self.fading_factor)
        m = self._mean
        assert m is not None
        return m.get() * m.n

    def reset_to(self, x: float) -> None:
        """Forget the history: the mean is ``x`` from now on, as if long established."""
        self._ew = stats.EWMean(self.fading_factor)
        self._ew.update(x)
        self._mean = None

    def get(self) -> float:
        ew, m = self._ew, self._mean
        if ew is not None:
            return ew.get()
        assert m is not None
        return m.get()
