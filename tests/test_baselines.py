from __future__ import annotations

import math
import pickle
import random
from statistics import NormalDist

import pytest

from baselines import codec, fading_factor
from baselines.ewmean import WarmEWMean
from baselines.poisson import poisson_score
from baselines.quantity import QuantityBaseline
from baselines.rate import RateBaseline
from baselines.volume import _CLIP_AFTER, _CLIP_SD, _SEASON_RATE, VolumeBaseline


def _exact_upper(k: int, mu: float) -> float:
    """z of the exact Poisson tail P(X >= k)."""
    below = sum(math.exp(-mu) * mu**i / math.factorial(i) for i in range(k))
    return NormalDist().inv_cdf(1 - max(1e-15, 1 - below))


@pytest.mark.parametrize(("k", "mu"), [(3, 0.5), (5, 1.0), (10, 3.0), (30, 12.0), (80, 50.0)])
def test_poisson_score_tracks_the_exact_tail(k: int, mu: float) -> None:
    assert poisson_score(k, mu) == pytest.approx(_exact_upper(k, mu), abs=0.15)


def test_counts_matter_not_just_the_rate() -> None:
    small, large = poisson_score(3, 0.5), poisson_score(300, 50.0)   # both 6x the expectation
    assert small < 3 < 10 < large
    assert poisson_score(0, 0.5) > -1 and poisson_score(0, 50) < -5  # absence needs volume


def test_warm_ewmean_is_not_stuck_on_its_first_value() -> None:
    m = WarmEWMean(0.01)
    m.update(0.0)
    for _ in range(99):
        m.update(1.0)
    assert m.get() == pytest.approx(0.99)     # river's EWMean alone: 0.63


def test_rate_baseline_learns_rate_and_overdispersion() -> None:
    rng = random.Random(2)
    calm, noisy = RateBaseline(0.05, 0.005), RateBaseline(0.05, 0.005)
    for _ in range(400):
        calm.learn_one(sum(rng.random() < 0.05 for _ in range(400)), 400)
        p = rng.choice([0.02, 0.08])              # the true rate jumps around by nature
        noisy.learn_one(sum(rng.random() < p for _ in range(400)), 400)
    assert calm.expected() == pytest.approx(0.05, rel=0.15)
    # 60 of 400 is alarming for the calm signal; the noisy one needs far stronger evidence.
    z_calm, z_noisy = calm.score_one(60, 400)[0], noisy.score_one(60, 400)[0]
    assert z_calm > 5 > z_noisy and z_noisy < z_calm / 2


def test_two_horizons_a_ramp_drags_the_fast_one_only() -> None:
    rng = random.Random(5)
    b = RateBaseline(fading_factor(30), fading_factor(720))
    first = None
    for i in range(600):                          # 5 % for 5 h, then creeps to 20 % over 5 h
        p = 0.05 if i < 300 else 0.05 + 0.15 * (i - 300) / 300
        k = sum(rng.random() < p for _ in range(400))
        fast, slow = b.score_one(k, 400)
        if max(fast, slow) >= 5:                  # the detector never learns these windows
            first = first or (i, fast, slow)
            continue
        b.learn_one(k, 400)
    assert first is not None
    i, fast, slow = first
    # The slow reference caught it while the fast one, dragged along, still saw little.
    assert slow >= 5 > fast and i < 480


def test_drift_score_sees_the_fast_horizon_leave_the_slow_one() -> None:
    rng = random.Random(7)
    b = RateBaseline(fading_factor(30), fading_factor(720))
    for _ in range(200):                            # 2 % of 110 calls a window
        b.learn_one(sum(rng.random() < 0.02 for _ in range(110)), 110)
    calm = b.drift_score(2, 110)
    slow_before = b.expected(slow=True)
    for _ in range(20):                             # 6 %: no one window of ~7 is alarming...
        b.learn_one(7, 110, slow=False)             # ...and the slow horizon stays out of it
    assert abs(calm) < 1.5
    assert b.expected(slow=True) == slow_before
    assert max(b.score_one(7, 110)) < 5 <= b.drift_score(7, 110)
    # A rare event: one occurrence would dominate the sums, so no evidence either way.
    rare = RateBaseline(fading_factor(30), fading_factor(720))
    for _ in range(200):
        rare.learn_one(0, 50)
    assert rare.drift_score(3, 50) == 0.0


def test_quantity_counts_values() -> None:
    rng = random.Random(3)
    b = QuantityBaseline(0.05, 0.005)
    for _ in range(200):
        xs = [rng.gauss(6.0, 0.5) for _ in range(50)]
        b.learn_one(len(xs), sum(xs), sum(x * x for x in xs))
    assert b.score_one(50, 50 * 6.6, 50 * (6.6**2 + 0.25))[0] > 5   # shift of 1.2 sd, n = 50
    assert b.score_one(2, 2 * 6.6, 2 * (6.6**2 + 0.25))[0] < 3      # the same from 2 values


