"""Attribution: which version value's events carry an anomaly (the first rollback candidate).

Stage 1 hands each window's counters split by value of each field of
:data:`~detector.core.partials.VALUE_FIELDS` (``Partial.values``). Each cohort keeps those
counters decayed over a few windows (:class:`Trail`, a half-life of
``alerting.attribution_half_life_windows``), so the windows before a change are still there to
compare with after it. For an alert, each candidate value (one that appeared after the
cohort's baseline started, within ``alerting.suspect_lookback_windows``) is tested: the
signal among events with the value against the rest of the cohort's events, as counts with
the baseline's Poisson score (a rate; its reference's own counting noise and the baseline's
over-dispersion widen it), or as a difference of means (a quantity). The value with the
strongest evidence in the alert's direction is named; none at ``attribution_min_score`` or
more gives no suspected change and says why. A change rolled out to all traffic is told apart
from an earlier one by the windows before it: the earlier value's events were fine then.

>>> t = Trail(0)
>>> for w in range(30):   # prompt v1 fails 1 in 100; from window 20 a canary, v2, 30 in 100
...     t.add(w, {1: {"v1": {}} if w < 20 else {"v1": {0: 900, 1: 900, 2: 9}, "v2": {}}},
...           [1000, 1000, 10] if w < 20 else [1000, 1000, 39])
>>> z, with_, without = t.contrast(1, "v2", 29, ("rate", 2, 1, -1, True), 1.0)
>>> round(with_, 2), round(without, 3), z > 10
(0.3, 0.01, True)
>>> t.candidates(29, lookback=120, settle=5)
[(1, 'v2')]
"""

from __future__ import annotations

from math import expm1, log1p, sqrt
from typing import Any, Final

import msgspec

from baselines.poisson import poisson_score
from detector.core.partials import OTHER, SCALE, SEP, UNKNOWN, VALUE_FIELDS, split_values
from detector.core.signals import EVENTS

__all__ = ["TOOL_FIELD", "Trail", "describe"]

TOOL_FIELD: Final = VALUE_FIELDS.index("tool_name")
#: Values of one field a cohort's trail keeps (those with the most recent events).
TRAIL_VALUES: Final = 8
#: Units with the value a test needs to say anything.
MIN_UNITS: Final = 3.0

Sig = tuple[Any, ...]   # a Signal's (kind, num, den, sq, log), as contrast reads them
#: A value's entry as stored: window decayed to, first seen, counters, last seen, and the
#: counters of the windows in which its cohort had no anomaly ("settled"); None for both
#: while it is the only value its field has had (its counters are the cohort's).
_Entry = tuple[int, int, dict[int, float] | None, int, dict[int, float] | None]


class _State(msgspec.Struct, array_like=True):
    """A trail as stage-2 state stores it (detector.core.snapshot)."""

    start: int
    newest: int
    decay: float
    total: _Entry
    fields: list[dict[str, _Entry]]


