"""The rate baseline's C twin (baselines/_rate.c) against the Python reference it accelerates
(``baselines.rate.RateBaseline``, river's sums inside): the same floats, bit for bit, for any
sequence of windows, scores, adoptions and freezes, and the same state when converted back
(what snapshots write)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines import codec
from baselines.rate import TWIN, WITH_DATA, RateBaseline, as_reference, as_twin, new_rate
from baselines.sequential import ZEROS, Cusum
from detector.core.scoring import with_data_py
from tests.bits import same


def test_the_twin_is_built_here() -> None:
    # `make test` compiles it: the comparisons below must not compare Python with itself.
    assert TWIN is not None, "baselines._rate did not build; see setup.py"


counts = st.one_of(st.integers(0, 3), st.integers(0, 60), st.integers(0, 5000))
op = st.one_of(
    st.tuples(st.just("learn"), counts, st.integers(-1, 5000), st.booleans(), st.booleans()),
    st.tuples(st.just("window"), counts, st.integers(1, 5000), st.booleans(),
              st.integers(0, 20)),
    st.tuples(st.just("rebase"), st.floats(0, 50), st.floats(0.5, 5000)),
    st.tuples(st.just("score"), st.one_of(counts, st.floats(0, 500)), st.integers(0, 5000)),
)


def _cusums() -> list[Cusum]:
    busy = Cusum()
    busy.set([3.0, 1.5, 0.0, 7.25], 2.0)
    near = Cusum()   # within a window of confirming either way at 15.06 nats (5 units)
    near.set([14.0, 15.5, 12.0, 0.0], 14.5)
    return [Cusum(), busy, near]


def _observe(b: object, k: float, n: float) -> tuple:
    return (b.score_one(k, n), b.drift_score(k, n), b.reference(), b.reference(up=False),  # type: ignore[attr-defined]
            b.expected(), b.expected(True), b.dispersion(), b.n,  # type: ignore[attr-defined]
            [b.peek_up(c, k, n, cap) for c in _cusums() for cap in (1.0, 7.5)],  # type: ignore[attr-defined]
            [b.sequential(c, k, n, h, d)  # type: ignore[attr-defined]
             for c in (None, *_cusums()) for h in (3.0, 15.06) for d in ("up", "down", "both")])


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
        assert same(_observe(twin, k, n), _observe(ref, k, n)), o
        assert same(twin.state(), as_twin(ref).state())
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
            assert same(_observe(twin, 9, 100), _observe(ref, 9, 100))


def test_new_rate_is_the_twin_when_built() -> None:
    assert type(new_rate(0.1, 0.01, 25.0, 90)) is TWIN


@pytest.mark.parametrize("bad", [("x", 1), (1.0,), (1, 2, 3)])
def test_bad_arguments_are_type_errors_not_crashes(bad: tuple) -> None:
    with pytest.raises(TypeError):
        TWIN(0.1, 0.01).score_one(*bad)
    with pytest.raises((TypeError, ValueError)):
        TWIN(0.1, 0.01).set_state(bad)
    assert math.isfinite(TWIN(0.1, 0.01).expected())


# -- the scorer's plain rate windows (learn_plain) -------------------------------------------
def _rates() -> tuple:
    from detector.config import load_config
    from detector.core.scoring import Scorer
    return Scorer(load_config(None, env=False))._rates


RATES = _rates()


@st.composite
def cohort_window(draw: st.DrawFn) -> tuple:
    """A cohort's state and one window of its counts, with some signals decided."""
    names = [s.name for s in RATES]
    size = 1 + max(max(s.num, s.den) for s in RATES)
    w = draw(st.integers(5, 9))
    counts = draw(st.lists(st.integers(0, 40), min_size=size, max_size=size))
    some = st.lists(st.sampled_from(names), unique=True, max_size=len(names))
    recent = {n: [(w - draw(st.integers(1, 3)), 1, 2, 0.0)] * draw(st.integers(1, 2))
              for n in draw(some)}
    persist = {n: draw(st.integers(1, 4)) for n in draw(some)}
    episodes = {n: [float(w - 9), float(w - draw(st.integers(1, 9))), 2.0, 1.0, 3.0, 0.0]
                for n in draw(some)}
    learned = {n: draw(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 60)),
                                max_size=30)) for n in draw(some)}
    decided = sorted(draw(some), key=names.index)
    return w, counts, recent, persist, episodes, learned, decided


