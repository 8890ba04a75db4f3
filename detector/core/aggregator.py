"""Stage 1: events into per-cohort window partials, closed on an event-time watermark.

Per event the work is a handful of counter increments on the event's finest cohort
(:mod:`detector.core.counting`); the roll-up to coarser cohorts happens once per (cohort, window)
when a window closes. Partials and their merge are in :mod:`detector.core.partials`.

>>> from detector.config import load_config
>>> from detector.core.events import decode
>>> from detector.core.signals import REFUSAL
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

from collections.abc import Callable, Iterable, Sequence
from operator import add, attrgetter
from typing import Any, Final

from msgspec import UNSET

from detector.config import Config
from detector.core.counting import Counting, _tally
from detector.core.partials import (
    COMBO_FIELDS,
    MAX_OPEN_COMBOS,
    MAX_VALUES,
    OTHER,
    TOOL_FIELD,
    TOP_K,
    UNKNOWN,
    VALUE_FIELDS,
    Partial,
    Versions,
    cap_versions,
    compact_values,
    empty_partial,
    merge_all,
    route_fields,
    route_key,
    split_values,
    tool_values,
    value_of,
    versions_of,
)
from detector.core.signals import (
    EVENTS,
    TOOL_COUNTERS,
    layout_of,
)
from detector.core.watermark import Watermark

__all__ = ["Aggregator"]

_OTHER_COMBO: Final = (UNSET,) * len(COMBO_FIELDS)   # all "unknown"
#: The fields whose values a combination holds (the tool's are counted per event).
_VERSIONED: Final = tuple(f for f in range(len(VALUE_FIELDS)) if f != TOOL_FIELD)


class Aggregator(Counting):
    """Stage 1 for one source: accumulates events into finest-cohort partials and hands out
    partials at every level once its watermark (``wm``) closes their window."""

    def __init__(self, config: Config) -> None:
        self.size = config.windows.size_seconds
        self.wm = Watermark(self.size, config.windows.allowed_lateness_seconds)
        self.k = config.alerting.evidence_trace_ids
        self.levels = config.cohorts.levels
        self.finest = list(self.levels[-1])   # a list[str] of its own, as Counting declares
        self.layout = layout_of(config)
        # An open partial per (window, finest cohort, combination of versions and model):
        # the combination is counted by the partial's own counters, so no per-event work of
        # its own. The combinations of one cohort are merged into one partial when handed
        # out, each value's counters kept (Partial.values); tool names are counted per event.
        self._key = attrgetter(*self.finest, *COMBO_FIELDS)
        self._nf = len(self.finest)
        self._open: dict[tuple[int, tuple[object, ...]], Partial] = {}
        self._combos: dict[tuple[int, tuple[object, ...]], int] = {}   # open partials per cohort
        self._named: dict[tuple[object, ...], dict[int, dict[str, dict[int, int]]]] = {}
        self.late = 0
        # Bounded memory whatever producers send: past max_cohorts distinct finest cohorts,
        # new ones are counted under an all-"other" cohort (and in self.folded).
        self.max_cohorts = config.cohorts.max_cohorts
        self._known: set[tuple[object, ...]] = set()
        self._overflow: tuple[object, ...] = tuple(OTHER for _ in self.finest)
        self.folded = 0
        # Projections from the finest cohort tuple to each level's tuple.
        self._proj = [tuple(self.finest.index(f) for f in lvl) for lvl in self.levels]
        self._route = tuple(self.finest.index(f) for f in route_fields(self.levels[0]))
        self.leak_labels = frozenset(config.rules.leak_labels)
        self._ctx = self._c_context()

    def _new(self, w: int, key: tuple[object, ...]) -> Partial:
        cohort: tuple[str, ...] = tuple(UNKNOWN if v is UNSET else v for v in key)  # type: ignore[misc]  # key holds str or UNSET
        route = route_key(tuple(cohort[i] for i in self._route))
        return empty_partial(w, len(self.levels) - 1, cohort, self.layout.size, route)

    def _partial_for(self, key: tuple[int, tuple[object, ...]]) -> Partial:
        """The partial that counts an event with ``key`` when no open partial has that key:
        a new one, or, past the cohort budget, the window's all-"other" cohort (bounded
        memory whatever producers send), or past MAX_OPEN_COMBOS combinations in one
        cohort and window, its all-"unknown" partial."""
        w, full = key
        cohort = full[:self._nf]
        moved = False
        if cohort not in self._known:
            if len(self._known) < self.max_cohorts:
                self._known.add(cohort)
            else:
                self.folded += 1
                cohort, moved = self._overflow, True
        n = self._combos.get((w, cohort), 0)
        if n >= MAX_OPEN_COMBOS - 1:
            key = (w, cohort + _OTHER_COMBO)
        elif moved:
            key = (w, cohort + full[self._nf:])
        # Otherwise the partial is stored under the very key passed: the C counting keeps
        # that object and its hash, so its later lookups are identity hits.
        p = self._open.get(key)
        if p is None:
            p = self._open[key] = self._new(w, cohort)
            self._combos[(w, cohort)] = n + 1
        return p

    def drain(self, watermark: float | None = None) -> list[Partial]:
        """Close every window that ends at or before the watermark; return its partials at
        every cohort level, finest last, in a deterministic order."""
        upto = self.wm.close(watermark)   # windows < upto end at or before it
        if upto is None:
            return []
        return self._hand_out(sorted((key for key in self._open if key[0] < upto), key=_order))

    def flush_open(self) -> list[Partial]:
        """Hand out the partials of every open window *without* closing it (the window takes
        more events; stage 2 merges the increments). A streaming stage 1 does this before
        each commit, so it never holds counts a dying worker would lose."""
        return self._hand_out(sorted(self._open, key=_order))

    def _hand_out(self, keys: list[tuple[int, tuple[object, ...]]]) -> list[Partial]:
        """Pop the partials with these keys, one per (window, cohort): the partials of its
        combinations merged, each combination's events as its version count and its
        counters as its values' (Partial.values)."""
        nf = self._nf
        groups: dict[tuple[int, tuple[object, ...]], list[tuple[tuple[object, ...], Partial]]] = {}
        for key in keys:
            p = self._open.pop(key)
            w, full = key
            cohort = full[:nf]
            n = self._combos[(w, cohort)] - 1
            if n:
                self._combos[(w, cohort)] = n
            else:
                del self._combos[(w, cohort)]
            groups.setdefault((w, cohort), []).append((full[nf:], p))
        self._named = {}
        return self._roll_up(sorted(map(self._combine, groups.values()), key=_pkey))

    def _values_of(self, combo: tuple[object, ...]) -> dict[int, dict[str, dict[int, int]]]:
        """A combination's one value a field, as Partial.values holds them: the inner dicts
        shared by the partials of one hand-out (nothing changes them in place)."""
        got = self._named.get(combo)
        if got is None:
            got = self._named[combo] = {f: {value_of(f, combo): {}} for f in _VERSIONED}
        return dict(got)

    def _combine(self, members: list[tuple[tuple[object, ...], Partial]]) -> Partial:
        """One cohort's combinations in one partial, in one pass (not one merge each), the
        tool names' counts (kept per event, see Counting._tool) summed and written out."""
        combo, p = members[0]
        if len(members) == 1:
            for h in p.top.values():
                h.sort()   # heap order depends on arrival; the sorted top-k does not
            p.versions = {versions_of(combo[:3]): p.counts[EVENTS]}
            counted: Any = p.values.get(TOOL_FIELD, {})   # written out by _roll_up
            p.values = self._values_of(combo)
            p.values[TOOL_FIELD] = counted
            return p
        parts = [q for _, q in members]
        counts = [sum(col) for col in zip(*(q.counts for q in parts), strict=True)]
        samples: dict[int, set[str]] = {}
        tops: dict[int, set[tuple[int, str]]] = {}
        versions: dict[Versions, int] = {}
        tools: dict[str, Any] = {}
        for c, q in members:
            for i, ids in q.samples.items():
                samples.setdefault(i, set()).update(ids)
            for i, items in q.top.items():
                tops.setdefault(i, set()).update(map(tuple, items))  # type: ignore[arg-type]
            vs = versions_of(c[:3])
            versions[vs] = versions.get(vs, 0) + q.counts[EVENTS]
            mine: Any = q.values.get(TOOL_FIELD, {})
            if mine and not _tool_sum(tools, mine):
                _tool_sum_py(tools, mine)
        cap_versions(versions)
        values: dict[int, dict[str, dict[int, int]]] = {}
        for f in _VERSIONED:
            by: dict[str, list[list[int]]] = {}
            for c, q in members:
                by.setdefault(value_of(f, c), []).append(q.counts)
            if len(by) == 1:
                values[f] = {next(iter(by)): {}}
                continue
            whole = {v: {i: n for i, n in enumerate(map(sum, zip(*lists, strict=True))) if n}
                     for v, lists in by.items()}
            values[f] = compact_values(whole)
        values[TOOL_FIELD] = tools
        out = Partial(p.window, p.level, p.cohort, counts,
                      {i: sorted(ids)[:self.k] for i, ids in samples.items()},
                      {i: sorted(items)[-TOP_K:] for i, items in tops.items()},
                      versions, p.route, values)
        return out

    def drain_complete(self) -> list[Partial]:
        """End of input: close every window event time has passed, and the one it stopped in
        only if input ran to its end (see :meth:`Watermark.at_end`). A window cut short is not
        handed out: scored, its missing traffic would read as a drop in volume.

        >>> from detector.config import load_config
        >>> from detector.core.events import decode
        >>> agg = Aggregator(load_config(None))
        >>> for t in range(0, 90, 2):   # an event every 2 s, cut at 88 s: mid-window
        ...     agg.add(decode(b'{"ts": %d, "operation": "chat", "app": "a"}' % t)[0][0])
        >>> sorted({p.window for p in agg.drain_complete()})
        [0]
        >>> agg.add(decode(b'{"ts": 119.5, "operation": "chat", "app": "a"}')[0][0])
        >>> sorted({p.window for p in agg.drain_complete()})   # ran to its end
        [1]
        """
        if not self._open:
            return []
        last = max(w for w, _ in self._open)
        n = sum(p.counts[EVENTS] for (w, _), p in self._open.items() if w == last)
        return self.drain(watermark=self.wm.at_end(last, n))

    def drain_all(self) -> list[Partial]:
        """End of input: close every open window."""
        if not self._open:
            return []
        return self.drain(watermark=(max(w for w, _ in self._open) + 1) * self.size)

    def _roll_up(self, finest: Iterable[Partial]) -> list[Partial]:
        """The finest partials and their coarser cohorts'. The tool names' counts, still
        counted per name in arrays (Counting._tool), are summed as such and then written out
        (_tool_sum, _tool_values: in C, once per partial and level); the other values'
        counters once per coarse partial from all its finest ones (_gathered), not one
        merge_values each; and the rest of a coarse partial so too (merge_all), not one
        merge_into each."""
        out: list[Partial] = []
        coarse: dict[tuple[int, int, tuple[str, ...]], Partial] = {}
        tools: dict[tuple[int, int, tuple[str, ...]], dict[str, Any]] = {}
        members: dict[tuple[int, int, tuple[str, ...]], list[Partial]] = {}
        fin = len(self.levels) - 1
        k = self.k
        for p in finest:
            mine: Any = p.values.pop(TOOL_FIELD, {})   # arrays (see Counting._tool)
            for lvl in range(fin):
                key = (p.window, lvl, tuple(p.cohort[i] for i in self._proj[lvl]))
                q = coarse.get(key)
                if q is None:
                    coarse[key] = q = empty_partial(p.window, lvl, key[2], len(p.counts), p.route)
                    tools[key] = {}
                    members[key] = []
                members[key].append(p)
                if mine and not _tool_sum(tools[key], mine):
                    _tool_sum_py(tools[key], mine)
            p.values[TOOL_FIELD] = _written(mine, p.counts)
            out.append(p)
        for key, q in coarse.items():
            merge_all(q, members[key], k)
            q.values = _gathered(members[key], len(q.counts))
            q.values[TOOL_FIELD] = _written(tools[key], q.counts)
        return sorted(coarse.values(), key=_pkey) + out


