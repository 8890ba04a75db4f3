"""Window partials: the totals of one cohort in one window, and how two of them merge.

Partials merge by adding counters and keeping bottom-k / top-k evidence, so merging is
associative and commutative, and the order of arrival within the allowed lateness does not
change a result. They cross the wire between stage 1 and stage 2 as msgpack.

>>> a = empty_partial(0, 0, ("t1",), 3); a.counts[0] = 2; a.samples[0] = ["0b", "0d"]
>>> b = empty_partial(0, 0, ("t1",), 3); b.counts[0] = 1; b.samples[0] = ["0a", "0c"]
>>> m = merge(a, b, k=3)
>>> m.counts, m.samples, decode_partial(encode(m)) == m
([3, 0, 0], {0: ['0a', '0b', '0c']}, True)
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import compress
from typing import Final, NamedTuple, TypeVar, cast

from msgspec import UNSET, Struct

from detector.core.wire import Wire

K = TypeVar("K", bound=Hashable)
F = TypeVar("F", bound=str)

__all__ = [
    "COMBO_FIELDS",
    "ENVIRONMENT",
    "MAX_OPEN_COMBOS",
    "MAX_VALUES",
    "MAX_VERSION_COMBOS",
    "OTHER",
    "OTHER_VERSIONS",
    "SCALE",
    "TOOL_FIELD",
    "TOP_K",
    "UNKNOWN",
    "VALUE_FIELDS",
    "VERSION_FIELDS",
    "LegacyPartial",
    "Partial",
    "Versions",
    "bottom",
    "cap_versions",
    "combine",
    "compact_values",
    "decode_partial",
    "empty_partial",
    "encode",
    "legacy_versions",
    "merge",
    "merge_all",
    "merge_into",
    "merge_keyed",
    "merge_values",
    "reroute",
    "route_fields",
    "route_key",
    "split_values",
    "tool_values",
    "value_of",
    "versions_of",
]

UNKNOWN: Final = "unknown"
OTHER: Final = "other"
#: Quantities are summed as fixed-point log1p(value) × SCALE: integers add exactly, so the
#: result does not depend on the order events arrive in (floats would).
SCALE: Final = 1024
#: Largest values kept per quantity and window as evidence (the slowest calls, the longest
#: outputs); an alert gathers them over its windows up to the contract's 20.
TOP_K: Final = 5
MAX_VERSION_COMBOS: Final = 16
#: Open partials one cohort may have in one stage-1 window (one per combination of versions,
#: model and tool); past it, new combinations count under all-"unknown" values.
MAX_OPEN_COMBOS: Final = 64
#: Values of one field a partial keeps counts for (an agent with a dozen tools fits); the rest
#: are summed under "other" (the most common kept: then the merge depends on order), so a
#: producer that invents a version per event cannot grow a partial.
MAX_VALUES: Final = 16
#: The fields whose values are rollback candidates, as ``Partial.values`` keys them: the
#: model version (with its model: "model\x1fversion"), prompt, policy, and the tool called.
VALUE_FIELDS: Final = ("model_version", "prompt_version", "policy_version", "tool_name")
#: The tool's field: counted per event by stage 1 (not by combination, a cohort's agents call
#: several tools), and only its TOOL_COUNTERS (detector.core.signals): the other counters of
#: a tool value are not kept (they are not read: tools are candidates for tool signals only).
TOOL_FIELD: Final = VALUE_FIELDS.index("tool_name")
SEP: Final = "\x1f"   # between the values of a route key


class Versions(NamedTuple):
    """An event's version combination: a key of ``Partial.versions`` and ``RuleHit.versions``
    (msgpack: an array of three strings)."""

    model_version: str
    prompt_version: str
    policy_version: str


VERSION_FIELDS: Final = Versions._fields
#: The fields stage 1 keys an open partial by beyond its cohort: each combination's events
#: are then counted by the partial's own counters, so its values' counts (Partial.values)
#: cost no per-event work. value_of reads a combination in this order.
COMBO_FIELDS: Final = (*VERSION_FIELDS, "model")
OTHER_VERSIONS: Final = Versions(UNKNOWN, UNKNOWN, UNKNOWN)


def versions_of(values: Iterable[object]) -> Versions:
    """An event's version combination; absent fields as "unknown".

    >>> versions_of(("m1", UNSET, "p2"))
    Versions(model_version='m1', prompt_version='unknown', policy_version='p2')
    """
    return Versions(*(UNKNOWN if v is UNSET else v for v in values))  # type: ignore[arg-type]


def legacy_versions(name: str) -> Versions:
    """A combination as e45989b..667b114 named it, "model\x1fprompt\x1fpolicy" (old state,
    envelopes and held hits still carry it); a value holding the separator stays whole."""
    m, _, rest = name.partition(SEP)
    pr, _, po = rest.partition(SEP)
    return Versions(m, pr, po)


class Partial(Struct, array_like=True):
    """Totals of one cohort in one window, from one or more sources."""

    window: int                      # window index: floor(ts / size)
    level: int                       # index into config.cohorts.levels
    cohort: tuple[str, ...]          # values of that level's fields
    counts: list[int]                # exact integers: merging is order-free
    samples: dict[int, list[str]]    # counter -> smallest trace ids of flagged events
    top: dict[int, list[tuple[int, str]]]  # quantity counter -> largest (value, trace id)
    versions: dict[Versions, int]    # version combination -> events
    route: str = ""                  # stage-2 partition key: the root-level cohort
    #: Per field of VALUE_FIELDS (its index), value -> that value's events' counters, sparse
    #: ({counter: n}); the one value written {} holds what the others do not (the partial's
    #: counts minus theirs), so a cohort on one version costs a name per field. Absent from
    #: partials written before it (and ignored by stage 2 code older than it).
    values: dict[int, dict[str, dict[int, int]]] = {}


class LegacyPartial(Partial):
    """A partial as written before :class:`Versions` (combinations as joined strings)."""

    versions: dict[str, int]  # type: ignore[assignment]

    def upgrade(self) -> Partial:
        versions = {legacy_versions(k): n for k, n in self.versions.items()}
        return Partial(self.window, self.level, self.cohort, self.counts, self.samples,
                       self.top, versions, self.route)


_WIRE: Final = Wire(Partial, LegacyPartial)


def encode(p: Partial) -> bytes:
    return _WIRE.encode(p)


def decode_partial(data: bytes) -> Partial:
    """A partial from msgpack; one written before :class:`Versions` is upgraded."""
    return _WIRE.decode(data)


#: The cohort field an app's deployments differ by (``canary``, ``production``, ...).
ENVIRONMENT: Final = "environment"


def route_fields(root: Sequence[F]) -> tuple[F, ...]:
    """The root level's fields that make a stage-2 route key: all but the environment, so an
    app's canary and production meet on one stage-2 instance (the canary gap compares them);
    all of them where the environment is the only one.

    >>> route_fields(["app", "environment"]), route_fields(["environment"])
    (('app',), ('environment',))
    """
    rest = tuple(f for f in root if f != ENVIRONMENT)
    return rest or tuple(root)


def route_key(route_values: tuple[str, ...]) -> str:
    """Stage-2 partition key: a cohort's values of :func:`route_fields`, so a parent and all
    its children meet on one stage-2 instance (parent fallback and grouping need both)."""
    return SEP.join(route_values)


def reroute(key: str, root: Sequence[str]) -> str:
    """The route key today's routing gives a key written by a version that routed by the
    whole root cohort (its state is migrated to it); any other key as it is.

    >>> root = ["app", "environment"]
    >>> reroute("support\x1fcanary", root), reroute("support", root)
    ('support', 'support')
    """
    fields = route_fields(root)
    values = key.split(SEP)
    if len(fields) == len(root) or len(values) != len(root):
        return key
    return route_key(tuple(v for f, v in zip(root, values, strict=True) if f in fields))


def bottom(lst: list[str], tid: str, k: int) -> None:
    if len(lst) < k:
        if tid not in lst:
            insort(lst, tid)
    elif tid < lst[-1] and tid not in lst:
        insort(lst, tid)
        lst.pop()


def merge_into(a: Partial, b: Partial, k: int, values: bool = True) -> None:
    """Add ``b`` into ``a`` (same window and cohort); ``values=False``: all but their
    values (the caller sums those, as Aggregator._roll_up does)."""
    if values and (b.values or a.values):
        a.values = merge_values(a.values, a.counts, b.values, b.counts)
    ac = a.counts
    if len(ac) < len(b.counts):   # ``a`` from a state saved before the layout grew
        ac.extend([0] * (len(b.counts) - len(ac)))
    for i, v in enumerate(b.counts):
        ac[i] += v
    # The k smallest ids and the TOP_K largest values of the union, in one C-level sort each
    # (one insertion at a time was most of a flush's cost).
    for c, ids in b.samples.items():
        dst = a.samples.get(c)
        a.samples[c] = sorted(set(ids).union(dst) if dst else set(ids))[:k]
    for c, items in b.top.items():
        # (value, trace id) pairs: lists when they come from msgpack, tuples to be hashed
        top = cast(set[tuple[int, str]], set(map(tuple, items)))
        dst2 = a.top.get(c)
        a.top[c] = sorted(top.union(dst2) if dst2 else top)[-TOP_K:]
    for combo, n in b.versions.items():
        a.versions[combo] = a.versions.get(combo, 0) + n
    cap_versions(a.versions)


def merge_all(a: Partial, parts: Sequence[Partial], k: int) -> None:
    """``merge_into(a, b, k, values=False)`` for every ``b`` of ``parts`` in turn, a field at a
    time over all of them: counts summed per counter, each counter's k smallest ids and
    TOP_K largest values sorted once from the union of all (the k smallest of a union are
    those of the k smallest of its parts: the same lists), versions merged and capped after
    each part as merge_into caps them. What a coarse cohort's roll-up does (one sort a
    counter, not one a counter and member)."""
    if any(len(b.counts) != len(a.counts) for b in parts):   # a layout grown mid-way
        for b in parts:
            merge_into(a, b, k, values=False)
        return
    a.counts[:] = map(sum, zip(a.counts, *(b.counts for b in parts), strict=True))
    ids: dict[int, set[str]] = {}
    tops: dict[int, set[tuple[int, str]]] = {}
    for b in parts:
        for c, lst in b.samples.items():
            got = ids.get(c)
            if got is None:
                ids[c] = set(lst)
            else:
                got.update(lst)
        for c, items in b.top.items():
            # (value, trace id) pairs: lists when they come from msgpack, tuples to be hashed
            pairs = cast(Iterable[tuple[int, str]], map(tuple, items))
            have = tops.get(c)
            if have is None:
                tops[c] = set(pairs)
            else:
                have.update(pairs)
    for c, got in ids.items():
        dst = a.samples.get(c)
        if dst:
            got.update(dst)
        a.samples[c] = sorted(got)[:k]
    for c, have in tops.items():
        dst2 = a.top.get(c)
        if dst2:
            have.update(map(tuple, dst2))  # type: ignore[arg-type]  # pairs, as above
        a.top[c] = sorted(have)[-TOP_K:]
    for b in parts:
        for combo, n in b.versions.items():
            a.versions[combo] = a.versions.get(combo, 0) + n
        cap_versions(a.versions)


def merge_keyed(acc: dict[K, Partial], key: K, p: Partial, k: int) -> None:
    """Keep ``p`` under ``key`` in ``acc``, or merge it into the partial already there."""
    q = acc.get(key)
    if q is None:
        acc[key] = p
    else:
        merge_into(q, p, k)


def combine(partials: Iterable[Partial], k: int) -> list[Partial]:
    """One partial per (window, level, cohort): the sources a stage-1 worker reads hand out
    one each; merged before they cross the wire, stage 2 gets fewer bytes and merges nothing
    of theirs (bench/stage2_input.py).
    Merges into the first of each key (the others are consumed).

    >>> a = empty_partial(0, 1, ("t1",), 2); a.counts[0] = 2
    >>> b = empty_partial(0, 1, ("t1",), 2); b.counts[0] = 3
    >>> c = empty_partial(1, 1, ("t1",), 2); c.counts[0] = 1
    >>> [(p.window, p.counts) for p in combine([a, b, c], k=3)]
    [(0, [5, 0]), (1, [1, 0])]
    """
    out: dict[tuple[int, int, tuple[str, ...]], Partial] = {}
    for p in partials:
        merge_keyed(out, (p.window, p.level, p.cohort), p, k)
    return list(out.values())


def cap_versions(versions: dict[Versions, int]) -> None:
    if len(versions) <= MAX_VERSION_COMBOS:
        return
    # Keep the most common combinations; ties broken by name so the result is order-free.
    keep = sorted(versions.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_VERSION_COMBOS - 1]
    other = OTHER_VERSIONS
    rest = sum(versions.values()) - sum(n for _, n in keep)
    versions.clear()
    versions.update(keep)
    versions[other] = versions.get(other, 0) + rest


def value_of(field: int, combo: tuple[object, ...]) -> str:
    """The value of VALUE_FIELDS[field] in a stage-1 combination (model_version,
    prompt_version, policy_version, model, tool_name; unset as UNSET): a model version is
    named with its model.

    >>> value_of(0, ("v2", UNSET, UNSET, "m-large")), value_of(1, ("v2",) + (UNSET,) * 3)
    ('m-large\\x1fv2', 'unknown')
    """
    if field == 0:
        m, v = combo[3], combo[0]
        if m is UNSET and v is UNSET:
            return UNKNOWN
        return f"{UNKNOWN if m is UNSET else m}{SEP}{UNKNOWN if v is UNSET else v}"
    v = combo[field]
    return UNKNOWN if v is UNSET else v  # type: ignore[return-value]  # a str when set


def tool_values(open_: Mapping[str, Sequence[int]], counts: list[int], at: tuple[int, ...]
                ) -> dict[str, dict[int, int]]:
    """The tool field's values as a partial hands them out, from stage 1's counters per tool
    name (their counters at ``at``): each name's, and "unknown" (events that call no tool)
    as the remainder.

    >>> tool_values({"search": [3, 3, 1]}, [5, 0, 3, 1], (0, 2, 3))
    {'search': {0: 3, 2: 3, 3: 1}, 'unknown': {}}
    """
    # compress keeps the (counter, n) pairs whose n is not 0, in C (one per partial and name).
    out = {v: dict(compress(zip(at, lst), lst))   # noqa: B905 - one length (Counting._tool)
           for v, lst in sorted(open_.items())}
    out[UNKNOWN] = {}   # (a tool named "unknown" is the remainder's too)
    return out


def split_values(vals: dict[str, dict[int, int]], counts: list[int]) -> dict[str, dict[int, int]]:
    """Every value's counters, the remainder value's worked out from the partial's counts."""
    out: dict[str, dict[int, int]] = {}
    rest = None
    for v, c in vals.items():
        if c:
            out[v] = dict(c)
        else:
            rest = v
    if rest is not None:
        r = {i: n for i, n in enumerate(counts) if n}
        for c in out.values():
            for i, n in c.items():
                r[i] = r.get(i, 0) - n
        out[rest] = {i: n for i, n in r.items() if n}
    return out