def test_volume_learns_the_daily_cycle_and_still_sees_a_drop() -> None:
    b = VolumeBaseline(fading_factor(30), fading_factor(720), bins=24, period=86400.0)
    rng = random.Random(4)

    def level(t: float) -> float:
        return 1000 * (1 + 0.5 * math.sin(2 * math.pi * t / 86400))

    t, worst = 0.0, 0.0
    for day in range(4):                          # four days of 60 s windows, online
        for _ in range(1440):
            k = round(rng.gauss(level(t), math.sqrt(level(t))))
            if day == 3:
                worst = max(worst, *map(abs, b.score_one(k, t)))
            b.learn_one(k, t)
            t += 60
    # The cycle itself is not news: over a whole day it stays well under the volume
    # threshold (6 in the default config; a max over 2,880 scores of pure noise is ~3.5)...
    assert worst < 4.5
    assert b.expected(t + 6 * 3600) > 1.3 * b.expected(t)   # ...because it was learned
    assert min(b.score_one(level(t) * 0.3, t)) < -10


def test_codec_round_trips_and_refuses_foreign_classes() -> None:
    for b in (RateBaseline(0.1, 0.01), QuantityBaseline(0.1, 0.01),
              VolumeBaseline(0.1, 0.01, 24, 86400.0)):
        for i in range(50):
            (b.learn_one(3, 50) if isinstance(b, RateBaseline) else
             b.learn_one(5, 5 * 2.0, 5 * 4.1) if isinstance(b, QuantityBaseline) else
             b.learn_one(100 + i, i * 60.0))
        c = codec.loads(codec.dumps(b))
        assert pickle.dumps(c) == pickle.dumps(b)
        assert len(codec.dumps(b)) < 2048
    with pytest.raises(pickle.UnpicklingError):
        codec.loads(pickle.dumps(random.Random(1)))


# -- the quantity baseline on one value per window (issue 12: baselines that hold on real data) --

FAST, SLOW = fading_factor(30), fading_factor(720)


def _one(x: float) -> tuple[float, float, float]:
    return 1.0, x, x * x


def _drive(b: QuantityBaseline, xs: list[float], threshold: float = 5.0) -> list[float]:
    """Score then learn each value as the scorer does: the larger score decides, and an
    anomalous window is learned as such. Returns the scores."""
    out = []
    for x in xs:
        z = max(b.score_one(*_one(x)), key=abs)
        out.append(z)
        b.learn_one(*_one(x), anomalous=abs(z) >= threshold)
    return out


def test_quantity_after_a_constant_stretch_a_small_change_is_news_not_infinity() -> None:
    b = QuantityBaseline(FAST, SLOW)
    for _ in range(300):
        b.learn_one(*_one(45.0))
    z = max(b.score_one(*_one(46.0)), key=abs)        # 2 % up after hours of exactly 45
    assert 5 < z < 100                                 # was ~3e7: sqrt(1e-9) as the spread


def test_quantity_slow_horizon_starts_warm() -> None:
    rng = random.Random(5)
    b = QuantityBaseline(FAST, SLOW)
    for _ in range(100):
        b.learn_one(*_one(rng.gauss(10.0, 1.0)))
    ratios = [abs(zs / zf) for zf, zs in (b.score_one(*_one(10.0 + d)) for d in (-3, 3))]
    assert all(0.6 < r < 1.6 for r in ratios)          # was ~7: the slow spread started at 0


def test_quantity_spike_barely_moves_it_and_a_persisting_level_is_adopted() -> None:
    rng = random.Random(6)
    b = QuantityBaseline(FAST, SLOW, adopt_windows=120)
    _drive(b, [rng.gauss(10.0, 1.0) for _ in range(1500)])
    before = b.expected(), b.expected(slow=True)
    assert _drive(b, [40.0])[0] > 20                   # one spike: flagged...
    assert abs(b.expected() - before[0]) < 0.5         # ...and barely learned
    z = _drive(b, [rng.gauss(20.0, 1.0) for _ in range(300)])
    assert z[0] > 5                                    # a level shift is flagged at once...
    assert max(map(abs, z[-60:])) < 5                  # ...and adopted, not paged for ever
    assert abs(b.expected() - 20) < 1 and abs(b.expected(slow=True) - 20) < 1


