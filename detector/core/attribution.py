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

import sys
from array import array
from math import expm1, log, log1p, sqrt
from typing import Any, Final

import msgspec

from baselines.poisson import poisson_score
from detector.core.counting import _tally, scaled_add
from detector.core.partials import OTHER, SCALE, SEP, UNKNOWN, VALUE_FIELDS, split_values
from detector.core.signals import EVENTS

__all__ = ["TOOL_FIELD", "Trail", "describe"]

TOOL_FIELD: Final = VALUE_FIELDS.index("tool_name")
#: Values of one field a cohort's trail keeps (those with the most recent events).
TRAIL_VALUES: Final = 8
#: Units with the value a test needs to say anything.
MIN_UNITS: Final = 3.0
#: The lazy decay's scale is folded into the stored counters past this (a 4-byte float's
#: range is 3e38; folding is rare: about every few thousand windows).
_RESCALE: Final = 1e30
_LOG_RESCALE: Final = log(_RESCALE)
#: Numbers are stored as 4-byte floats (decayed counters need no more; the state is half).
_TYPE: Final = "f"
#: A row of Trail.meta: field, window first seen (after the cohort's first), decayed events.
_ROW: Final = 3
assert _ROW == 3   # _tally.trail_known spells it out
_FIELDS: Final = len(VALUE_FIELDS)

Sig = tuple[Any, ...]   # a Signal's (kind, num, den, sq, log), as contrast reads them
#: Counters as _at reads them: (stored numbers, where they start, how many, their scale).
_View = tuple["array[float]", int, int, float]
#: A window between add and settle: its index, its counts, and the candidates'.
_Pending = tuple[int, list[int], list[tuple[int, dict[int, int]]]]


class _State(msgspec.Struct, array_like=True):
    """A trail as stage-2 state stores it (detector.core.snapshot)."""

    format: int     # 2: this layout (1, the first one, of dicts, is not read back)
    start: int
    newest: int
    decay: float
    settle: int
    lookback: int
    ref: int
    total: bytes                      # array('f'): counters, then settled counters
    names: list[str]
    meta: bytes                       # array('f'): _ROW per name
    vecs: dict[int, bytes]            # row -> array('f'): counters, then settled ones


