"""A quantity's cycle period found from its own history (baselines/period.py) and used by its
baseline: found where there is a cycle, to a fraction of a window; not found where there is
none; small, serializable, and off when the config says so."""

from __future__ import annotations

import math
import random
import tracemalloc
from array import array

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines import codec, fading_factor
from baselines.period import PeriodFinder, _detrended
from baselines.quantity import QuantityBaseline, as_reference
from detector.config import load_config
from detector.core.scoring import Scorer
from detector.core.signals import layout_of
from tests.bits import same

STEP = 60.0
FAST, SLOW = fading_factor(30), fading_factor(720)


def _cycle(period: float, n: int, seed: int, noise: float = 0.3) -> list[float]:
    rng = random.Random(seed)
    return [math.sin(2 * math.pi * i / period) + rng.gauss(0, noise) for i in range(n)]


def _found(xs: list[float], times: list[float] | None = None) -> list[float]:
    f = PeriodFinder(STEP)
    out = []
    for i, x in enumerate(xs):
        got = f.learn(x, times[i] if times else STEP * i)
        if got:
            out.append(got[0] / STEP)
    return out


@pytest.mark.parametrize("period", [24.0, 48.0, 288.0, 333.3])
def test_a_cycle_is_found_and_tracked_to_a_fraction_of_a_window(period: float) -> None:
    got = _found(_cycle(period, int(period * 25), seed=int(period)))
    assert got, "no period found"
    assert abs(got[0] - period) <= max(0.02 * period, 1.5)   # the ring's first estimate
    assert abs(got[-1] - period) <= 0.25                  # tracked over the cycles since


def test_a_cycle_is_found_after_two_to_four_cycles() -> None:
    """Two whole cycles at least, and two looks in a row that agree."""
    f = PeriodFinder(STEP)
    first = next(i for i, x in enumerate(_cycle(288, 3000, seed=2)) if f.learn(x, STEP * i))
    assert 2 * 288 <= first <= 4 * 288


def test_windows_without_data_do_not_break_it() -> None:
    rng = random.Random(4)
    keep = [i for i in range(8000) if rng.random() < 0.7]
    xs = _cycle(288, 8000, seed=4)
    got = _found([xs[i] for i in keep], [STEP * i for i in keep])
    assert got and abs(got[-1] - 288) <= 0.5


