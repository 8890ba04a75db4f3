"""The quantity baseline's C twin (baselines/_quantity.c) against the Python reference it
accelerates (``baselines.quantity.QuantityBaseline``): the same floats, bit for bit, for any
sequence of windows, anomalies, rebases and scores, with and without time of day and a found
period, and the same state when converted back (what snapshots write)."""

from __future__ import annotations

import copy
import math
import pickle
import random
from array import array
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines import codec
from baselines.period import PeriodFinder
from baselines.quantity import TWIN, QuantityBaseline, as_reference, as_twin, new_quantity
from tests.bits import same


def test_the_twin_is_built_here() -> None:
    # `make test` compiles it: the comparisons below must not compare Python with itself.
    assert TWIN is not None, "baselines._quantity did not build; see setup.py"


def _pair(fast: float, slow: float, adopt: int, bins: int, period: float,
          step: float | None) -> tuple[QuantityBaseline, object]:
    ref = QuantityBaseline(fast, slow, adopt, bins, period, step)
    twin = TWIN(fast, slow, adopt, bins, period, PeriodFinder(step) if step else None)
    return ref, twin


def _call(f: Callable[..., object], *args: object, **kw: object) -> object:
    """What ``f`` gives, or the type of error it raises (a level that underflows makes the
    standard error zero: both divide by it)."""
    try:
        return f(*args, **kw)
    except (ArithmeticError, ValueError) as e:
        return type(e).__name__


def _observe(b: object, n: float, s: float, q: float, t: float | None) -> tuple:
    return (_call(b.score_one, n, s, q), _call(b.score_one, n, s, q, t),  # type: ignore[attr-defined]
            b.expected(), b.expected(True), _call(b.tail_dof), b.seasonal(),  # type: ignore[attr-defined]
            b.period(), b.n)  # type: ignore[attr-defined]


def _finder_state(f: PeriodFinder | None) -> tuple | None:
    if f is None:
        return None
    return tuple(list(v) if isinstance(v, list | array) else v
                 for v in (getattr(f, k) for k in PeriodFinder.__slots__))


def _state(b: object) -> tuple:
    """The whole state, the finder's too."""
    s = as_reference(b)
    return tuple(_finder_state(s._finder) if k == "_finder" else getattr(s, k)
                 for k in QuantityBaseline.__slots__)


means = st.one_of(st.floats(0, 10), st.floats(-50, 5000), st.sampled_from([0.0, 1.0, 7.5]))
window = st.tuples(st.integers(-1, 60), means, st.floats(0, 400), st.booleans())
op = st.one_of(st.tuples(st.just("learn"), window), st.tuples(st.just("rebase"), window),
               st.tuples(st.just("skip"), st.integers(1, 500)))


def _totals(w: tuple) -> tuple[float, float, float]:
    """(n, sum, sum of squares) of n values around mean m with spread sd."""
    n, m, sd, _ = w
    return float(n), n * m, n * (m * m + sd * sd)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, min_size=1, max_size=200),
       st.sampled_from([(0.5, 0.1), (0.1, 0.01), (0.0231, 0.00096)]), st.integers(1, 12),
       st.sampled_from([(24, 86400.0, 60.0), (24, 86400.0, None), (4, 3600.0, 60.0),
                        (6, 1800.0, 600.0)]), st.booleans())
def test_the_twin_gives_the_references_floats(ops: list[tuple], ff: tuple[float, float],
                                              adopt: int, cycle: tuple, timed: bool) -> None:
    ref, twin = _pair(ff[0], ff[1], adopt, *cycle)
    t = 0.0
    for o in ops:
        if o[0] == "skip":
            t += 60.0 * o[1]
            continue
        n, s, q = _totals(o[1])
        at = t if timed else None
        if o[0] == "learn":
            got = _call(ref.learn_one, n, s, q, anomalous=o[1][3], t=at)
            assert same(_call(twin.learn_one, n, s, q, anomalous=o[1][3], t=at), got)  # type: ignore[attr-defined]
            if got is not None:
                return   # both raised alike (their states part way are not compared)
        else:
            ref.rebase(n, s, q)
            twin.rebase(n, s, q)  # type: ignore[attr-defined]
        t += 60.0
        probe = (max(n, 1.0), s + 1.0, q + 3.0, t)
        assert same(_observe(twin, *probe), _observe(ref, *probe)), o
        assert same(_state(twin), _state(ref))
    # Back to the reference (what a snapshot writes): the same bytes as the reference's own.
    assert codec.dumps(as_reference(twin)) == codec.dumps(ref)
    assert codec.dumps(twin) == codec.dumps(ref)


