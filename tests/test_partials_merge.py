"""merge_all, the roll-up's merge of a coarse cohort's members, against merge_into one member
at a time (what it stands for): the same counts, evidence lists, versions (capped as often)
and the same order of their keys."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.partials import (
    MAX_VERSION_COMBOS,
    Partial,
    Versions,
    empty_partial,
    merge_all,
    merge_into,
)

SIZE = 6
K = 3
_IDS = st.lists(st.sampled_from([f"{i:032x}" for i in range(12)]), max_size=K, unique=True)
_PAIRS = st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["a" * 32, "b" * 32, "c" * 32])),
                  max_size=5, unique=True)


@st.composite
def partials(draw: st.DrawFn) -> Partial:
    p = empty_partial(7, 2, ("t1", "app"), SIZE)
    p.counts = draw(st.lists(st.integers(0, 1000), min_size=SIZE, max_size=SIZE))
    p.samples = {c: sorted(ids) for c, ids in
                 draw(st.dictionaries(st.integers(0, SIZE - 1), _IDS, max_size=3)).items()}
    # From msgpack the pairs are lists; from stage 1, tuples.
    as_lists = draw(st.booleans())
    p.top = {c: [list(x) if as_lists else x for x in sorted(pairs)] for c, pairs in
             draw(st.dictionaries(st.integers(0, SIZE - 1), _PAIRS, max_size=3)).items()}
    combos = draw(st.lists(st.integers(0, 2 * MAX_VERSION_COMBOS), max_size=MAX_VERSION_COMBOS))
    p.versions = {Versions(f"m{c}", f"p{c % 3}", "v1"): draw(st.integers(1, 50))
                  for c in combos}
    return p


def _as_is(p: Partial) -> tuple:
    return (p.counts, list(p.samples.items()), [(c, [tuple(x) for x in v])
                                                 for c, v in p.top.items()],
            list(p.versions.items()))


@settings(max_examples=200, deadline=None)
@given(st.lists(partials(), min_size=1, max_size=12), st.booleans())
def test_merge_all_is_merge_into_member_by_member(members: list[Partial], fresh: bool) -> None:
    start = empty_partial(7, 1, ("t1",), SIZE) if fresh else copy.deepcopy(members[0])
    # (What merges into is this process's own: its pairs are tuples.)
    start.top = {c: [tuple(x) for x in v] for c, v in start.top.items()}  # type: ignore[misc]
    one_by_one, at_once = copy.deepcopy(start), copy.deepcopy(start)
    for m in members:
        merge_into(one_by_one, m, K, values=False)
    merge_all(at_once, members, K)
    assert _as_is(at_once) == _as_is(one_by_one)
    assert all(isinstance(x, tuple) for v in at_once.top.values() for x in v)