@settings(max_examples=200, deadline=None)
@given(st.lists(cohort_window(), min_size=1, max_size=4), st.integers(0, 12))
def test_learn_plain_is_the_python_steps(windows: list[tuple], warmup: int) -> None:
    """baselines/_rate.c's learn_plain against scoring.learn_plain_py: the same recent
    windows, persistence and episodes left, and the same baselines, bit for bit."""
    import copy

    from baselines.rate import PLAIN
    from detector.core.scoring import Decision, learn_plain_py
    assert PLAIN is not None
    for w, counts, recent, persist, episodes, learned, decided in windows:
        ref_b: dict = {}
        twin_b: dict = {}
        for name, xs in learned.items():
            ref_b[name] = RateBaseline(0.1, 0.01, 25.0, 3)
            for k, n in xs:
                ref_b[name].learn_one(k, n)
            twin_b[name] = as_twin(ref_b[name])
        decisions = [Decision(n, 1.0, 0.0, None, 4.0, False, 3) for n in decided]
        ref = (copy.deepcopy(recent), copy.deepcopy(persist), copy.deepcopy(episodes))
        got = (copy.deepcopy(recent), copy.deepcopy(persist), copy.deepcopy(episodes))
        learn_plain_py(RATES, decisions, counts, *ref, ref_b, w, warmup, 2.0, 3,
                       lambda sig: RateBaseline(0.1, 0.01, 25.0, 3))
        PLAIN(RATES, decisions, counts, *got, twin_b, w, warmup, 2.0, 3,
              lambda sig: TWIN(0.1, 0.01, 25.0, 3))
        assert got == ref
        assert sorted(twin_b) == sorted(ref_b)
        for name, b in ref_b.items():
            assert type(twin_b[name]) is TWIN
            assert same(twin_b[name].state(), as_twin(b).state()), name
        # The twin's learn_plain on reference baselines (a snapshot loaded without the
        # twin) calls their own learn_window: the same again.
        again = {n: codec.loads(codec.dumps(b)) for n, b in ref_b.items()}
        PLAIN(RATES, decisions, counts, {}, {}, {}, again, w, warmup, 2.0, 3, None)
        learn_plain_py(RATES, decisions, counts, {}, {}, {}, ref_b, w, warmup, 2.0, 3, None)
        assert all(codec.dumps(again[n]) == codec.dumps(ref_b[n]) for n in ref_b)


def test_learn_plain_says_what_is_wrong() -> None:
    from baselines.rate import PLAIN
    with pytest.raises(TypeError, match="unexpected argument types"):
        PLAIN(RATES, [], "counts", {}, {}, {}, {}, 5, 3, 2.0, 3, None)
    with pytest.raises(IndexError, match="outside the counts"):
        PLAIN(RATES, [], [1, 2], {}, {}, {}, {}, 5, 3, 2.0, 3, None)


def test_peek_up_without_evidence_is_the_shared_zeros() -> None:
    """No design gains on an idle statistic: the shared ZEROS, which is never kept as a
    statistic's own list (Cusum.set copies), from the twin as from the reference."""
    assert TWIN(0.1, 0.01).peek_up(Cusum(), 0, 100, 5.0) is ZEROS
    assert RateBaseline(0.1, 0.01).peek_up(Cusum(), 0, 100, 5.0) is ZEROS


def test_copies_and_pickles_keep_the_state() -> None:
    """copy.deepcopy and pickle go through the state (a C object would otherwise copy as
    zeros or not at all)."""
    import copy
    import pickle
    b = TWIN(0.1, 0.01, 25.0, 5)
    for i in range(30):
        b.learn_one(i % 4, 90 + i)
    for c in (copy.deepcopy(b), copy.copy(b), pickle.loads(pickle.dumps(b))):
        assert type(c) is TWIN and c is not b
        assert same(c.state(), b.state())
        c.learn_one(3, 100)
        assert c.n == b.n + 1   # its own state, not b's


# -- a rate window's decision (decide) ------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 400)), max_size=40),
       st.integers(0, 80), st.integers(1, 500), st.sampled_from([2.5, 4.0, 5.0, 0.5]),
       st.one_of(st.none(), st.lists(st.tuples(st.integers(5, 11), st.integers(0, 90),
                                               st.integers(1, 400)), max_size=3)),
       st.booleans(), st.sampled_from(["up", "down", "both"]), st.sampled_from([0, 3, 10.5]))