def _cycle(i: int, rng: random.Random, heavy: bool) -> tuple[float, float, float]:
    """A window of a daily-ish cycle of 288 windows, heavy-tailed now and then."""
    m = 300 + 120 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 15)
    if heavy and rng.random() < 0.03:
        m *= 4
    n = rng.randint(1, 40)
    return float(n), n * m, n * (m * m + 900.0)


@pytest.mark.parametrize("heavy", [False, True])
def test_a_found_period_tails_and_adoption_give_the_same_floats(heavy: bool) -> None:
    """Long runs the random sequences above do not reach: the finder finds (and refines) a
    period, the profile is rebuilt from its fold, the tail estimate calibrates the scores,
    and a persisting shift is adopted."""
    rng = random.Random(5 if heavy else 3)
    ref, twin = _pair(0.0231, 0.00096, 90, 24, 86400.0, 60.0)
    for i in range(4000):
        n, s, q = _cycle(i, rng, heavy)
        if i > 3000:
            s *= 1.6   # a shift that persists
        t = 60.0 * i
        zr, zt = ref.score_one(n, s, q, t), twin.score_one(n, s, q, t)  # type: ignore[attr-defined]
        assert same(zt, zr), i
        bad = max(map(abs, zr)) >= 5
        ref.learn_one(n, s, q, anomalous=bad, t=t)
        twin.learn_one(n, s, q, bad, t)  # type: ignore[attr-defined]
    assert ref.period() != 86400.0 and ref.seasonal()
    assert not heavy or ref.tail_dof() < math.inf
    assert same(_state(twin), _state(ref))
    assert codec.dumps(twin) == codec.dumps(ref)


def test_a_snapshot_loads_into_the_twin_and_goes_on_alike() -> None:
    """Reference state (as snapshots hold it) converted into the twin learns on alike, and the
    twin's copies (deepcopy, pickle) carry its whole state and a finder of their own."""
    rng = random.Random(9)
    ref = QuantityBaseline(0.0231, 0.00096, 90, 24, 86400.0, 60.0)
    for i in range(1500):
        n, s, q = _cycle(i, rng, False)
        ref.learn_one(n, s, q, t=60.0 * i)
    twin = as_twin(codec.loads(codec.dumps(ref)))
    assert type(twin) is TWIN
    copies = [copy.deepcopy(twin), pickle.loads(pickle.dumps(twin))]
    assert all(c.state()[26] is not twin.state()[26] for c in copies)
    for i in range(1500, 2500):
        n, s, q = _cycle(i, rng, False)
        t = 60.0 * i
        for b in (ref, twin, *copies):
            b.learn_one(n, s, q, t=t)
        want = ref.score_one(n, s, q, t)
        assert all(same(b.score_one(n, s, q, t), want) for b in (twin, *copies))
    assert codec.dumps(twin) == codec.dumps(ref)


def test_new_quantity_is_the_twin_when_built() -> None:
    b = new_quantity(0.1, 0.01, 90, 24, 86400.0, 60.0)
    assert type(b) is TWIN and as_reference(b)._finder is not None
    assert as_reference(new_quantity(0.1, 0.01, 90, 24, 86400.0, None))._finder is None


@pytest.mark.parametrize("bad", [("x", 1, 1), (1.0,), (1, 2, 3, "t"), (1, 2, 3, 4, 5)])
def test_bad_arguments_are_type_errors_not_crashes(bad: tuple) -> None:
    with pytest.raises(TypeError):
        TWIN(0.1, 0.01).score_one(*bad)
    with pytest.raises((TypeError, ValueError)):
        TWIN(0.1, 0.01).set_state(bad)
    assert math.isfinite(TWIN(0.1, 0.01).expected())