def _gathered(members: list[Partial], size: int) -> dict[int, dict[str, dict[int, int]]]:
    """The version values' counters of the finest partials ``members`` (tool names apart) as
    their coarse partial holds them: the same counts merge_values would sum, one pass a
    field. Where every member has the one same value (most windows) it is shared as is."""
    out: dict[int, dict[str, dict[int, int]]] = {}
    for f in _VERSIONED:
        first = members[0].values.get(f)
        if first is not None and len(first) == 1 and all(
                (vals := q.values.get(f)) is first or vals == first for q in members):
            out[f] = first
            continue
        acc: dict[str, list[int]] = {}
        for q in members:
            vals = q.values.get(f) or {UNKNOWN: {}}   # (none: counted as "unknown")
            if len(vals) == 1:
                v = next(iter(vals))
                have = acc.get(v)
                acc[v] = list(q.counts) if have is None else list(map(add, have, q.counts))
                continue
            for v, c in split_values(vals, q.counts).items():
                a = acc.get(v)
                if a is None:
                    a = acc[v] = [0] * size
                for i, n in c.items():
                    a[i] += n
        out[f] = compact_values({v: {i: n for i, n in enumerate(a) if n}
                                 for v, a in acc.items()})
    return out


def _tool_sum_py(into: dict[str, Any], mine: dict[str, Sequence[int]]) -> None:
    """Add the tool names' counters of a finest partial (``mine``) into its coarse cohort's
    (``into``), a name new there as a copy (the reference for ``_tally.tool_sum``)."""
    for name, lst in mine.items():
        have = into.get(name)
        into[name] = list(lst) if have is None else list(map(add, have, lst))


