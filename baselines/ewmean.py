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
        self._mean: stats.Mean | None = stats.Mean()
        self._ew: stats.EWMean | None = None

    def update(self, x: float) -> None:
        if self._ew is not None:
            self._ew.update(x)
            return
        m = self._mean
        m.update(x)  # type: ignore[union-attr]
        if m.n * self.fading_factor >= 1.0:  # type: ignore[union-attr]
            self._ew = stats.EWMean(self.fading_factor)
            self._ew.update(m.get())  # type: ignore[union-attr]
            self._mean = None

    def get(self) -> float:
        return self._ew.get() if self._ew is not None else self._mean.get()  # type: ignore[union-attr]
