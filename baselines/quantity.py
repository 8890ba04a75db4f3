"""Baseline of a per-event quantity (tokens, latency), scored on a window's mean.

The score divides the shift of the window mean by its standard error, which has two parts:
the per-event spread over √n (few events, little evidence) and the window-to-window spread
of the mean that normal traffic shows anyway.

>>> b = QuantityBaseline(fast=0.1, slow=0.01)
>>> import random
>>> rng = random.Random(1)
>>> for _ in range(60):
...     xs = [rng.gauss(300, 60) for _ in range(50)]
...     b.learn_one(len(xs), sum(xs), sum(x * x for x in xs))
>>> round(b.expected() / 10) * 10
300
>>> b.score_one(50, 50 * 900, 50 * 900 ** 2)[0] > 10    # output tripled
True
>>> abs(b.score_one(2, 2 * 340, 2 * 340 ** 2)[0]) < 2  # two slightly long outputs
True
"""

from __future__ import annotations

from math import sqrt

from baselines.ewmean import WarmEWMean

__all__ = ["QuantityBaseline"]


class QuantityBaseline:
    __slots__ = ("_between_fast", "_between_slow", "_fast", "_mf", "_ms", "_slow", "_w",
                 "_within", "n")

    def __init__(self, fast: float, slow: float) -> None:
        self._fast = WarmEWMean(fast)      # of window means
        self._slow = WarmEWMean(slow)
        self._within = WarmEWMean(fast)    # of within-window per-event variance
        self._between_fast = 0.0             # excess variance of window means between windows
        self._between_slow = 0.0
        self.n = 0
        self._mf = self._ms = self._w = 0.0   # cached means, refreshed per learned window

    def expected(self, slow: bool = False) -> float:
        return self._ms if slow else self._mf

    def score_one(self, n: float, s: float, q: float) -> tuple[float, float]:
        """Scores of a window with ``n`` values summing to ``s`` (squares to ``q``)."""
        if n <= 0 or not self.n:
            return 0.0, 0.0
        m = s / n
        noise = self._w / n + 1e-9
        return ((m - self._mf) / sqrt(noise + self._between_fast),
                (m - self._ms) / sqrt(noise + self._between_slow))

    def rebase(self, n: float, s: float, q: float) -> None:
        """Adopt a new normal: the mean (and spread) of ``n`` values summing to ``s``."""
        if n <= 0:
            return
        m = s / n
        for h in (self._fast, self._slow):
            h.reset_to(m)
        self._within.reset_to(max(0.0, q / n - m * m))
        self._between_slow = self._between_fast
        self._mf, self._ms, self._w = self._fast.get(), self._slow.get(), self._within.get()

    def learn_one(self, n: float, s: float, q: float, anomalous: bool = False) -> None:
        if n <= 0 or anomalous:
            return
        m = s / n
        if self.n:
            noise = self._w / n
            a = self._fast.fading_factor
            b = self._slow.fading_factor
            ex_f = max(0.0, (m - self._mf) ** 2 - noise)
            ex_s = max(0.0, (m - self._ms) ** 2 - noise)
            self._between_fast = (1 - a) * self._between_fast + a * ex_f
            self._between_slow = (1 - b) * self._between_slow + b * ex_s
        self._fast.update(m)
        self._slow.update(m)
        self._within.update(max(0.0, q / n - m * m))
        self.n += 1
        self._mf, self._ms, self._w = self._fast.get(), self._slow.get(), self._within.get()