class Trail:
    """One cohort's per-value counters, decayed: for each field, value -> [window decayed
    to, window first seen, counters, window last seen, settled counters]; ``total`` the
    cohort's own. Decay is applied lazily (on the next add or read), so a value that is
    quiet costs nothing."""

    __slots__ = ("_pending", "decay", "fields", "newest", "start", "total")

    def __init__(self, start: int, decay: float = 0.977) -> None:   # a 30-window half-life
        self.decay = decay
        self.start = start    # the first window the cohort was seen
        self.newest = -1      # the latest first-seen window of any value (-1: none)
        self.fields: list[dict[str, list[Any]]] = [{} for _ in VALUE_FIELDS]
        self.total: list[Any] = [start, start, {}, start, {}]
        # This window's split, kept between add and settle.
        self._pending: tuple[int, list[tuple[list[Any], dict[int, int]]]] | None = None

    def state(self) -> list[Any]:
        return [self.start, self.newest, self.decay, self.total, self.fields]

    @classmethod
    def from_state(cls, raw: Any) -> Trail:
        """A trail from :meth:`state`'s value (decoded msgpack); ValueError if malformed."""
        try:
            st = msgspec.convert(raw, _State)
        except msgspec.ValidationError as e:
            raise ValueError(f"attribution trail: {e}") from None
        if not 0.0 < st.decay < 1.0 or len(st.fields) != len(VALUE_FIELDS):
            raise ValueError("attribution trail: bad decay or fields")
        t = cls(st.start, st.decay)
        t.newest = st.newest
        t.total = list(st.total)
        t.fields = [{v: list(e) for v, e in f.items()} for f in st.fields]
        return t

    def _at(self, e: list[Any], w: int) -> dict[int, float]:
        """Entry ``e``'s counters decayed to window ``w``; an entry whose counters are None
        has carried all of its cohort's events so far, and reads the cohort's."""
        if e[2] is None:
            e[0] = w
            return self._at(self.total, w)
        if w > e[0]:
            f = self.decay ** (w - e[0])
            for c in (e[2], e[4]):
                for i in c:
                    c[i] *= f
            e[0] = w
        vec: dict[int, float] = e[2]
        return vec

    def _settled(self, e: list[Any], w: int) -> dict[int, float]:
        self._at(e, w)
        st: dict[int, float] = (self.total if e[2] is None else e)[4]
        return st

    def add(self, w: int, values: dict[int, dict[str, dict[int, int]]], counts: list[int]
            ) -> None:
        """Add one window's per-value counters (a partial's ``values`` and ``counts``)."""
        whole_counts = {i: n for i, n in enumerate(counts) if n}
        tot = self._at(self.total, w)   # (before this window's: implicit entries copy it)
        added = []
        for f, vals in values.items():
            if f >= len(self.fields):
                continue
            known = self.fields[f]
            one = len(vals) == 1 and not next(iter(vals.values()))
            if one:
                v = next(iter(vals))
                e = known.get(v)
                if e is not None and e[2] is None:   # still the only value: nothing to add
                    e[0] = e[3] = w
                    continue
                if e is None and not known and f != TOOL_FIELD:
                    known[v] = [w, w, None, w, None]   # all the cohort's events, so far
                    self.newest = max(self.newest, w)
                    continue
                split = {v: whole_counts}
            else:
                split = split_values(vals, counts)
            for u, e in known.items():   # another value: the implicit one gets its own
                if e[2] is None:
                    known[u] = [w, e[1], dict(tot), e[3], dict(self.total[4])]
            for v, c in split.items():
                if f == TOOL_FIELD and v == UNKNOWN:
                    continue   # events that call no tool
                e = known.get(v)
                if e is None:
                    e = known[v] = [w, w, {}, w, {}]
                    self.newest = max(self.newest, w)
                e[3] = w
                vec = self._at(e, w)
                for i, n in c.items():
                    vec[i] = vec.get(i, 0.0) + n
                added.append((e, c))
            if len(known) > TRAIL_VALUES:
                for v in sorted(known, key=lambda v: (self._at(known[v], w).get(EVENTS, 0.0),
                                                      v))[:len(known) - TRAIL_VALUES]:
                    del known[v]
        for i, n in whole_counts.items():
            tot[i] = tot.get(i, 0.0) + n
        added.append((self.total, whole_counts))
        self._pending = (w, added)

    def candidates(self, w: int, lookback: int, settle: int) -> list[tuple[int, str]]:
        """(field, value) pairs that are changes: first seen after the cohort's first
        ``settle`` windows (its initial mix is its baseline) and within ``lookback``."""
        if self.newest < max(w - lookback, self.start + settle):
            return []
        return [(f, v) for f, known in enumerate(self.fields) for v, e in sorted(known.items())
                if v not in (UNKNOWN, OTHER) and e[1] >= max(w - lookback, self.start + settle)]

    def baseline_of(self, f: int, v: str, w: int, now: dict[str, dict[int, int]]) -> str | None:
        """The value of field ``f`` the candidate ``v`` replaced: of those seen before it,
        the one whose traffic fell the most (this window's events, ``now``, against its
        decayed total: about none for a value rolled over, a little less for one a canary
        takes a share of); on a tie, the one with most events."""
        known = self.fields[f]
        first = known[v][1]
        best: tuple[float, float, str] | None = None
        for u, e in known.items():
            if u == v or e[1] >= first or u in (UNKNOWN, OTHER):
                continue
            seen = self._at(e, w).get(EVENTS, 0.0)
            if seen <= 0.0:
                continue
            cand = (-now.get(u, {}).get(EVENTS, 0) / seen, seen, u)
            if best is None or cand > best:
                best = cand
        return best[2] if best else None

    def settle(self, w: int) -> None:
        """Window ``w`` (the last added) had no anomaly in this cohort: its counters also
        count as settled, what a value's events looked like before an anomaly."""
        if self._pending is None or self._pending[0] != w:
            return
        for e, c in self._pending[1]:
            st = e[4]   # decayed to w by add (and not implicit: those follow the total)
            for i, n in c.items():
                st[i] = st.get(i, 0.0) + n
        self._pending = None

    def contrast(self, f: int, v: str, w: int, sig: Sig, disp: float
                 ) -> tuple[float, float, float]:
        """(score, observed with, observed without) of the signal among the value's events
        against the rest of the cohort's: + where the value's events are higher."""
        e = self.fields[f].get(v)
        if e is None:
            return 0.0, 0.0, 0.0
        vec = self._at(e, w)
        z, with_, without, _ = _test(sig, vec, self._at(self.total, w), disp)
        return z, with_, without

    def before(self, f: int, v: str, w: int, sig: Sig, disp: float, with_: float
               ) -> tuple[float, float]:
        """The value's settled events (windows of its cohort without an anomaly) against the
        rest's: (score, the score those units would give had the value's events been as
        they are now, ``with_``). A value whose settled events were ordinary, and would have
        shown it, did not bring the anomaly (it came later)."""
        e = self.fields[f].get(v)
        if e is None:
            return 0.0, 0.0
        z, _, _, power = _test(sig, self._settled(e, w), self._settled(self.total, w), disp,
                               with_)
        return z, power