class Trail:
    """One cohort's counters, decayed (a half-life of a few windows), in total and, for the
    values that are rollback candidates, per value.

    Compact (numbers as 4-byte floats): the decay is lazy, every number stored multiplied
    by ``decay ** -(w - ref)`` (so adding a window is additions only, and reading divides by
    one scale); the cohort's counters and those of its windows without an anomaly
    ("settled") are one ``array('f')``; each value of each field a name (interned: cohorts
    share them) and a row of ``meta`` (field, first seen, events); only a value first seen
    after the cohort's first ``settle`` windows (a change, not its initial mix) has counters
    of its own (``vecs``), and only within ``lookback`` windows of it."""

    __slots__ = ("_cands", "_pending", "decay", "lookback", "meta", "names", "newest", "ref",
                 "start", "total", "vecs", "warm")

    def __init__(self, start: int, decay: float = 0.977, settle: int = 0,
                 lookback: int = 120) -> None:   # 0.977: a 30-window half-life
        self.decay = decay
        self.start = start    # the first window the cohort was seen
        self.newest = -1      # the latest first-seen window of any value (-1: none)
        self.warm = settle   # windows of the initial mix (no change yet)
        self.lookback = lookback
        self.ref = start      # stored numbers are decay ** -(w - ref) times their value
        self.total: array[float] = array(_TYPE)
        self.names: list[str] = []
        self.meta: array[float] = array(_TYPE)
        self.vecs: dict[int, array[float]] | None = None
        # This window's counts and the candidates' split, kept between add and settle.
        self._pending: _Pending | None = None
        # candidates()'s last answer and its arguments: asked once per window and signal.
        self._cands: tuple[int, int, int, list[tuple[int, str]]] | None = None

    def state(self) -> list[Any]:
        return [2, self.start, self.newest, self.decay, self.warm, self.lookback, self.ref,
                self.total.tobytes(), self.names, self.meta.tobytes(),
                {r: v.tobytes() for r, v in sorted((self.vecs or {}).items())}]

    @classmethod
    def from_state(cls, raw: Any) -> Trail | None:
        """A trail from :meth:`state`'s value (decoded msgpack); None for the first format's
        (it fills again); ValueError if malformed."""
        if isinstance(raw, list) and len(raw) == 5:
            return None
        try:
            st = msgspec.convert(raw, _State)
        except msgspec.ValidationError as e:
            raise ValueError(f"attribution trail: {e}") from None
        t = cls(st.start, st.decay, st.settle, st.lookback)
        t.newest, t.ref = st.newest, st.ref
        t.total.frombytes(st.total)
        t.meta.frombytes(st.meta)
        t.names = [sys.intern(n) for n in st.names]
        n = len(t.total) // 2
        if (st.format != 2 or not 0.0 < st.decay < 1.0 or len(st.total) % 8
                or len(st.meta) % (4 * _ROW) or len(t.meta) != _ROW * len(t.names)
                or any(r >= len(t.names) or len(v) != 8 * n for r, v in st.vecs.items())
                or any(not 0 <= t.meta[i] < len(VALUE_FIELDS)
                       for i in range(0, len(t.meta), _ROW))):
            raise ValueError("attribution trail: bad decay, counters or values")
        if st.vecs:
            t.vecs = {}
            for r, b in st.vecs.items():
                t.vecs[r] = v = array(_TYPE)
                v.frombytes(b)
        return t

    # -- reading ---------------------------------------------------------------------------
    def _g(self, w: int) -> float:
        """The scale of window ``w``'s numbers."""
        return self.decay ** (self.ref - w)

    def _row(self, f: int, v: str) -> int:
        names, meta = self.names, self.meta
        r = -1
        while True:
            try:
                r = names.index(v, r + 1)
            except ValueError:
                return -1
            if meta[r * _ROW] == f:
                return r

    def first(self, f: int, v: str) -> int:
        """The window value ``v`` of field ``f`` was first seen (-1: not known)."""
        r = self._row(f, v)
        return -1 if r < 0 else self.start + int(self.meta[r * _ROW + 1])

    def _vec(self, r: int | None, w: int, settled: bool = False) -> _View | None:
        """Row ``r``'s counters (None: the cohort's) at window ``w``, as :func:`_at` reads
        them."""
        src = self.total if r is None else (self.vecs or {}).get(r)
        if not src:
            return None
        n = len(src) // 2
        return src, n if settled else 0, n, self._g(w)

    # -- adding ----------------------------------------------------------------------------
    def _rescale(self, w: int) -> None:
        """Fold the scale into the stored numbers (ref becomes ``w``): they are multiplied by
        the decay since ref (after a long silence, to nothing)."""
        f = self.decay ** (w - self.ref)   # <= 1: underflows to 0.0, never overflows
        for a in (self.total, *(self.vecs or {}).values()):
            for i in range(len(a)):
                a[i] *= f
        m = self.meta
        for i in range(2, len(m), _ROW):
            m[i] *= f
        self.ref = w

    def add(self, w: int, values: dict[int, dict[str, dict[int, int]]], counts: list[int]
            ) -> None:
        """Add one window's counters (a partial's ``counts``) and each value's (its
        ``values``)."""
        self._cands = None
        if (w - self.ref) * -log(self.decay) > _LOG_RESCALE:   # (a day's gap included)
            self._rescale(w)
        g = self._g(w)
        tot = self.total
        n = len(counts)
        half = len(tot) // 2
        if half < n:   # the first window, or a layout grown since
            pad = array(_TYPE, bytes(4 * (n - half)))
            self.total = tot = tot[:half] + pad + tot[half:] + pad
        scaled_add(tot, 0, counts, g)
        split: list[tuple[int, dict[int, int]]] = []
        added = False
        slow = _known(self.names, self.meta, self.vecs, values, counts, g, _FIELDS, TOOL_FIELD,
                      UNKNOWN, EVENTS)
        if slow is None:   # (not a partial's shape: the Python twin says what is wrong)
            slow = _known_py(self.names, self.meta, self.vecs, values, counts, g, _FIELDS,
                             TOOL_FIELD, UNKNOWN, EVENTS)
        for f, v, c, ev, vals in slow:
            added |= self._count(f, v, c, ev, w, g, n, split, vals, counts)
        if added or self.vecs is not None:
            moved = self._prune(w, added)
            if moved is not None:
                split = [(moved[r], c) for r, c in split if r in moved]
        self._pending = (w, counts, split)

    def _count(self, f: int, v: str, c: dict[int, int] | None, events: int, w: int, g: float,
               n: int, split: list[tuple[int, dict[int, int]]],
               vals: dict[str, dict[int, int]] | None = None, counts: list[int] | None = None
               ) -> bool:
        """Count value ``v`` of field ``f``: its ``events``, and its counters ``c`` if it
        has counters of its own (None: the remainder of ``counts`` after the others of
        ``vals``). Whether it is new."""
        r = self._row(f, v)
        new = r < 0
        if new:
            r = len(self.names)
            self.names.append(sys.intern(v))
            self.meta.extend((f, w - self.start, 0.0))
            if self.start < w and w >= self.start + self.warm and v not in (UNKNOWN, OTHER):
                # A change: its own counters while it is a candidate.
                if self.vecs is None:
                    self.vecs = {}
                self.vecs[r] = array(_TYPE, bytes(8 * n))
            self.newest = max(self.newest, w)
        self.meta[r * _ROW + 2] += events * g
        vec = self.vecs.get(r) if self.vecs else None
        if vec is not None:
            if c is None:
                assert vals is not None and counts is not None
                c = split_values(vals, counts)[v] if len(vals) > 1 else {
                    i: x for i, x in enumerate(counts) if x}
            vn = len(vec) // 2
            for i, x in c.items():
                if i < vn:
                    vec[i] += x * g
            split.append((r, c))
        return new

    def _prune(self, w: int, added: bool) -> dict[int, int] | None:
        """Keep counters of candidates still within the look-back and, after a value was
        ``added``, TRAIL_VALUES values a field (those with most recent events); the rows
        that moved (old -> new), if any."""
        vecs = self.vecs
        meta = self.meta
        if vecs:
            for r in [r for r in vecs if self.start + meta[r * _ROW + 1] < w - self.lookback]:
                del vecs[r]
            if not vecs:
                self.vecs = None
        if not added or len(self.names) <= TRAIL_VALUES:
            return None
        per = [0] * len(VALUE_FIELDS)
        for i in range(0, len(meta), _ROW):
            per[int(meta[i])] += 1
        if max(per) <= TRAIL_VALUES:
            return None
        drop: set[int] = set()
        for f, k in enumerate(per):
            if k > TRAIL_VALUES:
                rows = sorted((r for r in range(len(self.names)) if meta[r * _ROW] == f),
                              key=lambda r: (meta[r * _ROW + 2], self.names[r]))
                drop.update(rows[:k - TRAIL_VALUES])
        keep = [r for r in range(len(self.names)) if r not in drop]
        moved = {r: i for i, r in enumerate(keep)}
        self.names = [self.names[r] for r in keep]
        self.meta = array(_TYPE, (meta[r * _ROW + j] for r in keep for j in range(_ROW)))
        if self.vecs:
            self.vecs = {moved[r]: v for r, v in self.vecs.items() if r in moved} or None
        return moved

    def settle(self, w: int, ordinary: bool = True) -> None:
        """The end of window ``w`` (the last added): if it had no anomaly in this cohort
        (``ordinary``) its counters also count as settled, what a value's events looked like
        before an anomaly."""
        self._cands = None   # (nothing kept between windows: the state budget)
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != w or not ordinary:
            return
        _, counts, split = pending
        g = self._g(w)
        tot = self.total
        n = len(tot) // 2
        scaled_add(tot, n, counts, g)
        for r, c in split:
            vec = (self.vecs or {}).get(r)
            if vec is not None:
                vn = len(vec) // 2
                for i, x in c.items():
                    if i < vn:
                        vec[vn + i] += x * g

    # -- attribution -----------------------------------------------------------------------
    def has_candidates(self, w: int) -> bool:
        """Whether any value is a change within the look-back (cheap)."""
        return self.vecs is not None and self.newest >= w - self.lookback

    def candidates(self, w: int, lookback: int, settle: int) -> list[tuple[int, str]]:
        """(field, value) pairs that are changes: first seen after the cohort's first
        ``settle`` windows (its initial mix is its baseline) and within ``lookback``."""
        if not self.vecs or self.newest < max(w - lookback, self.start + settle):
            return []
        got = self._cands
        if got is not None and got[:3] == (w, lookback, settle):
            return got[3]   # (the same list: callers only read it)
        lo = max(w - lookback, self.start + settle)
        meta = self.meta
        out = sorted((int(meta[r * _ROW]), self.names[r]) for r in self.vecs
                     if self.start + meta[r * _ROW + 1] >= lo)
        self._cands = (w, lookback, settle, out)
        return out

    def baseline_of(self, f: int, v: str, w: int, now: dict[str, dict[int, int]]) -> str | None:
        """The value of field ``f`` the candidate ``v`` replaced: of those seen before it,
        the one whose traffic fell the most (this window's events, ``now``, against its
        decayed total: about none for a value rolled over, a little less for one a canary
        takes a share of); on a tie, the one with most events."""
        first = self.first(f, v)
        meta, g = self.meta, self._g(w)
        best: tuple[float, float, str] | None = None
        for r, u in enumerate(self.names):
            if (meta[r * _ROW] != f or u == v or self.start + meta[r * _ROW + 1] >= first
                    or u in (UNKNOWN, OTHER)):
                continue
            seen = meta[r * _ROW + 2] / g
            if seen <= 0.0:
                continue
            cand = (-now.get(u, {}).get(EVENTS, 0) / seen, seen, u)
            if best is None or cand > best:
                best = cand
        return best[2] if best else None

    def contrast(self, f: int, v: str, w: int, sig: Sig, disp: float
                 ) -> tuple[float, float, float]:
        """(score, observed with, observed without) of the signal among the value's events
        against the rest of the cohort's: + where the value's events are higher."""
        r = self._row(f, v)
        vec = self._vec(r, w) if r >= 0 else None
        tot = self._vec(None, w)
        if vec is None or tot is None:
            return 0.0, 0.0, 0.0
        z, with_, without, _ = _test(sig, vec, tot, disp)
        return z, with_, without

    def before(self, f: int, v: str, w: int, sig: Sig, disp: float, with_: float
               ) -> tuple[float, float]:
        """The value's settled events (windows of its cohort without an anomaly) against the
        rest's: (score, the score those units would give had the value's events been as
        they are now, ``with_``). A value whose settled events were ordinary, and would have
        shown it, did not bring the anomaly (it came later)."""
        r = self._row(f, v)
        vec = self._vec(r, w, settled=True) if r >= 0 else None
        tot = self._vec(None, w, settled=True)
        if vec is None or tot is None:
            return 0.0, 0.0
        z, _, _, power = _test(sig, vec, tot, disp, with_)
        return z, power


