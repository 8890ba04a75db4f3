"""Stage 1's per-event counting: an event's counters, evidence and window, into its open
partial. The windows themselves (which partial, when it closes) are :mod:`detector.core.aggregator`.

The counting is done in C by :mod:`detector.core._tally` when it was built (``setup.py``), and
otherwise by :meth:`Counting._add_py`, which is also the reference the C code is tested
against (``tests/test_tally.py``): the same partials to the last counter and trace id.
The C path calls back into Python only to make a partial and to count safety labels.

Spend: a model call's cost is its input tokens × the input price plus its output tokens × the
output price per million tokens (so in millionths of the price table's unit), counted like
tokens, for models with a price. Evaluation scores are counted for the configured evaluators
only (others are ignored), on any operation, as round(score × EVAL_SCALE).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from heapq import heappush, heapreplace
from math import floor, log1p
from operator import attrgetter
from typing import Any, Final

from msgspec import UNSET

from detector.core.events import EVAL_MAX, MODEL_OPERATIONS, TraceEvent
from detector.core.partials import SCALE, TOP_K, VERSION_FIELDS, Partial, bottom
from detector.core.signals import (
    ERRORS,
    EVAL_SCALE,
    EVENTS,
    FABRICATED,
    FMT_FAIL,
    FMT_N,
    IN_N,
    IN_Q,
    IN_S,
    INSTR,
    LAT_N,
    LAT_Q,
    LAT_S,
    MEMWRITE,
    MODEL,
    OUT_N,
    OUT_Q,
    OUT_S,
    OVERRIDE,
    REFUSAL,
    RETRIES,
    SCHEMA_INV,
    TOOL,
    Layout,
)
from detector.core.watermark import Watermark

__all__ = ["MAX_RETRIES", "Counting"]

_FMAX: Final = sys.float_info.max
#: An event's retries count at most this much: the contract sets no ceiling, and one huge value
#: must not overflow the float arithmetic of stage 2's rates.
MAX_RETRIES: Final = 1 << 20
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1

# The C accelerator, unless it was not built (no compiler) or DETECTOR_NO_EXTENSIONS is set.
# It is handed the fields and counters it works on, in the order detector/core/_tally.c names them.
_tally: Any = None
if not os.environ.get("DETECTOR_NO_EXTENSIONS"):
    with contextlib.suppress(ImportError):
        from detector.core import _tally
if _tally is not None:
    _tally.configure(
        TraceEvent, Partial, UNSET,
        ("ts", "trace_id", "operation", "refusal", "instruction_violation",
         "output_format_valid", "input_tokens", "output_tokens", "latency_ms", "schema_valid",
         "tool_result_fabricated", "retries", "error_type", "finish_reason", "tool_status",
         "safety_hits", "model", "eval_scores"),
        (EVENTS, MODEL, TOOL, REFUSAL, INSTR, FMT_N, FMT_FAIL, SCHEMA_INV, FABRICATED,
         OVERRIDE, MEMWRITE, RETRIES, ERRORS, IN_N, IN_S, IN_Q, OUT_N, OUT_S, OUT_Q, LAT_N,
         LAT_S, LAT_Q),
        {**dict.fromkeys(MODEL_OPERATIONS, 1), "execute_tool": 2, "memory_write": 3,
         "human_override": 4},
        TOP_K, MAX_RETRIES, EVAL_MAX, EVAL_SCALE)


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
                _tally.offsets((*self.finest, *VERSION_FIELDS)), self.k, lay.prices,
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
        """The counting in Python: the reference for detector/core/_tally.c, and the fallback.

        The hot path: plain counter updates, evidence kept only when it would change, and the
        aggregator's own fields read once per batch rather than once per event."""
        size = self.size
        closed_before = self.wm.closed_before
        max_ts = self.wm.max_ts
        open_ = self._open
        keyf = self._key
        sample, top_ = self._sample, self._top
        lay = self.layout
        prices, default_price, cost = lay.prices, lay.default_price, lay.cost_at
        priced = bool(prices) or default_price is not None
        evals = tuple(zip(lay.evaluators, range(lay.eval_at, lay.size, 3), strict=True))
        late = 0
        for ev in evs:
            ts: float = ev.ts  # type: ignore[assignment]  # decode() made it epoch seconds
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
            c[EVENTS] += 1
            tid = ev.trace_id
            op = ev.operation
            if op in MODEL_OPERATIONS:
                c[MODEL] += 1
                if ev.refusal is True:
                    c[REFUSAL] += 1
                    if tid:   # UNSET is falsy
                        sample(p, REFUSAL, tid)
                if ev.instruction_violation is True:
                    c[INSTR] += 1
                    if tid:
                        sample(p, INSTR, tid)
                fv = ev.output_format_valid
                if fv is not UNSET:
                    c[FMT_N] += 1
                    if fv is False:
                        c[FMT_FAIL] += 1
                        if tid:
                            sample(p, FMT_FAIL, tid)
                # Quantities as fixed-point log1p (see partials.SCALE). The three repeat one
                # pattern, inlined on purpose: this runs for every model call. The contract
                # puts no ceiling on integers: one past the float range is counted at it.
                v = ev.input_tokens
                if v is not UNSET:
                    x = int(log1p(v if v < _FMAX else _FMAX) * SCALE + 0.5)
                    c[IN_N] += 1
                    c[IN_S] += x
                    c[IN_Q] += x * x
                v = ev.output_tokens
                if v is not UNSET:
                    x = int(log1p(v if v < _FMAX else _FMAX) * SCALE + 0.5)
                    c[OUT_N] += 1
                    c[OUT_S] += x
                    c[OUT_Q] += x * x
                    if tid:   # the largest outputs as evidence; most values fall short
                        h = p.top.get(OUT_N)
                        if h is None or len(h) < TOP_K or x >= h[0][0]:
                            top_(p, OUT_N, x, tid)
                v = ev.latency_ms
                if v is not UNSET:
                    x = int(log1p(v) * SCALE + 0.5)
                    c[LAT_N] += 1
                    c[LAT_S] += x
                    c[LAT_Q] += x * x
                    if tid:
                        h = p.top.get(LAT_N)
                        if h is None or len(h) < TOP_K or x >= h[0][0]:
                            top_(p, LAT_N, x, tid)
                if priced:
                    self._cost(p, ev, prices, default_price, cost, tid)
            elif op == "execute_tool":
                c[TOOL] += 1
                if ev.schema_valid is False:
                    c[SCHEMA_INV] += 1
                    if tid:
                        sample(p, SCHEMA_INV, tid)
                if ev.tool_result_fabricated is True:
                    c[FABRICATED] += 1
                    if tid:
                        sample(p, FABRICATED, tid)
            elif op == "memory_write":
                c[MEMWRITE] += 1
                if tid:
                    sample(p, MEMWRITE, tid)
            elif op == "human_override":
                c[OVERRIDE] += 1
                if tid:
                    sample(p, OVERRIDE, tid)
            r = ev.retries
            if r:   # UNSET is falsy
                c[RETRIES] += r if r < MAX_RETRIES else MAX_RETRIES
                if tid:
                    sample(p, RETRIES, tid)
            if (ev.error_type is not UNSET or ev.finish_reason == "error"
                    or ev.tool_status == "error"):
                c[ERRORS] += 1
                if tid:
                    sample(p, ERRORS, tid)
            hits = ev.safety_hits
            if hits:
                self._safety(p, hits, tid)
            scores = ev.eval_scores
            if scores and evals:
                self._evals(p, scores, evals, tid)
            # Evidence for volume and "less of something" alerts: a bottom-k over the 1 in 16
            # trace ids that start with "0" (ids are random, so it is a uniform, order-free
            # sample).
            if tid and tid[0] == "0":  # type: ignore[index]
                sample(p, EVENTS, tid)
        self.wm.max_ts = max_ts
        self.late += late

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
        price = default if m is UNSET else prices.get(m, default)  # type: ignore[arg-type]
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