def _test(sig: Sig, vec: dict[int, float], tot: dict[int, float], disp: float,
          as_with: float | None = None) -> tuple[float, float, float, float]:
    """(score, with, without, the score had "with" been ``as_with``) of the counters ``vec``
    against ``tot`` minus them."""
    kind, num, den, sq, log = sig
    if kind == "rate":
        k1, n1 = vec.get(num, 0.0), vec.get(den, 0.0)
        k0, n0 = tot.get(num, 0.0) - k1, tot.get(den, 0.0) - n1
        if n1 < MIN_UNITS or n0 < MIN_UNITS:
            return 0.0, k1 / n1 if n1 > 0 else 0.0, k0 / n0 if n0 > 0 else 0.0, 0.0
        r0 = (max(k0, 0.0) + 0.5) / (n0 + 1.0)
        # The reference rate is itself counted: its noise, n1²·r0/n0, widens the test.
        sd = sqrt(max(disp, 1.0) * (1.0 + n1 / (n0 + 1.0)))
        power = 0.0 if as_with is None else poisson_score(n1 * as_with, n1 * r0) / sd
        return poisson_score(k1, n1 * r0) / sd, k1 / n1, max(k0, 0.0) / n0, power
    if kind == "quantity":
        n1, s1, q1 = vec.get(num, 0.0), vec.get(den, 0.0), vec.get(sq, 0.0)
        n0, s0, q0 = tot.get(num, 0.0) - n1, tot.get(den, 0.0) - s1, tot.get(sq, 0.0) - q1
        if n1 < MIN_UNITS or n0 < MIN_UNITS:
            return 0.0, 0.0, 0.0, 0.0
        m1, m0 = s1 / n1, s0 / n0
        v1, v0 = max(q1 / n1 - m1 * m1, 0.0), max(q0 / n0 - m0 * m0, 0.0)
        se = sqrt(v1 / n1 + v0 / n0 + 1.0)
        show = (lambda m: expm1(m / SCALE)) if log else (lambda m: m / SCALE)
        power = 0.0
        if as_with is not None:
            mw = (log1p(max(as_with, 0.0)) if log else as_with) * SCALE
            power = (mw - m0) / se
        return (m1 - m0) / se, show(m1), show(m0), power
    return 0.0, 0.0, 0.0, 0.0


def describe(f: int, v: str, baseline: str | None) -> dict[str, Any]:
    """The field, model, baseline and now of a candidate as the alert names them (a model
    version with its model)."""
    out: dict[str, Any] = {"field": VALUE_FIELDS[f]}
    if f == 0:
        model, _, now = v.partition(SEP)
        if baseline is not None:
            bm, _, bv = baseline.partition(SEP)
            baseline = bv if bm == model else f"{bm} {bv}"
        out.update(baseline=baseline, now=now, model=model)
    else:
        out.update(baseline=baseline, now=v)
    return out
