"""Evidence that accumulates: one-sided CUSUMs of log-likelihood ratios per (cohort, signal).

A window's own score asks "is this window surprising?"; a small cohort's persistent shift
may never make one window surprising (one prompt-injection hit where 0.007 are expected is a
z of about 2.5). A CUSUM adds each window's log-likelihood ratio of "shifted" against
"baseline" and forgets nothing but what the baseline explains (it drains back to 0), so a
shift is confirmed after as many windows as its counts need (Page 1954; Lorden 1971).

- Counts (rates): Poisson log-likelihood ratios ``k ln ρ − (ρ − 1) μ`` for a few design
  ratios ``ρ`` (the rise sizes it is tuned for; the largest statistic speaks), divided by the
  signal's learned over-dispersion (a quasi-likelihood: a noisier signal needs more).
- Standard scores (quantities): Gaussian ratios ``δ z − δ²/2`` for a shift of ``δ`` units.

The statistic is reported in the same standard units as every score: ``S`` nats of evidence
is the z whose normal tail is ``e^−S`` (:func:`to_standard`). The false-alarm guarantee of a
CUSUM is in those terms: the average run length between false alarms on clean traffic is at
least ``e^h`` windows for a threshold of ``h`` nats, so the default threshold of 5 standard
units (h = 15.1 nats) means a false alarm per (cohort, signal) less often than every ~3.5 M
windows, about once in 6.7 years of 60 s windows (``tests/test_sequential.py`` checks it on
simulated null traffic). One window adds at most a bounded share of the threshold (the scorer
gives a rate's half and a quantity's a third), so one window alone never confirms a shift.

>>> c = Cusum()
>>> for _ in range(6):                      # 1 hit a window where 0.007 are expected
...     c.update_counts(1, 0.007, 1.0, cap=5.0)
>>> round(to_standard(c.up), 1) >= 5.0     # confirmed after six windows
True
>>> c.update_counts(0, 0.007, 1.0, cap=5.0); c.up > 0   # a quiet window drains a little
True
>>> q = Cusum()
>>> for z in [1.0, -1.0] * 50:              # clean noise: no evidence builds up
...     q.update_z(z, cap=5.0)
>>> to_standard(max(q.up, q.down)) < 2
True
"""

from __future__ import annotations

from collections.abc import Sequence
from math import erfc, exp, isfinite, log
from statistics import NormalDist

__all__ = ["ZEROS", "Z_QUIET", "Cusum", "nats_for", "settle", "to_standard"]

#: Rises the count CUSUM is tuned for (its statistic is the largest of the four): ×3 on a
#: busy cohort up to ×100 on a rare event.
RHO_UP = (3.0, 10.0, 30.0, 100.0)
_LOG_UP = tuple(log(r) for r in RHO_UP)
_RHO_UP_M1 = tuple(r - 1.0 for r in RHO_UP)
#: Below this many times the expected count no upward design gains (ρ = 3's break-even).
RISE_MIN = min((r - 1.0) / log(r) for r in RHO_UP)
ZEROS = (0.0,) * len(RHO_UP)   # shared: never kept as a statistic's own list
#: A fall to a quarter (a collapse of refusals, a dried-up signal).
RHO_DOWN = 0.25
_LOG_DOWN = log(RHO_DOWN)
#: The quantity CUSUM's design shift, in standard units: only windows beyond 1.5 add.
DELTA = 3.0
#: A standard score within ±this adds nothing to an idle quantity statistic (δ z ≤ δ²/2).
Z_QUIET = DELTA / 2.0
_Z_CLIP = 6.0
_N = NormalDist()
_MAX_NATS = 700.0   # exp(-S) stays a normal float


def to_standard(nats: float) -> float:
    """The z-score whose upper normal tail is ``e^−nats`` (0 for no evidence).

    >>> round(to_standard(15.06), 2)
    5.0
    """
    if nats <= 0.7:   # tail ≥ 0.5
        return 0.0
    return -_N.inv_cdf(exp(-min(nats, _MAX_NATS)))


def settle(c: Cusum, ups: Sequence[float], up: float, down: float, h: float, d: str
           ) -> tuple[float, bool, Sequence[float], float]:
    """A window's peeked statistics (``ups``, the largest ``up``, and ``down``) against the
    threshold ``h`` nats in direction ``d``, as the scorer takes them for a rate and for a
    quantity alike: (evidence in standard units, + for a rise and - for a fall; whether it
    confirms a shift, at ``h`` and growing past ``c``'s; the upward statistics and the
    downward one to keep). A confirmation restarts the statistic half-way (Page's restart
    after an alarm, kept warm): the alert stays alive while fresh evidence keeps coming, and
    the evidence piled up during an incident does not confirm its aftermath.

    >>> settle(Cusum(), [16.0, 0.0, 0.0, 0.0], 16.0, 0.0, 15.0, "up")[1:]
    (True, [7.5, 0.0, 0.0, 0.0], 0.0)
    """
    rising = up > c.up and up >= h and d != "down"
    falling = down > c.down and down >= h and d != "up"
    keep = h / 2
    kept_ups = [min(u, keep) for u in ups] if rising else ups
    kept_down = min(down, keep) if falling else down
    if d == "up":
        down = 0.0
    elif d == "down":
        up = 0.0
    if up >= down:
        return to_standard(up), rising, kept_ups, kept_down
    return -to_standard(down), falling, kept_ups, kept_down