@pytest.mark.parametrize(("args", "kw"), [(("x", 1, 1), {}), ((1.0,), {}),
                                          ((1, 2, 3), {"t": "x"}), ((1, 2, 3, False, 5, 6), {}),
                                          ((1, 2, 3), {"slow": True}),
                                          ((1, 2, 3, False), {"anomalous": True})])
def test_bad_learn_arguments_are_type_errors_and_learn_nothing(args: tuple, kw: dict) -> None:
    b = TWIN(0.1, 0.01)
    with pytest.raises(TypeError):
        b.learn_one(*args, **kw)
    assert b.n == 0


def test_the_errors_python_raises_are_raised_not_read_past() -> None:
    """A profile index out of range (a state whose profile is shorter than its bins), as the
    reference's array indexing raises, and a zero period's modulo."""
    ref = QuantityBaseline(0.1, 0.01, 90, 24, 86400.0, None)
    ref._season = ref._season[:3]
    twin = as_twin(ref)
    for b in (ref, twin):
        b.learn_one(5, 10.0, 30.0, t=0.0)
        with pytest.raises(IndexError):
            b.learn_one(5, 10.0, 30.0, t=43200.0)
    zero = as_twin(QuantityBaseline(0.1, 0.01, 90, 24, 86400.0, None))
    st_ = list(zero.state())
    st_[14] = 0.0
    zero.set_state(tuple(st_))
    with pytest.raises(ZeroDivisionError):
        zero.learn_one(5, 10.0, 30.0, t=60.0)


class _Finder(PeriodFinder):
    """A finder type of its own: the twin has no fast path for it."""

    __slots__ = ()


def test_the_finders_common_step_is_taken_without_a_call(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Before a period is found, a value is added to the finder's blocks on its slots (the
    ended blocks pushed), with the same result as its learn; only the pushes that make a
    look or a halving, and a found period's tracking, call learn. A finder type the twin
    does not know gets every call."""
    calls = {"ref": 0, "fast": 0, "slow": 0}
    learn = PeriodFinder.learn
    rng = random.Random(2)
    ref = QuantityBaseline(0.0231, 0.00096, 90, 24, 86400.0, 60.0)
    fast = TWIN(0.0231, 0.00096, 90, 24, 86400.0, PeriodFinder(60.0))
    slow = TWIN(0.0231, 0.00096, 90, 24, 86400.0, _Finder(60.0))
    whose = {id(ref._finder): "ref", id(fast.state()[26]): "fast", id(slow.state()[26]): "slow"}

    def counting(self: PeriodFinder, x: float, t: float) -> tuple[float, float] | None:
        calls[whose[id(self)]] += 1
        return learn(self, x, t)

    monkeypatch.setattr(PeriodFinder, "learn", counting)
    for i in range(3000):
        n, s, q = _cycle(i, rng, False)
        for b in (ref, fast, slow):
            b.learn_one(n, s, q, t=60.0 * i)
        if i == 999:   # before a period is found: calls only to look and to halve
            assert calls["ref"] == calls["slow"] == 1000 and calls["fast"] < 50
    assert ref.period() != 86400.0   # the finder found a period (its other paths ran too)
    assert same(_state(fast), _state(ref))
    assert same(_state(slow), _state(ref))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-200, 200).map(lambda i: i / 2), max_size=60), st.integers(-1, 70))
def test_the_finders_lag_sums_are_pythons_bit_for_bit(x: list[float], top: int) -> None:
    """The period finder's autocorrelation sums (lag_sums in baselines/_quantity.c) against
    their reference, on what the finder sums: ranks less their mean, multiples of 0.5 (so
    every sum is exact, however the builtin sum adds: Python 3.12 compensates), every lag up
    to past the end."""
    from baselines import period
    assert period._lag_sums is not period._lag_sums_py   # (the twin was built)
    assert same(period._lag_sums(x, top), period._lag_sums_py(x, top))


def test_lag_sums_says_what_is_wrong() -> None:
    from baselines import period
    with pytest.raises(TypeError):
        period._lag_sums([1.0, 2], 1)
    with pytest.raises(TypeError):
        period._lag_sums((1.0, 2.0), 1)
