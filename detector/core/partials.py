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
from collections.abc import Hashable, Iterable
from typing import Final, NamedTuple, TypeVar, cast

from msgspec import UNSET, Struct

from detector.core.wire import Wire

K = TypeVar("K", bound=Hashable)

__all__ = [
    "MAX_VERSION_COMBOS",
    "OTHER",
    "OTHER_VERSIONS",
    "SCALE",
    "TOP_K",
    "UNKNOWN",
    "VERSION_FIELDS",
    "LegacyPartial",
    "Partial",
    "Versions",
    "bottom",
    "cap_versions",
    "combine",
    "decode_partial",
    "empty_partial",
    "encode",
    "legacy_versions",
    "merge",
    "merge_into",
    "merge_keyed",
    "route_key",
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
SEP: Final = "\x1f"   # between the values of a route key


class Versions(NamedTuple):
    """An event's version combination: a key of ``Partial.versions`` and ``RuleHit.versions``
    (msgpack: an array of three strings)."""

    model_version: str
    prompt_version: str
    policy_version: str


VERSION_FIELDS: Final = Versions._fields
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


def route_key(root_values: tuple[str, ...]) -> str:
    """Stage-2 partition key: the root-level cohort, so a parent and all its children meet on
    one stage-2 instance (parent fallback and grouping need both)."""
    return SEP.join(root_values)


def bottom(lst: list[str], tid: str, k: int) -> None:
    if len(lst) < k:
        if tid not in lst:
            insort(lst, tid)
    elif tid < lst[-1] and tid not in lst:
        insort(lst, tid)
        lst.pop()


def merge_into(a: Partial, b: Partial, k: int) -> None:
    """Add ``b`` into ``a`` (same window and cohort)."""
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


def merge(a: Partial, b: Partial, k: int = 20) -> Partial:
    """A new partial holding both (pure)."""
    out = empty_partial(a.window, a.level, a.cohort, len(a.counts), a.route)
    merge_into(out, a, k)
    merge_into(out, b, k)
    return out


def empty_partial(window: int, level: int, cohort: tuple[str, ...], size: int, route: str = ""
           ) -> Partial:
    return Partial(window, level, cohort, [0] * size, {}, {}, {}, route)