def _no_c(*_: object) -> None:
    return None


#: _tool_sum_py and partials.tool_values (at TOOL_COUNTERS) in C on stage 1's arrays, where
#: it is built (tests/test_tally.py holds them equal); False / None: the Python ones run.
_tool_sum: Callable[[dict[str, Any], dict[str, Any]], bool | None] = (
    _no_c if _tally is None else _tally.tool_sum)
_tool_values: Callable[[dict[str, Any], str], dict[str, dict[int, int]] | None] = (
    _no_c if _tally is None else _tally.tool_values)


def _written(tools: dict[str, Sequence[int]], counts: list[int]) -> dict[str, dict[int, int]]:
    """Tool names' counters as Partial.values holds them, at most MAX_VALUES (a coarse cohort
    may gather more names than one open partial keeps)."""
    if not tools:
        return {UNKNOWN: {}}
    tv = _tool_values(tools, UNKNOWN)
    if tv is None:   # (not stage 1's arrays: summed in Python, see _tool_sum_py)
        tv = tool_values(tools, counts, TOOL_COUNTERS)
    return tv if len(tv) <= MAX_VALUES else compact_values(split_values(tv, counts))


def _order(key: tuple[int, tuple[object, ...]]) -> tuple[int, tuple[str, ...]]:
    return key[0], tuple(UNKNOWN if v is UNSET else v for v in key[1])  # type: ignore[misc]  # key holds str or UNSET


def _pkey(p: Partial) -> tuple[int, int, tuple[str, ...]]:
    return p.window, p.level, p.cohort