def nats_for(z: float) -> float:
    """The evidence (nats) a threshold in standard units asks for: ``−ln P(Z ≥ z)``.

    >>> round(nats_for(5.0), 2)
    15.06
    """
    p = 0.5 * erfc(z / 2 ** 0.5)
    return -log(p) if p > 0 else _MAX_NATS


class Cusum:
    """Upward and downward evidence of one (cohort, signal); four floats and a spare."""

    __slots__ = ("_ups", "down", "up")

    def __init__(self) -> None:
        self._ups = [0.0] * len(RHO_UP)   # per design ratio
        self.up = 0.0                      # the largest of them
        self.down = 0.0

    def idle(self) -> bool:
        return self.up == 0.0 and self.down == 0.0

    def reset(self) -> None:
        self._ups = [0.0] * len(RHO_UP)
        self.up = self.down = 0.0

    def peek_counts(self, k: float, mu: float, disp: float, cap: float
                    ) -> tuple[Sequence[float], float]:
        """The statistics this window would give (pure): ``k`` events where ``mu`` were
        expected, at over-dispersion ``disp``; one window adds at most ``cap`` nats."""
        return self.peek_up(k, mu, disp, cap), self.peek_down(k, mu, disp, cap)

    def peek_up(self, k: float, mu: float, disp: float, cap: float) -> Sequence[float]:
        """The upward statistics alone (see :meth:`peek_counts`)."""
        if not self.up and k <= RISE_MIN * mu:
            return ZEROS   # no design gains from this window: still no evidence
        # Unrolled over the four designs, with min/max as comparisons: a hot path.
        s0, s1, s2, s3 = self._ups
        m0, m1, m2, m3 = _RHO_UP_M1
        l0, l1, l2, l3 = _LOG_UP
        v0 = (k * l0 - m0 * mu) / disp
        v1 = (k * l1 - m1 * mu) / disp
        v2 = (k * l2 - m2 * mu) / disp
        v3 = (k * l3 - m3 * mu) / disp
        v0 = s0 + (cap if cap < v0 else v0)
        v1 = s1 + (cap if cap < v1 else v1)
        v2 = s2 + (cap if cap < v2 else v2)
        v3 = s3 + (cap if cap < v3 else v3)
        return [v0 if v0 > 0.0 else 0.0, v1 if v1 > 0.0 else 0.0,
                v2 if v2 > 0.0 else 0.0, v3 if v3 > 0.0 else 0.0]

    def peek_down(self, k: float, mu: float, disp: float, cap: float) -> float:
        """The downward statistic alone (see :meth:`peek_counts`)."""
        return max(0.0, self.down + min((k * _LOG_DOWN - (RHO_DOWN - 1.0) * mu) / disp, cap))

    def peek_z(self, z: float, cap: float) -> tuple[float, float]:
        """(up, down) after a window with standard score ``z`` (pure)."""
        z = -_Z_CLIP if z < -_Z_CLIP else _Z_CLIP if z > _Z_CLIP else z
        half = DELTA * DELTA / 2.0
        return (max(0.0, self.up + min(DELTA * z - half, cap)),
                max(0.0, self.down + min(-DELTA * z - half, cap)))

    def update_counts(self, k: float, mu: float, disp: float, cap: float) -> None:
        ups, self.down = self.peek_counts(k, mu, disp, cap)
        self._ups = list(ups)
        self.up = max(ups)

    def update_z(self, z: float, cap: float) -> None:
        self.up, self.down = self.peek_z(z, cap)
        self._ups[0] = self.up

    def state(self) -> list[float]:
        """Plain numbers for the changelog: the upward statistics, then the downward one."""
        return [*self._ups, self.down]

    @classmethod
    def from_state(cls, st: list[float]) -> Cusum:
        """The inverse of :meth:`state`; a ValueError for anything else.

        >>> c = Cusum(); c.update_counts(3, 0.1, 1.0, cap=5.0)
        >>> Cusum.from_state(c.state()).up == c.up
        True
        """
        if len(st) != len(RHO_UP) + 1 or not all(
                isinstance(x, int | float) and isfinite(x) and x >= 0 for x in st):
            raise ValueError(f"expected {len(RHO_UP) + 1} finite numbers >= 0")
        c = cls()
        c.set([float(x) for x in st[:-1]], float(st[-1]))
        return c

    def keep(self, ups: Sequence[float], up: float, down: float) -> None:
        """:meth:`set` with ``up``, the largest of ``ups``, already known."""
        self._ups = list(ups)
        self.up = up
        self.down = down

    def set(self, ups: Sequence[float], down: float) -> None:
        self._ups = list(ups)
        self.up = max(ups)
        self.down = down