def merge_values(av: dict[int, dict[str, dict[int, int]]], ac: list[int],
                 bv: dict[int, dict[str, dict[int, int]]], bc: list[int]
                 ) -> dict[int, dict[str, dict[int, int]]]:
    """The per-value counters of two partials (counts ``ac`` and ``bc``) added: exact, and in
    any order the same counts (:func:`split_values`), but for the cap (past MAX_VALUES the
    values with most events are kept, ties by name, as :func:`cap_versions` does). Which
    value is written as the remainder may depend on the order. A partial with events but no
    entry for a field (written before there were values) counts them under "unknown". Pure:
    neither side is changed (their counters may be shared with the result).

    >>> a = {1: {"v1": {}}}; b = {1: {"v2": {}}}
    >>> merge_values(a, [3, 1], b, [1, 0])
    {1: {'v1': {}, 'v2': {0: 1}}}
    """
    if av == bv and all(len(x) == 1 and not next(iter(x.values())) for x in av.values()):
        return av   # one and the same value a field on both sides: the common case
    if not av and all(bv.values()) and not any(ac):
        return {f: bv[f] for f in sorted(bv)}   # into an empty partial (a roll-up's first)
    out: dict[int, dict[str, dict[int, int]]] = {}
    a_any, b_any = any(ac), any(bc)
    for f in sorted(av.keys() | bv.keys()):
        x = av.get(f) or ({UNKNOWN: {}} if a_any else {})
        y = bv.get(f) or ({UNKNOWN: {}} if b_any else {})
        if not x or not y:
            out[f] = x or y
            continue
        rx = next((v for v, c in x.items() if not c), None)
        ry = next((v for v, c in y.items() if not c), None)
        if rx == ry and len(y) == 1:
            out[f] = x   # the same one value on both sides: the common case
            continue
        res = dict(x)    # x's counters are copied below before any is added to
        for v, c in y.items():
            if v == rx:
                continue   # the result's remainder: its counts follow from the totals
            if not c:      # y's remainder, not x's: its counters, written out
                c = {i: n for i, n in enumerate(bc) if n}
                for d in y.values():
                    for i, n in d.items():
                        c[i] = c.get(i, 0) - n   # (a sum of scores may cancel to 0)
                c = {i: n for i, n in c.items() if n}
                if not c:
                    continue
            have = res.get(v)
            if have is None:
                res[v] = c
            else:
                have = res[v] = dict(have)
                for i, n in c.items():
                    have[i] = have.get(i, 0) + n
        if len(res) > MAX_VALUES:
            total = [p + q for p, q in zip(ac, bc, strict=False)]
            total += ac[len(total):] or bc[len(total):]
            res = compact_values(split_values(res, total))
        out[f] = res
    return out


def compact_values(whole: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    """Values with events only, at most MAX_VALUES (the rest under "other"), in name order,
    the one with most events written as the remainder."""
    whole = {v: c for v, c in whole.items() if c.get(0, 0) > 0}
    if len(whole) > MAX_VALUES:
        ranked = sorted((v for v in whole if v != OTHER), key=lambda v: (-whole[v][0], v))
        kept = set(ranked[:MAX_VALUES - 1])
        other: dict[int, int] = {}
        for v in [v for v in whole if v not in kept]:
            for i, n in whole.pop(v).items():
                other[i] = other.get(i, 0) + n
        whole[OTHER] = other
    out = {v: whole[v] for v in sorted(whole)}
    if out:
        out[min(out, key=lambda v: (-out[v][0], v))] = {}
    return out


def merge(a: Partial, b: Partial, k: int = 20) -> Partial:
    """A new partial holding both (pure)."""
    out = empty_partial(a.window, a.level, a.cohort, len(a.counts), a.route)
    merge_into(out, a, k)
    merge_into(out, b, k)
    return out


def empty_partial(window: int, level: int, cohort: tuple[str, ...], size: int, route: str = ""
           ) -> Partial:
    return Partial(window, level, cohort, [0] * size, {}, {}, {}, route, {})
