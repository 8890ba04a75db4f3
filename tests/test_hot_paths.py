"""Stage 2's hot paths against their plain definitions: the fast forms must give the same
numbers bit for bit (replay output is compared byte for byte by bench/replay_identical.py)."""

from __future__ import annotations

from math import log, sqrt

from hypothesis import given, settings
from hypothesis import strategies as st
from river import stats

from baselines.dispersion import Dispersion
from baselines.ewmean import WarmEWMean
from baselines.poisson import poisson_score
from baselines.rate import RateBaseline
from baselines.sequential import RHO_UP, RISE_MIN, Z_QUIET, ZEROS, Cusum

counts = st.integers(min_value=0, max_value=5000)
positive = st.floats(min_value=1e-6, max_value=1e4, allow_nan=False)


def _poisson_reference(k: float, mu: float) -> float:
    """poisson_score as it was written: the Wilson–Hilferty tail, clamped with max/min."""
    def z(k: float, mu: float) -> float:
        return 3.0 * sqrt(k) * (1.0 - 1.0 / (9.0 * k) - (mu / k) ** (1.0 / 3.0))
    mu = mu if mu > 0.0 else 1e-9
    if k >= mu:
        return max(0.0, z(k, mu)) if k > 0 else 0.0
    return min(0.0, z(k + 1.0, mu))


@given(counts, st.floats(min_value=-1.0, max_value=1e5, allow_nan=False))
def test_poisson_score_is_its_definition(k: int, mu: float) -> None:
    assert poisson_score(k, mu) == _poisson_reference(k, mu)


@given(st.lists(st.floats(min_value=-20, max_value=20), max_size=50),
       st.floats(min_value=1.0, max_value=50.0))
def test_dispersion_get_is_clamped_variance(zs: list[float], cap: float) -> None:
    d = Dispersion(0.05, cap)
    for z in zs:
        d.update(z)
    assert d.get() == min(cap, max(1.0, d._m2 - d._m1 * d._m1))


@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=60),
       st.sampled_from([0.5, 0.1, 0.023]))
def test_warm_ewmean_total_is_mean_times_weight(xs: list[float], ff: float) -> None:
    m = WarmEWMean(ff)
    for x in xs:
        m.update(x)
        assert m.total() == m.get() * m.weight()


class _RiverWarmEWMean:
    """WarmEWMean as it was written, through river's public methods only."""

    def __init__(self, ff: float) -> None:
        self.ff, self.mean, self.ew = ff, stats.Mean(), None

    def update(self, x: float) -> None:
        if self.ew is not None:
            self.ew.update(x)
            return
        self.mean.update(x)
        if self.mean.n * self.ff >= 1.0:
            self.ew = stats.EWMean(self.ff)
            self.ew.update(self.mean.get())

    def get(self) -> float:
        return self.ew.get() if self.ew is not None else self.mean.get()

    def total(self) -> float:
        if self.ew is not None:
            return self.ew.get() * (1.0 / self.ff)
        return self.mean.get() * self.mean.n


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=80),
       st.sampled_from([0.5, 0.1, 0.05, 0.023]))
def test_warm_ewmean_is_rivers_mean_then_ewmean(xs: list[float], ff: float) -> None:
    """WarmEWMean reaches river's state directly (no Python frame per call): it must give
    what river's public update/get give, bit for bit, before and after the hand-over."""
    m, ref = WarmEWMean(ff), _RiverWarmEWMean(ff)
    for x in xs:
        total = m.update(x)
        ref.update(x)
        assert (m.get(), m.total(), total) == (ref.get(), ref.total(), ref.total())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(counts, st.integers(min_value=1, max_value=5000), st.booleans(),
                          st.booleans()), min_size=1, max_size=40))
def test_rate_learning_keeps_its_derived_rates_current(windows: list[tuple[int, int, bool, bool]]
                                                       ) -> None:
    """The slow rate is recomputed only when its sums move: it must still equal what its
    sums say after any mix of normal, held-out (slow=False) and anomalous windows, and
    adoption after adopt_after held-out windows."""
    b = RateBaseline(0.1, 0.01, adopt_after=5)
    for k, n, slow, anomalous in windows:
        b.learn_one(min(k, n), n, slow=slow, anomalous=anomalous)
        assert b.expected() == RateBaseline._rate(b._fast)
        assert b.expected(slow=True) == RateBaseline._rate(b._slow)
        sd = sqrt(b._disp.get())
        assert b.dispersion() == sd * sd


def _peek_up_reference(ups: list[float], up: float, k: float, mu: float, disp: float,
                       cap: float) -> list[float] | tuple[float, ...]:
    if not up and k <= RISE_MIN * mu:
        return ZEROS
    return [max(0.0, s + min((k * log(r) - (r - 1.0) * mu) / disp, cap))
            for s, r in zip(ups, RHO_UP, strict=True)]