def _known_py(names: list[str], meta: array[float], vecs: dict[int, array[float]] | None,
              values: dict[int, dict[str, dict[int, int]]], counts: list[int], g: float,
              n_fields: int, tool_field: int, unknown: str, events_at: int
              ) -> list[tuple[int, str, dict[int, int] | None, int,
                              dict[str, dict[int, int]] | None]]:
    """The common part of :meth:`Trail.add` (the reference for ``_tally.trail_known``): each
    value of ``values`` already in the trail (its first name in ``names``, with a ``meta``
    row of the same field) without counters of its own has its events times ``g`` added to
    that row's; the others are returned in order, (field, value, counters or None for the
    remainder, events, the field's values for the remainder), for :meth:`Trail._count`."""
    slow: list[tuple[int, str, dict[int, int] | None, int, dict[str, dict[int, int]] | None]]
    slow = []
    events = counts[events_at]
    for f, vals in values.items():
        if f >= n_fields:
            continue
        rest: str | None = None   # the value written {}: the counts the others are not
        rest_events = events
        for v, c in vals.items():
            if not c:
                rest = v
                continue
            ev = c.get(events_at, 0)
            rest_events -= ev
            if f == tool_field and v == unknown:
                continue
            # Most windows: a known value without counters of its own, its events only.
            if not _add_known(names, meta, vecs, f, v, ev * g):
                slow.append((f, v, c, ev, None))
        if rest is not None and (f != tool_field or rest != unknown) and not _add_known(
                names, meta, vecs, f, rest, rest_events * g):
            slow.append((f, rest, None, rest_events, vals))
    return slow