def test_quantity_slow_horizon_sees_a_ramp_it_does_not_learn() -> None:
    """Each step is well within the noise; the slow horizon still flags the climb."""
    rng = random.Random(7)
    b = QuantityBaseline(FAST, SLOW)
    _drive(b, [rng.gauss(50.0, 1.0) for _ in range(1500)])
    ramp = [rng.gauss(50.0 + 0.05 * i, 1.0) for i in range(240)]   # +12 sd over 4 hours
    zf, zs = [], []
    for x in ramp:
        f, s = b.score_one(*_one(x))
        zf.append(f)
        zs.append(s)
        b.learn_one(*_one(x), anomalous=max(abs(f), abs(s)) >= 5)
    assert max(map(abs, zf)) < 5 <= max(zs)    # the fast horizon follows it; the slow does not


def test_quantity_recurring_bursts_become_normal_spread() -> None:
    """A series with a burst every ~40 windows: the bursts stop looking new."""
    rng = random.Random(8)
    b = QuantityBaseline(FAST, SLOW)
    xs = [rng.gauss(1.0, 0.05) + (2.0 if i % 40 == 0 else 0.0) for i in range(4000)]
    z = _drive(b, xs)
    bursts = sorted(abs(z[i]) for i in range(2000, 4000, 40))     # each is 40 sd of the calm
    assert 3 < bursts[len(bursts) // 2] < 10                          # was ~40: never learned


def test_quantity_state_stays_small() -> None:
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    bs = [QuantityBaseline(FAST, SLOW) for _ in range(200)]
    for b in bs:
        for i in range(100):
            b.learn_one(1.0, float(i % 7), float(i % 7) ** 2, anomalous=i % 9 == 0, t=i * 60.0)
    resident = (tracemalloc.get_traced_memory()[0] - before) / len(bs)
    tracemalloc.stop()
    assert resident < 2048 and len(codec.dumps(bs[0])) < 1024
    assert not hasattr(bs[0], "__dict__")


def test_quantity_learns_a_daily_cycle_where_there_is_one() -> None:
    """Given window times, a daily cycle of ±5 sd stops being news; a step still is. A series
    without a cycle does not use the time of day (the choice is made from the data)."""
    rng = random.Random(9)
    cyc, flat = QuantityBaseline(FAST, SLOW), QuantityBaseline(FAST, SLOW)

    def level(t: float) -> float:
        return 20.0 + 5.0 * math.sin(2 * math.pi * t / 86400)

    worst = 0.0
    for w in range(4 * 1440):
        t = w * 60.0
        x, y = rng.gauss(level(t), 1.0), rng.gauss(20.0, 1.0)
        z = max(cyc.score_one(*_one(x), t=t), key=abs)
        if w >= 3 * 1440:
            worst = max(worst, abs(z))
        cyc.learn_one(*_one(x), anomalous=abs(z) >= 5, t=t)
        flat.learn_one(*_one(y), t=t)
    assert cyc.seasonal() and not flat.seasonal()
    assert worst < 5
    t = 4 * 1440 * 60.0
    assert cyc.score_one(*_one(level(t) + 10.0), t=t)[0] > 5


def _volume_learn_reference(b: VolumeBaseline, k: float, t: float) -> None:
    """VolumeBaseline.learn_one as first written (method calls, max/min builtins)."""
    x = math.log(k + 0.5)
    i = b._bin(t)
    e = max(0.1, math.exp(b._fast.get() + b._season[i]) - 0.5) if b.n else 0.0
    if b.n >= _CLIP_AFTER:
        lim = _CLIP_SD * math.sqrt(b._disp.get() / max(e, 1.0))
        le = math.log(e + 0.5)
        x = min(max(x, le - lim), le + lim)
    if b.n:
        b._disp.update(poisson_score(k, e))
        b._season[i] += _SEASON_RATE * (x - b._slow.get() - b._season[i])
    else:
        b._first = t
    b._last = t
    b._fast.update(x - b._season[i])
    b._slow.update(x - b._season[i])
    b.n += 1


def test_volume_learning_is_the_reference_float_for_float() -> None:
    """The inlined learn_one moves every level, season bin and dispersion moment as the
    plain method-by-method version does: bursts and gaps (the clip), zero counts, two days."""
    rng = random.Random(8)
    fast, ref = (VolumeBaseline(fast=0.1, slow=0.01, bins=24, period=86400.0)
                 for _ in range(2))
    for w in range(2 * 1440):
        k = rng.choice([0, 1, 40, 900, 5000]) if w % 97 == 0 else rng.randrange(80, 120)
        fast.learn_one(k, w * 60.0)
        _volume_learn_reference(ref, k, w * 60.0)
        assert (fast._fast.get(), fast._slow.get(), fast._disp._m1, fast._disp._m2, fast.n) == (
            ref._fast.get(), ref._slow.get(), ref._disp._m1, ref._disp._m2, ref.n)
    assert list(fast._season) == list(ref._season)
    assert (fast._first, fast._last) == (ref._first, ref._last) == (0.0, 2879 * 60.0)
