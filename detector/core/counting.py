"""Stage 1's per-event counting: an event's counters, evidence and window, into its open
partial. The windows themselves (which partial, when it closes) are :mod:`detector.core.aggregator`.

What is counted is declared once, as :data:`detector.core.signals.COUNTERS`. The counting is
done in C by :mod:`detector.core._tally` when it was built (``setup.py``), which is handed
that declaration as a table of rules (:func:`c_table`), and otherwise by
:meth:`Counting._add_py`, compiled from the declaration (:func:`python_source`), which is
also the reference the C code is tested against (``tests/test_tally.py``): the same partials
to the last counter and trace id. The C path calls back into Python only to make a partial
and to count safety labels.

Spend: a model call's cost is its input tokens × the input price plus its output tokens × the
output price per million tokens (so in millionths of the price table's unit), counted like
tokens, for models with a price. Evaluation scores are counted for the configured evaluators
only (others are ignored), on any operation, as round(score × EVAL_SCALE).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from array import array
from collections.abc import Callable, Iterable, MutableSequence
from heapq import heappush, heapreplace
from math import floor, log1p
from operator import attrgetter
from typing import Any, Final

import msgspec
from msgspec import UNSET

from detector.core.events import EVAL_MAX, TraceEvent
from detector.core.partials import (
    COMBO_FIELDS,
    MAX_VALUES,
    OTHER,
    SCALE,
    TOOL_FIELD,
    TOP_K,
    Partial,
    bottom,
)
from detector.core.signals import (
    COUNTERS,
    EVAL_SCALE,
    FIXED_AT,
    GROUP_RULES,
    MAX_RETRIES,
    SET,
    TOOL_COUNTERS,
    Counter,
    Layout,
    check,
)
from detector.core.watermark import Watermark

__all__ = ["MAX_RETRIES", "Counting", "c_table", "python_source", "scaled_add"]

_FMAX: Final = sys.float_info.max
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
#: Tool names counted apart per open partial: with "other" and "unknown", MAX_VALUES.
TOOL_NAMES: Final = MAX_VALUES - 2
#: The fields a cost is computed from (a model call's tokens at its model's price).
COST_FIELDS: Final = ("input_tokens", "output_tokens", "model")


def _gates(counters: tuple[Counter, ...]) -> dict[tuple[str, ...], int]:
    """Each distinct set of operations counters count on -> its code (0: any operation)."""
    return {on: i for i, on in enumerate(dict.fromkeys(
        [(), *(c.on for c in counters)]))}


def _ints_only(field: str) -> bool:
    """Whether decode() makes this field an int only (a float is then the Python path's)."""
    f = next(f for f in msgspec.inspect.type_info(TraceEvent).fields  # type: ignore[attr-defined]
             if f.name == field)
    types = getattr(f.type, "types", (f.type,))
    return not any(isinstance(t, msgspec.inspect.FloatType) for t in types)


# The codes _tally.c reads the table with (its R_*, T_* and E_* enums).
_RULES: Final = ("count", "sum", "log1p", "labels", "cost", "scores")
_EVIDENCE: Final = ("", "ids", "sampled", "top", "lowest")


def c_table(counters: tuple[Counter, ...] = COUNTERS) -> tuple[tuple[object, ...], ...]:
    """The counters as the C code's rules: (rule, gate, first counter (-1 for a group, whose
    place is the layout's), fields read, when as (field, test, value), evidence, cap,
    ints only), the codes those of :data:`_RULES`, ``_tally.c``'s T_IS/T_SET/T_EQ for tests
    and :data:`_EVIDENCE`.

    >>> c_table()[3]   # refusals: model calls whose ``refusal`` is True, their ids as evidence
    (0, 1, 3, (), (('refusal', 0, True),), 1, 0, True)
    """
    gates = _gates(check(counters))
    out = []
    for c in counters:
        fields = COST_FIELDS if c.rule == "cost" else (c.field,) if c.field else ()
        when = tuple((f, 1 if t is SET else 0 if isinstance(t, bool) else 2, t)
                     for f, t in c.when)
        out.append((_RULES.index(c.rule), gates[c.on],
                    -1 if c.rule in GROUP_RULES else FIXED_AT[c.name], fields, when,
                    _EVIDENCE.index(c.evidence), c.cap,
                    all(map(_ints_only, fields[:2])) if c.rule in ("log1p", "cost") else True))
    return tuple(out)


def _lines(c: Counter, i: int) -> list[str]:
    """The Python counting of one counter (``i``: its first counter), as source lines.

    >>> print("\\n".join(_lines(Counter("refusals", when=(("refusal", True),),
    ...                                   evidence="ids"), 3)))
    if ev.refusal is True:
        c[3] += 1
        if tid:
            sample(p, 3, tid)
    """
    ev = {"ids": ["if tid:", f"    sample(p, {i}, tid)"],
          "sampled": ["if tid and tid[0] == \"0\":", f"    sample(p, {i}, tid)"],
          "top": ["if tid:", f"    h = p.top.get({i})",
                  "    if h is None or len(h) < TOP_K or x >= h[0][0]:",
                  f"        top_(p, {i}, x, tid)"],
          "": []}
    if c.rule == "count":
        tests = [f"ev.{f} is not UNSET" if t is SET else f"ev.{f} is {t}"
                 if isinstance(t, bool) else f"ev.{f} == {t!r}" for f, t in c.when]
        body = [f"c[{i}] += 1", *ev[c.evidence]]
        return [f"if {' or '.join(tests)}:", *("    " + x for x in body)] if tests else body
    if c.rule == "sum":
        return [f"v = ev.{c.field}", "if v:   # UNSET is falsy",
                f"    c[{i}] += v if v < {c.cap} else {c.cap}",
                *("    " + x for x in ev[c.evidence])]
    if c.rule == "log1p":   # fixed-point log1p (see partials.SCALE); past the float range: at it
        return [f"v = ev.{c.field}", "if v is not UNSET:",
                "    x = int(log1p(v if v < _FMAX else _FMAX) * SCALE + 0.5)",
                f"    c[{i}] += 1", f"    c[{i + 1}] += x", f"    c[{i + 2}] += x * x",
                *("    " + x for x in ev[c.evidence])]
    return {"labels": [f"hits = ev.{c.field}", "if hits:",
                       "    self._safety(p, hits, tid)"],
            "cost": ["if priced:", "    self._cost(p, ev, prices, default_price, cost, tid)"],
            "scores": [f"scores = ev.{c.field}", "if scores and evals:",
                       "    self._evals(p, scores, evals, tid)"]}[c.rule]


_PY_COUNTING: Final = """\
def count(self, evs):
    size = self.size
    wm = self.wm
    closed_before = wm.closed_before
    max_ts = wm.max_ts
    open_ = self._open
    keyf = self._key
    sample, top_ = self._sample, self._top
    lay = self.layout
    prices, default_price, cost = lay.prices, lay.default_price, lay.cost_at
    priced = bool(prices) or default_price is not None
    evals = tuple(zip(lay.evaluators, range(lay.eval_at, lay.size, 3), strict=True))
    late = 0
    for ev in evs:
        ts = ev.ts
        w = int(ts // size)
        if w < closed_before:
            late += 1
            continue
        if ts > max_ts:
            max_ts = ts
        key = (w, keyf(ev))
        p = open_.get(key)
        if p is None:
            p = self._partial_for(key)
        c = p.counts
        tid = ev.trace_id
        op = ev.operation
        tool = ev.tool_name
        if tool is not UNSET:
            before = [c[i] for i in TOOL_COUNTERS]
%s
        if tool is not UNSET:
            self._tool(p, tool, before)
    wm.max_ts = max_ts
    self.late += late
"""


def python_source(counters: tuple[Counter, ...] = COUNTERS) -> str:
    """The Python counting of these counters, as source: per event the counters of any
    operation, then those of its operation's gate, each as plain statements (the loop runs
    for every event; a rule-by-rule interpreter would cost several times as much).

    """
    at, gates = FIXED_AT, _gates(check(counters))
    body = [x for c in counters if not c.on for x in _lines(c, at[c.name])]
    for on, g in gates.items():
        if g:
            body.append(f"{'if' if g == 1 else 'elif'} op in _G{g}:")
            body += ["    " + x for c in counters if c.on == on for x in _lines(c, at[c.name])]
    return _PY_COUNTING % "\n".join(" " * 8 + x for x in body)


def _compile(counters: tuple[Counter, ...]) -> Callable[[Any, Iterable[TraceEvent]], None]:
    ns: dict[str, Any] = {"UNSET": UNSET, "SCALE": SCALE, "TOP_K": TOP_K, "_FMAX": _FMAX,
                          "log1p": log1p, "TOOL_COUNTERS": TOOL_COUNTERS,
                          **{f"_G{g}": frozenset(on) for on, g in _gates(counters).items()}}
    exec(compile(python_source(counters), "<counting: python_source()>", "exec"), ns)
    count: Callable[[Any, Iterable[TraceEvent]], None] = ns["count"]
    return count


_count_py: Final = _compile(COUNTERS)


#: A new tool name's counters (TOOL_COUNTERS), int64: C adds to them in place. A copy of a
#: zeroed array that nothing else holds: a C method, so C makes one without a Python frame.
_fresh_tool: Callable[[], array[int]] = array("q", bytes(8 * len(TOOL_COUNTERS))).__copy__

# The C accelerator, unless it was not built (no compiler) or DETECTOR_NO_EXTENSIONS is set.
# It is handed the structural fields and the counters' rules (c_table) it counts by.
_tally: Any = None
if not os.environ.get("DETECTOR_NO_EXTENSIONS"):
    with contextlib.suppress(ImportError):
        _tally = importlib.import_module("detector.core._tally")
if _tally is not None:
    _tally.configure(
        TraceEvent, Partial, UNSET, ("ts", "trace_id", "operation"), c_table(),
        {op: g for on, g in _gates(COUNTERS).items() for op in on},
        TOP_K, EVAL_MAX, EVAL_SCALE)
    _tally.configure_values(TOOL_FIELD, TOOL_COUNTERS, TOOL_NAMES, OTHER, _fresh_tool)


def _scaled_add_py(buf: MutableSequence[float], offset: int, counts: list[int], g: float
                   ) -> None:
    for i, x in enumerate(counts):
        if x:
            buf[offset + i] += x * g


#: ``buf[offset + i] += counts[i] * g`` for the non-zero counts, ``buf`` an array('f'): the
#: attribution trail's decayed sums, in C when it is built (the same numbers either way).
scaled_add: Callable[[MutableSequence[float], int, list[int], float], None] = (
    _scaled_add_py if _tally is None else _tally.scaled_add)


class Counting:
    """Counting for :class:`detector.core.aggregator.Aggregator`, which owns the state used here."""

    size: float
    wm: Watermark
    late: int
    k: int
    finest: list[str]
    layout: Layout
    leak_labels: frozenset[str]
    _open: dict[tuple[int, tuple[object, ...]], Partial]
    _key: attrgetter[Any]
    _ctx: tuple[object, ...]
    _partial_for: Callable[[tuple[int, tuple[object, ...]]], Partial]

    def _c_context(self) -> tuple[object, ...]:
        """What the C counting needs, gathered once (see ``add_many`` in _tally.c)."""
        if _tally is None:
            return ()
        lay = self.layout
        return (self._open, self._partial_for, self._safety, float(self.size),
                _tally.offsets((*self.finest, *COMBO_FIELDS)), self.k, lay.prices,
                lay.default_price, lay.cost_at,
                tuple(zip(lay.evaluators, range(lay.eval_at, lay.size, 3), strict=True)))

    def add(self, ev: TraceEvent) -> None:
        """Count one event into its window (see :meth:`add_many`)."""
        self.add_many([ev])

    def add_many(self, evs: Iterable[TraceEvent]) -> None:
        """Count events into their windows; an event for a closed window is counted as late.

        With the C accelerator (:mod:`detector.core._tally`) the common work is done there; an
        event of a shape it does not expect is counted here, in order, then C goes on."""
        wm = self.wm
        if _tally is None or not _I64_MIN <= wm.closed_before <= _I64_MAX:
            self._add_py(evs)   # past int64: only after a timestamp near the float maximum
            return
        evs = evs if isinstance(evs, list) else list(evs)
        i, n = 0, len(evs)
        while i < n:
            i, wm.max_ts, late = _tally.add_many(evs, i, self._ctx, wm.closed_before,
                                                 wm.max_ts)
            self.late += late
            if i < n:
                self._add_py(evs[i:i + 1])
                i += 1

    def _add_py(self, evs: Iterable[TraceEvent]) -> None:
        """The counting in Python (:func:`python_source`, made from the declared counters):
        the reference for detector/core/_tally.c, and the fallback."""
        _count_py(self, evs)

    def _tool(self, p: Partial, name: str, before: list[int]) -> None:
        """Add an event's increments of the TOOL_COUNTERS (``before``: them before it was
        counted) to its tool name's, in ``p.values[TOOL_FIELD]``: while the partial is open an
        array('q') per name (the hand-out writes them out, :func:`partials.tool_values`), at most
        TOOL_NAMES names, then "other"."""
        by: Any = p.values.setdefault(TOOL_FIELD, {})
        lst = by.get(name)
        if lst is None:
            if len(by) >= TOOL_NAMES:
                name = OTHER
                lst = by.get(name)
            if lst is None:
                lst = by[name] = _fresh_tool()
        c = p.counts
        for j, i in enumerate(TOOL_COUNTERS):
            lst[j] += c[i] - before[j]

    # -- evidence: rare per event (the C path keeps ids and values itself, but for safety) --
    def _sample(self, p: Partial, counter: int, tid: str) -> None:
        bottom(p.samples.setdefault(counter, []), tid, self.k)

    def _top(self, p: Partial, counter: int, x: int, tid: str) -> None:
        """Keep (x, tid) among the TOP_K largest of this quantity (a min-heap)."""
        top = p.top
        h = top.get(counter)
        if h is None:
            top[counter] = [(x, tid)]
        elif len(h) < TOP_K:
            heappush(h, (x, tid))
        elif x >= h[0][0] and (x, tid) > h[0]:   # ties by id: order-free
            heapreplace(h, (x, tid))

    def _cost(self, p: Partial, ev: TraceEvent, prices: dict[str, tuple[float, float]],
               default: tuple[float, float] | None, i: int, tid: str | None) -> None:
        a, b = ev.input_tokens, ev.output_tokens
        if a is UNSET and b is UNSET:
            return
        m = ev.model
        price = default if m is UNSET else prices.get(m, default)
        if price is None or price == (0.0, 0.0):
            return   # not priced: unknown, not free
        # Products apart, as C computes them (no fused multiply-add).
        pa = (a if a < _FMAX else _FMAX) * price[0] if a is not UNSET else 0.0
        pb = (b if b < _FMAX else _FMAX) * price[1] if b is not UNSET else 0.0
        v = pa + pb
        x = int(log1p(v if v < _FMAX else _FMAX) * SCALE + 0.5)
        c = p.counts
        c[i] += 1
        c[i + 1] += x
        c[i + 2] += x * x
        if tid:   # the costliest calls as evidence
            h = p.top.get(i)
            if h is None or len(h) < TOP_K or x >= h[0][0]:
                self._top(p, i, x, tid)

    def _evals(self, p: Partial, scores: dict[str, float], evals: tuple[tuple[str, int], ...],
               tid: str | None) -> None:
        c = p.counts
        for name, i in evals:
            v = scores.get(name)
            if v is None or v != v:   # not scored by this evaluator (or NaN, built by hand)
                continue
            v = EVAL_MAX if v > EVAL_MAX else -EVAL_MAX if v < -EVAL_MAX else v
            x = floor(v * EVAL_SCALE + 0.5)
            c[i] += 1
            c[i + 1] += x
            c[i + 2] += x * x
            if tid:   # the lowest scores as evidence: kept as the largest of -x
                self._top(p, i, -x, tid)

    def _safety(self, p: Partial, hits: list[str], tid: str | None) -> None:
        c = p.counts
        idx = self.layout.safety_index
        other = idx["other"]
        for label in set(hits):
            if label in self.leak_labels:
                continue   # a hard rule of its own; not also "other"
            i = idx.get(label, other)
            c[i] += 1
            if tid:
                self._sample(p, i, tid)
