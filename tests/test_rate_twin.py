"""The rate baseline's C twin (baselines/_rate.c) against the Python reference it accelerates
(``baselines.rate.RateBaseline``, river's sums inside): the same floats, bit for bit, for any
sequence of windows, scores, adoptions and freezes, and the same state when converted back
(what snapshots write)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines import codec
from baselines.rate import TWIN, RateBaseline, as_reference, as_twin, new_rate


def test_the_twin_is_built_here() -> None:
    # `make test` compiles it: the comparisons below must not compare Python with itself.
    assert TWIN is not None, "baselines._rate did not build; see setup.py"


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _same(a: object, b: object) -> bool:
    """Equal, floats compared by their bits (so -0.0 and 0.0, or two NaNs, are told apart)."""
    if isinstance(a, float) and isinstance(b, float):
        return _bits(a) == _bits(b)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


counts = st.one_of(st.integers(0, 3), st.integers(0, 60), st.integers(0, 5000))
op = st.one_of(
    st.tuples(st.just("learn"), counts, st.integers(-1, 5000), st.booleans(), st.booleans()),
    st.tuples(st.just("window"), counts, st.integers(1, 5000), st.booleans(),
              st.integers(0, 20)),
    st.tuples(st.just("rebase"), st.floats(0, 50), st.floats(0.5, 5000)),
    st.tuples(st.just("score"), st.one_of(counts, st.floats(0, 500)), st.integers(0, 5000)),
)


def _observe(b: object, k: float, n: float) -> tuple:
    return (b.score_one(k, n), b.drift_score(k, n), b.reference(), b.reference(up=False),  # type: ignore[attr-defined]
            b.expected(), b.expected(True), b.dispersion(), b.n)  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.lists(op, min_size=1, max_size=150),
       st.sampled_from([(0.5, 0.1), (0.1, 0.01), (0.0231, 0.00096)]),
       st.sampled_from([25.0, 4.0]), st.integers(1, 12))
def test_the_twin_gives_the_references_floats(ops: list[tuple], ff: tuple[float, float],
                                              cap: float, adopt: int) -> None:
    ref = RateBaseline(ff[0], ff[1], cap, adopt)
    twin = TWIN(ff[0], ff[1], cap, adopt)
    for o in ops:
        if o[0] == "learn":
            _, k, n, slow, anomalous = o
            ref.learn_one(k, n, slow, anomalous=anomalous)
            twin.learn_one(k, n, slow, anomalous=anomalous)
        elif o[0] == "window":
            _, k, n, check, warmup = o
            ref.learn_window(k, n, check, warmup, 2.0)
            twin.learn_window(k, n, check, warmup, 2.0)
        elif o[0] == "rebase":
            ref.rebase(o[1], o[2])
            twin.rebase(o[1], o[2])
        k, n = (o[1], o[2]) if o[0] == "score" else (o[1], max(o[2], 1))
        assert _same(_observe(twin, k, n), _observe(ref, k, n)), o
        assert _same(twin.state(), as_twin(ref).state())
    # Back to the reference (what a snapshot writes): the same bytes as the reference's own.
    assert codec.dumps(as_reference(twin)) == codec.dumps(ref)
    assert codec.dumps(twin) == codec.dumps(ref)


def test_a_snapshot_loads_into_the_twin_and_goes_on_alike() -> None:
    """Reference state (as snapshots hold it) converted into the twin learns on alike: the
    conversion loses nothing, in the Mean phase and after the hand-over."""
    for windows in (3, 400):
        ref = RateBaseline(0.1, 0.01)
        for i in range(windows):
            ref.learn_one(i % 7, 100 + i)
        twin = as_twin(codec.loads(codec.dumps(ref)))
        assert type(twin) is TWIN
        for i in range(50):
            ref.learn_window(3 + i % 11, 120, True, 5, 2.0)
            twin.learn_window(3 + i % 11, 120, True, 5, 2.0)
            assert _same(_observe(twin, 9, 100), _observe(ref, 9, 100))


def test_new_rate_is_the_twin_when_built() -> None:
    assert type(new_rate(0.1, 0.01, 25.0, 90)) is TWIN


@pytest.mark.parametrize("bad", [("x", 1), (1.0,), (1, 2, 3)])
def test_bad_arguments_are_type_errors_not_crashes(bad: tuple) -> None:
    with pytest.raises(TypeError):
        TWIN(0.1, 0.01).score_one(*bad)
    with pytest.raises((TypeError, ValueError)):
        TWIN(0.1, 0.01).set_state(bad)
    assert math.isfinite(TWIN(0.1, 0.01).expected())