@given(st.lists(st.floats(min_value=0, max_value=30), min_size=4, max_size=4), counts,
       positive, st.floats(min_value=1.0, max_value=25.0), st.floats(min_value=0.5, max_value=20))
def test_peek_up_is_its_definition(ups: list[float], k: int, mu: float, disp: float,
                                   cap: float) -> None:
    c = Cusum()
    c.set(ups, 0.0)
    assert list(c.peek_up(k, mu, disp, cap)) == list(
        _peek_up_reference(ups, c.up, k, mu, disp, cap))


@given(counts, st.integers(min_value=1, max_value=5000))
def test_no_rise_below_rise_min_of_the_slow_rate(k: int, n: int) -> None:
    """The scorer skips the reference when k <= RISE_MIN * n * slow rate on an idle
    statistic: peek_up must then find no evidence against the reference either."""
    b = RateBaseline(0.1, 0.01)
    for i in range(40):
        b.learn_one(i % 7, 300, slow=i % 3 != 0)
    if k <= RISE_MIN * (n * b.expected(True)):
        assert Cusum().peek_up(k, n * b.reference(), b.dispersion(), 7.5) is ZEROS


@given(st.floats(min_value=-Z_QUIET, max_value=Z_QUIET), st.floats(min_value=1e-3, max_value=50))
def test_quiet_z_adds_nothing_to_an_idle_quantity_statistic(z: float, cap: float) -> None:
    """The scorer skips peek_z on an idle statistic for |z| <= Z_QUIET: it must give nothing."""
    assert Cusum().peek_z(z, cap) == (0.0, 0.0)
    assert Cusum().peek_z(Z_QUIET + 1e-9, cap)[0] > 0.0   # ...and the bound is tight


@given(st.lists(st.tuples(counts, st.integers(min_value=0, max_value=5000)), min_size=1,
                max_size=80),
       st.sampled_from([0.5, 0.1, 0.023, 0.00096]), st.integers(min_value=0, max_value=3))
def test_update_pair_is_two_warm_ewmean_updates(windows: list[tuple[int, int]], ff: float,
                                                 ahead: int) -> None:
    """A rate's horizon learns its two sums in one frame (_update_pair, river's state reached
    directly): the same totals and state as WarmEWMean.update on each, bit for bit, before,
    across and after the hand-over, and when the two sums are out of step (``ahead``)."""
    from baselines.rate import _update_pair
    num, den, ref_num, ref_den = (WarmEWMean(ff) for _ in range(4))
    for m in (den, ref_den):
        for _ in range(ahead):
            m.update(1.0)
    for k, n in windows:
        got = _update_pair((num, den), k, n)
        want = (ref_num.update(k), ref_den.update(n))
        assert got == want
        assert (num.get(), num.total(), den.get(), den.total()) == (
            ref_num.get(), ref_num.total(), ref_den.get(), ref_den.total())


@given(st.lists(st.floats(min_value=-20, max_value=20), min_size=1, max_size=50),
       st.floats(min_value=1.0, max_value=50.0))
def test_dispersion_update_get_is_update_then_get(zs: list[float], cap: float) -> None:
    d, ref = Dispersion(0.05, cap), Dispersion(0.05, cap)
    for z in zs:
        ref.update(z)
        assert d.update_get(z) == ref.get()
        assert (d._m1, d._m2) == (ref._m1, ref._m2)


@given(st.lists(st.tuples(counts, st.integers(min_value=1, max_value=5000)), min_size=1,
                max_size=60))
def test_drift_score_reads_the_fast_denominator_as_get_does(windows: list[tuple[int, int]]
                                                             ) -> None:
    """drift_score reads the fast denominator's mean inline: it must be get()'s, so the
    score is the one written with get() (before and after the hand-over)."""
    b = RateBaseline(0.1, 0.01)
    for k, n in windows:
        num, den = b._fast
        a = num.fading_factor
        d = 1.0 - a
        c = 1.0 + d
        mu = (d * den.get() / a + n) * b.expected(True) * c
        want = 0.0 if mu < 10.0 else poisson_score((d * num.get() / a + k) * c, mu) / b._sd
        assert b.drift_score(k, n) == want
        b.learn_one(min(k, n), n)


@given(st.lists(st.tuples(counts, st.integers(min_value=1, max_value=5000), st.booleans()),
                min_size=1, max_size=60))
def test_reference_reads_the_fast_sums_as_total_does(windows: list[tuple[int, int, bool]]
                                                      ) -> None:
    """reference() reads the fast sums inline: the same as written with total()."""
    b = RateBaseline(0.1, 0.01)
    for k, n, slow in windows:
        b.learn_one(min(k, n), n, slow=slow)
        num, den = b._fast
        tk, units = num.total(), den.total()
        ps = b.expected(True)
        up = max(ps, (tk - 2.0 * sqrt(tk)) / units if tk > 4.0 else 0.0)
        down = min(ps, (tk + 2.0 * sqrt(tk) + 1.0) / units) if units > 0 else ps
        assert (b.reference(), b.reference(up=False)) == (up, down)