def _walk(n: int, rng: random.Random) -> list[float]:
    out = [0.0]
    for _ in range(n - 1):
        out.append(out[-1] + rng.gauss(0, 1))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_no_period_where_there_is_no_cycle(seed: int) -> None:
    """Noise, random walks, ramps, a level step, a single burst and heavy tails: nothing."""
    rng = random.Random(seed)
    n = 5000
    shapes = {
        "noise": [rng.gauss(0, 1) for _ in range(n)],
        "walk": _walk(n, rng),
        "ramp": [i / n + rng.gauss(0, 0.1) for i in range(n)],
        "step": [(1.0 if i > n // 3 else 0.0) + rng.gauss(0, 0.2) for i in range(n)],
        "burst": [(5.0 if 1000 <= i < 1040 else 0.0) + rng.gauss(0, 0.2) for i in range(n)],
        "heavy": [rng.paretovariate(1.5) for _ in range(n)],
    }
    found = {name: _found(xs) for name, xs in shapes.items()}
    assert {name: got for name, got in found.items() if got} == {}


def _drive(b: QuantityBaseline, xs: list[float]) -> list[float]:
    """Each value as a window of one, scored then learned (anomalous at |z| >= 5)."""
    z = []
    for i, x in enumerate(xs):
        t = STEP * i
        zf, zs = b.score_one(1, x, x * x, t)
        big = max(abs(zf), abs(zs))
        z.append(big)
        b.learn_one(1, x, x * x, anomalous=big >= 5 and b.n >= 20, t=t)
    return z


def test_the_baseline_uses_a_cycle_that_is_not_a_day() -> None:
    """A 300-window cycle of +-10 noise sd: with the period found, the baseline expects it
    (normal windows score well under half what they do against the configured day, whose
    profile does not fit it), and a step of one and a half times its amplitude is still news."""
    rng = random.Random(7)
    xs = [10.0 + 1.0 * math.sin(2 * math.pi * i / 300) + rng.gauss(0, 0.1) for i in range(4000)]
    xs[3500:3520] = [x + 1.5 for x in xs[3500:3520]]
    found = QuantityBaseline(FAST, SLOW, 90, 24, 86400.0, STEP)
    fixed = QuantityBaseline(FAST, SLOW, 90, 24, 86400.0, None)
    zf, zx = _drive(found, xs), _drive(fixed, xs)
    assert abs(found.period() / STEP - 300) < 1 and fixed.period() == 86400.0
    assert found.seasonal() and not fixed.seasonal()
    quiet = range(1500, 3500)
    assert sum(zf[i] for i in quiet) < 0.5 * sum(zx[i] for i in quiet)
    assert max(zf[3500:3503]) >= 5                           # the step still is news


def test_a_period_near_the_configured_one_is_the_configured_one() -> None:
    """A cycle found within 5 % of season_period_seconds is that period (and its phase), so
    a daily cycle keeps the time-of-day bins the config describes."""
    b = QuantityBaseline(FAST, SLOW, 90, 24, 86400.0, STEP)
    for i, x in enumerate(_cycle(1420, 6000, seed=3, noise=0.1)):
        b.learn_one(1, x, x * x, t=STEP * i)
    assert b.period() == 86400.0


def test_state_round_trips_and_stays_small() -> None:
    """With its ring full, and later tracking, a quantity baseline's state is as small as the
    issue asks, and a reloaded one scores exactly as the original."""
    xs = _cycle(288, 3000, seed=5)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    bs = [QuantityBaseline(FAST, SLOW, 90, 24, 86400.0, STEP) for _ in range(50)]
    for b in bs:
        for i, x in enumerate(xs[:500]):         # the ring full, no period yet
            b.learn_one(1, x, x * x, t=STEP * i)
    resident = (tracemalloc.get_traced_memory()[0] - before) / len(bs)
    tracemalloc.stop()
    assert resident < 2048 and len(codec.dumps(bs[0])) < 1024
    b = bs[0]
    for i, x in enumerate(xs[500:], start=500):
        b.learn_one(1, x, x * x, t=STEP * i)
    assert b.period() != 86400.0 and len(codec.dumps(b)) < 1024
    c = codec.loads(codec.dumps(b))
    for i, x in enumerate(_cycle(288, 600, seed=6), start=3000):
        t = STEP * i
        assert c.score_one(1, x, x * x, t) == b.score_one(1, x, x * x, t)
        b.learn_one(1, x, x * x, t=t)
        c.learn_one(1, x, x * x, t=t)
    assert c.period() == b.period()


def test_the_config_can_turn_it_off() -> None:
    cfg = load_config(None)
    off = msgspec.structs.replace(cfg, baselines=msgspec.structs.replace(
        cfg.baselines, season_find_period=False))
    quantities = [s for s in layout_of(cfg).signals if s.kind == "quantity"]
    assert quantities
    for sig in quantities:
        # (As the reference: the scorer makes the C twin where it is built.)
        on_b, off_b = as_reference(Scorer(cfg)._new(sig)), as_reference(Scorer(off)._new(sig))
        assert isinstance(on_b, QuantityBaseline) and isinstance(off_b, QuantityBaseline)
        assert on_b._finder is not None and off_b._finder is None


def test_ranks_with_and_without_ties_are_average_ranks() -> None:
    """_ranks' shortcut for series without ties gives what the tie scan gives: each value's
    average rank (1-based, over the values equal to it) less the mean rank, in input order."""
    from baselines.period import _ranks

    rng = random.Random(7)
    for _ in range(200):
        k = rng.randint(1, 60)
        pool = [rng.gauss(0, 1) for _ in range(rng.randint(1, k))]
        v = [rng.choice(pool) for _ in range(k)] if rng.random() < 0.5 else pool
        mid = (len(v) + 1) / 2
        want = [(sum(x < y for x in v) + (sum(x == y for x in v) + 1) / 2) - mid for y in v]
        assert _ranks(v) == pytest.approx(want, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60))
def test_detrending_is_the_plain_least_squares_to_the_bit(values: list[float]) -> None:
    """_detrended (cached centred positions, map-based sums) gives what the plain generator
    expressions give, bit for bit: the finder's looks and folds must not change."""
    ring = array("d", values)
    k = len(ring)
    mx = (k - 1) / 2
    my = sum(ring) / k
    sxx = sum((j - mx) ** 2 for j in range(k))
    slope = sum((j - mx) * (v - my) for j, v in enumerate(ring)) / sxx
    want = [v - my - slope * (j - mx) for j, v in enumerate(ring)]
    assert same(_detrended(ring), want)
    assert same(_detrended(ring), want)   # (and again, from the cache)
