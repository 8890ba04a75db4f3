"""Stage 1: events into per-cohort window partials, closed on an event-time watermark.

Per event the work is a handful of counter increments on the event's finest cohort; the
roll-up to coarser cohorts happens once per (cohort, window) when a window closes. Partials
and their merge are in :mod:`detector.partials`.

>>> from detector.config import load_config
>>> from detector.events import decode
>>> from detector.signals import REFUSAL
>>> agg = Aggregator(load_config(None))
>>> for t in (0, 10, 20):
...     agg.add(decode(b'{"ts": %d, "operation": "chat", "app": "a", "refusal": true}' % t)[0][0])
>>> [p.counts[REFUSAL] for p in agg.drain(watermark=120)]
[3, 3]
>>> agg.add(decode(b'{"ts": 5, "operation": "chat", "app": "a"}')[0][0])  # window closed: late
>>> agg.late
1
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from heapq import heappush, heapreplace
from math import log1p
from operator import attrgetter
from typing import Final

from msgspec import UNSET

from detector.config import Config
from detector.events import MODEL_OPERATIONS, TraceEvent
from detector.partials import (
    MAX_VERSION_COMBOS,
    OTHER,
    SCALE,
    TOP_K,
    UNKNOWN,
    VERSION_FIELDS,
    Partial,
    bottom,
    empty_partial,
    merge_into,
    route_key,
    version_name,
)
from detector.signals import (
    ERRORS,
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

__all__ = ["Aggregator"]

_OTHER_COMBO: Final = (UNKNOWN, UNKNOWN, UNKNOWN)   # joins to OTHER_VERSIONS
_FMAX: Final = sys.float_info.max
#: An event's retries count at most this much: the contract sets no ceiling, and one huge value
#: must not overflow the float arithmetic of stage 2's rates.
MAX_RETRIES: Final = 1 << 20


class Aggregator:
    """Stage 1 for one source: accumulates events into finest-cohort partials and hands out
    partials at every level once the watermark closes their window."""

    def __init__(self, config: Config) -> None:
        self.size = config.windows.size_seconds
        self.lateness = config.windows.allowed_lateness_seconds
        self.k = config.alerting.evidence_trace_ids
        self.levels = config.cohorts.levels
        self.finest = self.levels[-1]
        self.layout = Layout(tuple(config.input.safety_labels))
        # An open partial per (window, finest cohort, version combination): the combination
        # is counted by the partial's own event counter, so no per-event work of its own.
        # The combinations of one cohort are merged into one partial when handed out.
        self._key = attrgetter(*self.finest, *VERSION_FIELDS)
        self._nf = len(self.finest)
        self._open: dict[tuple[int, tuple[object, ...]], Partial] = {}
        self._combos: dict[tuple[int, tuple[object, ...]], int] = {}   # open partials per cohort
        self.max_ts = float("-inf")
        self.closed_before = -(1 << 62)   # windows below this index are closed
        self.late = 0
        # Bounded memory whatever producers send: past max_cohorts distinct finest cohorts,
        # new ones are counted under an all-"other" cohort (and in self.folded).
        self.max_cohorts = config.cohorts.max_cohorts
        self._known: set[tuple[object, ...]] = set()
        self._overflow: tuple[object, ...] = tuple(OTHER for _ in self.finest)
        self.folded = 0
        # Projections from the finest cohort tuple to each level's tuple.
        self._proj = [tuple(self.finest.index(f) for f in lvl) for lvl in self.levels]
        self.leak_labels = frozenset(config.rules.leak_labels)

    @property
    def watermark(self) -> float:
        return self.max_ts - self.lateness

    def _new(self, w: int, key: tuple[object, ...]) -> Partial:
        cohort: tuple[str, ...] = tuple(UNKNOWN if v is UNSET else v for v in key)  # type: ignore[misc]
        route = route_key(tuple(cohort[i] for i in self._proj[0]))
        return empty_partial(w, len(self.levels) - 1, cohort, self.layout.size, route)

    def add(self, ev: TraceEvent) -> None:
        """Count one event into its window (see :meth:`add_many`)."""
        self.add_many((ev,))

    def add_many(self, evs: Iterable[TraceEvent]) -> None:
        """Count events into their windows; an event for a closed window is counted as late.

        The hot path: plain counter updates, evidence kept only when it would change, and the
        aggregator's own fields read once per batch rather than once per event."""
        size = self.size
        closed_before = self.closed_before
        max_ts = self.max_ts
        open_ = self._open
        keyf = self._key
        k = self.k
        idx = self.layout.safety_index
        other = idx["other"]
        leaks = self.leak_labels
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
                        bottom(p.samples.setdefault(REFUSAL, []), tid, k)
                if ev.instruction_violation is True:
                    c[INSTR] += 1
                    if tid:
                        bottom(p.samples.setdefault(INSTR, []), tid, k)
                fv = ev.output_format_valid
                if fv is not UNSET:
                    c[FMT_N] += 1
                    if fv is False:
                        c[FMT_FAIL] += 1
                        if tid:
                            bottom(p.samples.setdefault(FMT_FAIL, []), tid, k)
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
                    if tid:
                        top = p.top
                        h = top.get(OUT_N)
                        if h is None:
                            top[OUT_N] = [(x, tid)]  # type: ignore[list-item]
                        elif len(h) < TOP_K:
                            heappush(h, (x, tid))  # type: ignore[arg-type]
                        elif x >= h[0][0] and (x, tid) > h[0]:   # ties by id: order-free
                            heapreplace(h, (x, tid))  # type: ignore[arg-type]
                v = ev.latency_ms
                if v is not UNSET:
                    x = int(log1p(v) * SCALE + 0.5)
                    c[LAT_N] += 1
                    c[LAT_S] += x
                    c[LAT_Q] += x * x
                    if tid:
                        top = p.top
                        h = top.get(LAT_N)
                        if h is None:
                            top[LAT_N] = [(x, tid)]  # type: ignore[list-item]
                        elif len(h) < TOP_K:
                            heappush(h, (x, tid))  # type: ignore[arg-type]
                        elif x >= h[0][0] and (x, tid) > h[0]:   # ties by id: order-free
                            heapreplace(h, (x, tid))  # type: ignore[arg-type]
            elif op == "execute_tool":
                c[TOOL] += 1
                if ev.schema_valid is False:
                    c[SCHEMA_INV] += 1
                    if tid:
                        bottom(p.samples.setdefault(SCHEMA_INV, []), tid, k)
                if ev.tool_result_fabricated is True:
                    c[FABRICATED] += 1
                    if tid:
                        bottom(p.samples.setdefault(FABRICATED, []), tid, k)
            elif op == "memory_write":
                c[MEMWRITE] += 1
                if tid:
                    bottom(p.samples.setdefault(MEMWRITE, []), tid, k)
            elif op == "human_override":
                c[OVERRIDE] += 1
                if tid:
                    bottom(p.samples.setdefault(OVERRIDE, []), tid, k)
            r = ev.retries
            if r:   # UNSET is falsy
                c[RETRIES] += r if r < MAX_RETRIES else MAX_RETRIES
                if tid:
                    bottom(p.samples.setdefault(RETRIES, []), tid, k)
            if (ev.error_type is not UNSET or ev.finish_reason == "error"
                    or ev.tool_status == "error"):
                c[ERRORS] += 1
                if tid:
                    bottom(p.samples.setdefault(ERRORS, []), tid, k)
            hits = ev.safety_hits
            if hits:
                for label in set(hits):
                    if label in leaks:
                        continue   # a hard rule of its own; not also "other"
                    i = idx.get(label, other)
                    c[i] += 1
                    if tid:
                        bottom(p.samples.setdefault(i, []), tid, k)
            # Evidence for volume and "less of something" alerts: a bottom-k over the 1 in 16
            # trace ids that start with "0" (ids are random, so it is a uniform, order-free
            # sample) — cheap enough for every event.
            if tid and tid[0] == "0":  # type: ignore[index]
                s = p.samples
                lst = s.get(EVENTS)
                if lst is None:
                    s[EVENTS] = [tid]  # type: ignore[list-item]
                elif len(lst) < k or tid < lst[-1]:  # type: ignore[operator]
                    bottom(lst, tid, k)  # type: ignore[arg-type]
        self.max_ts = max_ts
        self.late += late

    def _partial_for(self, key: tuple[int, tuple[object, ...]]) -> Partial:
        """The partial that counts an event with ``key`` when no open partial has that key:
        a new one, or, past the cohort budget, the window's all-"other" cohort (bounded
        memory whatever producers send), or past MAX_VERSION_COMBOS combinations in one
        cohort and window, its "other versions" partial."""
        w, full = key
        cohort, combo = full[:self._nf], full[self._nf:]
        if cohort not in self._known:
            if len(self._known) < self.max_cohorts:
                self._known.add(cohort)
            else:
                self.folded += 1
                cohort = self._overflow
        n = self._combos.get((w, cohort), 0)
        if n >= MAX_VERSION_COMBOS - 1:
            combo = _OTHER_COMBO
        key = (w, cohort + combo)
        p = self._open.get(key)
        if p is None:
            p = self._open[key] = self._new(w, cohort)
            self._combos[(w, cohort)] = n + 1
        return p

    def drain(self, watermark: float | None = None) -> list[Partial]:
        """Close every window that ends at or before the watermark; return its partials at
        every cohort level, finest last, in a deterministic order."""
        wm = self.watermark if watermark is None else watermark
        upto = int(wm // self.size)  # windows < upto end at or before wm
        if upto <= self.closed_before:
            return []
        self.closed_before = upto
        return self._hand_out(sorted((key for key in self._open if key[0] < upto), key=_order))

    def flush_open(self) -> list[Partial]:
        """Hand out the partials of every open window *without* closing it (the window takes
        more events; stage 2 merges the increments). A streaming stage 1 does this before
        each commit, so it never holds counts a dying worker would lose."""
        return self._hand_out(sorted(self._open, key=_order))

    def _hand_out(self, keys: list[tuple[int, tuple[object, ...]]]) -> list[Partial]:
        """Pop the partials with these keys, one per (window, cohort): the partials of its
        version combinations merged, each combination's events as its version count."""
        nf, k = self._nf, self.k
        finest: dict[tuple[int, tuple[object, ...]], Partial] = {}
        for key in keys:
            p = self._open.pop(key)
            w, full = key
            cohort = full[:nf]
            n = self._combos[(w, cohort)] - 1
            if n:
                self._combos[(w, cohort)] = n
            else:
                del self._combos[(w, cohort)]
            for h in p.top.values():
                h.sort()   # heap order depends on arrival; the sorted top-k does not
            p.versions = {version_name(full[nf:]): p.counts[EVENTS]}
            q = finest.get((w, cohort))
            if q is None:
                finest[(w, cohort)] = p
            else:
                merge_into(q, p, k)
        return self._roll_up(sorted(finest.values(), key=_pkey))

    def drain_all(self) -> list[Partial]:
        """End of input: close every open window."""
        if not self._open:
            return []
        return self.drain(watermark=(max(w for w, _ in self._open) + 1) * self.size)

    def _roll_up(self, finest: Iterable[Partial]) -> list[Partial]:
        out: list[Partial] = []
        coarse: dict[tuple[int, int, tuple[str, ...]], Partial] = {}
        fin = len(self.levels) - 1
        for p in finest:
            for lvl in range(fin):
                key = (p.window, lvl, tuple(p.cohort[i] for i in self._proj[lvl]))
                q = coarse.get(key)
                if q is None:
                    coarse[key] = q = empty_partial(p.window, lvl, key[2], len(p.counts), p.route)
                merge_into(q, p, self.k)
            out.append(p)
        return sorted(coarse.values(), key=_pkey) + out


def _order(key: tuple[int, tuple[object, ...]]) -> tuple[int, tuple[str, ...]]:
    return key[0], tuple(UNKNOWN if v is UNSET else v for v in key[1])  # type: ignore[misc]


def _pkey(p: Partial) -> tuple[int, int, tuple[str, ...]]:
    return p.window, p.level, p.cohort
