"""attribution.Trail.add's common part in C (_tally.trail_known) against its Python twin
(attribution._known_py, the reference): the same rows added to, to the bit, and the same
values left for Trail._count, in the same order."""

from __future__ import annotations

from array import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core import attribution
from detector.core.partials import UNKNOWN
from detector.core.signals import EVENTS

pytestmark = pytest.mark.skipif(attribution._tally is None, reason="C extension not built")

FIELDS, TOOL = 4, 3
NAMES = ["v1", "v2", "m\x1fv1", UNKNOWN, "other", "search"]


@st.composite
def trails(draw: Any) -> tuple[list[str], list[float], dict[int, array[float]] | None]:
    """A trail's names (a name may repeat under another field), meta rows and vecs."""
    names = draw(st.lists(st.sampled_from(NAMES), max_size=10))
    meta: list[float] = []
    for _ in names:
        meta += [draw(st.integers(0, FIELDS - 1)), draw(st.integers(0, 50)),
                 draw(st.floats(0, 1e6, width=32))]
    rows = draw(st.sets(st.integers(0, max(len(names) - 1, 0)), max_size=3)) if names else set()
    vecs = {r: array("f", [0.0] * 4) for r in rows} if draw(st.booleans()) else None
    return names, meta, vecs


counters = st.dictionaries(st.integers(0, 5), st.integers(-10, 10**12), max_size=4)
partial_values = st.dictionaries(
    st.integers(0, FIELDS + 1),
    st.dictionaries(st.sampled_from([*NAMES, "v3"]), st.one_of(st.just({}), counters),
                    min_size=1, max_size=5),
    max_size=FIELDS + 1)


@settings(max_examples=300, deadline=None)
@given(trails(), partial_values, st.lists(st.integers(0, 10**12), min_size=6, max_size=6),
       st.floats(1e-3, 1e30))
def test_known_values_in_c_are_python_s(trail: Any, values: Any, counts: list[int],
                                        g: float) -> None:
    names, meta, vecs = trail
    c_meta, py_meta = array("f", meta), array("f", meta)
    args = (values, counts, g, FIELDS, TOOL, UNKNOWN, EVENTS)
    got = attribution._tally.trail_known(list(names), c_meta, vecs, *args)
    want = attribution._known_py(list(names), py_meta, vecs, *args)
    assert got == want
    assert c_meta.tobytes() == py_meta.tobytes()


def test_known_value_added_in_place_new_one_left_for_count() -> None:
    """A known value's events are added to its row (times the scale); a value of the same
    name under another field, or one with counters of its own, is left for _count."""
    names = ["v1", "v2"]
    for known in (attribution._tally.trail_known, attribution._known_py):
        meta = array("f", [1, 0, 10.0, 2, 0, 0.0])
        vecs = {1: array("f", [0.0] * 4)}
        slow = known(list(names), meta, vecs,
                     {1: {"v1": {}}, 2: {"v2": {EVENTS: 2}, "v1": {}}, 3: {UNKNOWN: {}}},
                     [5, 0, 0], 2.0, FIELDS, TOOL, UNKNOWN, EVENTS)
        assert list(meta) == [1, 0, 20.0, 2, 0, 0.0]   # v1 of field 1: 5 events x 2
        assert slow == [(2, "v2", {EVENTS: 2}, 2, None),   # its own counters (a vec)
                        (2, "v1", None, 3, {"v2": {EVENTS: 2}, "v1": {}})]   # field 1's name


def test_partial_of_another_shape_left_to_python() -> None:
    """Input not of a partial's shape: C changes nothing and returns None (the Python twin
    then runs and says what is wrong)."""
    meta = array("f", [1, 0, 10.0])
    for values in ({1: ["v1"]}, {"1": {"v1": {}}}, {1: {"v1": {EVENTS: 1.5}}},
                   {1: {"v1": {EVENTS: 10**30}}}):
        assert attribution._tally.trail_known(
            ["v1"], meta, None, values, [5], 1.0, FIELDS, TOOL, UNKNOWN, EVENTS) is None
        assert list(meta) == [1, 0, 10.0]
    with pytest.raises(AttributeError):
        attribution._known_py(["v1"], meta, None, {1: ["v1"]}, [5], 1.0, FIELDS, TOOL,
                              UNKNOWN, EVENTS)