def _add_known(names: list[str], meta: array[float], vecs: dict[int, array[float]] | None,
               f: int, v: str, weighted: float) -> bool:
    """Add ``weighted`` events to value ``v``'s row if the trail knows it (its first name,
    of field ``f``) without counters of its own; False if it does not."""
    try:
        r = names.index(v)
    except ValueError:
        return False
    if meta[r * _ROW] != f or (vecs is not None and r in vecs):
        return False
    meta[r * _ROW + 2] += weighted
    return True


#: _known_py in C when it is built (tests/test_attribution.py holds the two equal): None
#: from C where an input is not of a partial's shape (then the Python twin runs).
_known: Any = _known_py if _tally is None else _tally.trail_known


def _at(v: _View, i: int) -> float:
    a, off, n, g = v
    return a[off + i] / g if 0 <= i < n else 0.0


def _test(sig: Sig, vec: _View, tot: _View, disp: float,
          as_with: float | None = None) -> tuple[float, float, float, float]:
    """(score, with, without, the score had "with" been ``as_with``) of the counters ``vec``
    against ``tot`` minus them."""
    kind, num, den, sq, log = sig
    if kind == "rate":
        k1, n1 = _at(vec, num), _at(vec, den)
        k0, n0 = _at(tot, num) - k1, _at(tot, den) - n1
        if n1 < MIN_UNITS or n0 < MIN_UNITS:
            return 0.0, k1 / n1 if n1 > 0 else 0.0, k0 / n0 if n0 > 0 else 0.0, 0.0
        r0 = (max(k0, 0.0) + 0.5) / (n0 + 1.0)
        # The reference rate is itself counted: its noise, n1²·r0/n0, widens the test.
        sd = sqrt(max(disp, 1.0) * (1.0 + n1 / (n0 + 1.0)))
        power = 0.0 if as_with is None else poisson_score(n1 * as_with, n1 * r0) / sd
        return poisson_score(k1, n1 * r0) / sd, k1 / n1, max(k0, 0.0) / n0, power
    if kind == "quantity":
        n1, s1, q1 = _at(vec, num), _at(vec, den), _at(vec, sq)
        n0, s0, q0 = _at(tot, num) - n1, _at(tot, den) - s1, _at(tot, sq) - q1
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