def test_decide_is_the_python_decision(learned: list[tuple[int, int]], k: int, n: int,
                                       t: float, prev: list | None, drift: bool, d: str,
                                       min_count: float) -> None:
    """baselines/_rate.c's decide against scoring.decide_rate_py: the same score, horizon,
    hit and fast score, bit for bit, with and without recent windows (consecutive or not)
    and the two-horizon test."""
    from detector.core.scoring import decide_rate_py
    ref = RateBaseline(0.1, 0.01, 25.0, 3)
    for i, (kk, nn) in enumerate(learned):
        ref.learn_one(kk, nn, slow=i % 5 != 4)
    twin = as_twin(ref)
    recent = None if prev is None else [(w, x, y, 0.0) for w, x, y in sorted(prev)]
    args = (k, n, t, recent, 12, drift, d, min_count)
    want = decide_rate_py(ref, *args)
    assert same(TWIN.decide(twin, *args), want)
    assert same(decide_rate_py(twin, *args), want)   # the reference on the twin's scores


def test_decide_says_what_is_wrong() -> None:
    b = TWIN(0.1, 0.01)
    with pytest.raises(TypeError):
        b.decide(1, 2, 3.0)
    with pytest.raises(TypeError, match="not a list"):
        b.decide(9, 10, 0.5, "recent", 5, False, "up", 0)
    with pytest.raises(TypeError, match="not a tuple"):
        b.decide(9, 10, 0.5, [7], 5, False, "up", 0)


def test_sequential_steps_as_the_reference_through_confirmations() -> None:
    """The scorer's sequential step (RateBaseline.sequential and its twin), window after
    window on one statistic as the scorer keeps it: rises and falls that confirm, restart
    half-way and drain, in every direction; the same floats and the same decisions."""
    for d in ("up", "down", "both"):
        ref, twin = RateBaseline(0.1, 0.01), TWIN(0.1, 0.01)
        for _ in range(30):
            ref.learn_one(5, 1000)
            twin.learn_one(5, 1000)
        kept: dict[str, tuple[list[float], float] | None] = {"ref": None, "twin": None}
        confirmed = 0
        for k in [5, 40, 60, 80, 5, 5, 0, 0, 0, 0, 0, 0, 0, 0, 5, 90, 90, 5] * 3:
            got = []
            for name, b in (("ref", ref), ("twin", twin)):
                st_ = kept[name]
                cus = None
                if st_ is not None:
                    cus = Cusum()
                    cus.set(*st_)
                r = b.sequential(cus, k, 1000, 15.06, d)
                got.append(r)
                if r is not None:
                    kept[name] = (list(r[2]), r[3])
            assert same(got[0], got[1]), (d, k)
            confirmed += got[0] is not None and got[0][1]
        assert confirmed >= 1, d   # the walk above confirms a shift in every direction


def test_sequential_says_what_is_wrong() -> None:
    b = TWIN(0.1, 0.01)
    with pytest.raises(TypeError):
        b.sequential(None, 1, 2, 3.0)
    with pytest.raises(TypeError):
        b.sequential(None, 1, 2, 3.0, None)
    with pytest.raises(TypeError):
        b.sequential(None, "1", 2, 3.0, "up")
    odd = Cusum()
    odd._ups = [1.0]
    with pytest.raises(ValueError):
        b.sequential(odd, 1, 2, 3.0, "up")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(-2, 3), st.just(10**30), st.just(-(10**30))),
                min_size=6, max_size=6),
       st.lists(st.tuples(st.integers(-1, 5), st.integers(0, 5), st.booleans()), max_size=12),
       st.dictionaries(st.sampled_from("abc"), st.booleans()))
def test_with_data_picks_what_the_python_picks(c: list[int], entries: list[tuple],
                                               held: dict[str, bool]) -> None:
    """The scorer's pick of the signals with something to score in a window (with_data in
    baselines/_rate.c) against with_data_py: no data, or an upward signal without events
    and without evidence left to drain, is left out; order and identity kept."""
    seq = {}
    for name, busy in held.items():
        cus = seq[name] = Cusum()
        if busy:
            cus.set([0.0, 2.0, 0.0, 0.0], 0.0)
    table = tuple((object(), "abc"[i % 3], at_n, at_k, up)
                  for i, (at_n, at_k, up) in enumerate(entries))
    got = WITH_DATA(table, c, seq)
    want = with_data_py(table, c, seq)
    assert len(got) == len(want) and all(a is b for a, b in zip(got, want, strict=True))


def test_with_data_says_what_is_wrong() -> None:
    with pytest.raises(TypeError):
        WITH_DATA((), [0], None)
    with pytest.raises(TypeError):
        WITH_DATA(((1, "a", 0),), [0], {})
    with pytest.raises(IndexError):
        WITH_DATA(((1, "a", 3, 0, True),), [1], {})
