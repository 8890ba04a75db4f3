from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.aggregator import Aggregator
from detector.core.events import decode
from detector.core.partials import Partial, Versions, decode_partial, encode, merge
from detector.core.signals import EVENTS, MODEL, REFUSAL

HEX = "0123456789abcdef"
_tid = st.text(HEX, min_size=32, max_size=32)


@st.composite
def partials(draw: st.DrawFn) -> Partial:
    counts = draw(st.lists(st.integers(0, 10**12), min_size=30, max_size=30))
    samples = draw(st.dictionaries(st.sampled_from([EVENTS, REFUSAL]),
                                   st.lists(_tid, max_size=6).map(sorted), max_size=2))
    top = draw(st.dictionaries(st.just(18), st.lists(st.tuples(
        st.integers(0, 10_000), _tid), max_size=5).map(sorted), max_size=1))
    versions = draw(st.dictionaries(st.sampled_from(
        [Versions("m", "v1", "p"), Versions("m", "v2", "p"), Versions("n", "v1", "p")]),
        st.integers(1, 9), max_size=3))
    return Partial(7, 1, ("acme", "agent", "production"), counts,
                   {k: _dedupe(v)[:4] for k, v in samples.items()},
                   {k: _dedupe(v)[-4:] for k, v in top.items()}, versions,
                   "agent\x1fproduction")


def _dedupe(xs: list) -> list:
    return sorted(set(xs))


@settings(max_examples=200, deadline=None)
@given(partials(), partials(), partials())
def test_merge_is_associative_and_commutative(a: Partial, b: Partial, c: Partial) -> None:
    k = 4
    assert merge(a, b, k) == merge(b, a, k)
    assert merge(merge(a, b, k), c, k) == merge(a, merge(b, c, k), k)


@settings(max_examples=100, deadline=None)
@given(partials())
def test_partial_encoding_round_trips(p: Partial) -> None:
    assert decode_partial(encode(p)) == p


def _events(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ev = {"ts": 1000.0 + i * 0.5, "operation": rng.choice(["chat", "execute_tool"]),
              "trace_id": f"{rng.getrandbits(128):032x}", "tenant": rng.choice("ab"),
              "app": "x", "refusal": rng.random() < 0.2, "output_tokens": rng.randint(1, 500),
              "latency_ms": rng.random() * 900, "prompt_version": rng.choice(["v1", "v2"])}
        out.append(orjson.dumps(ev))
    return out


def _run(config, msgs: list[bytes]) -> list[Partial]:
    agg = Aggregator(config)
    out = []
    for m in msgs:
        for ev in decode(m)[0]:
            agg.add(ev)
        out += agg.drain()
    return out + agg.drain_all()


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_arrival_order_within_lateness_does_not_change_results(config, seed: int, shuf: int
                                                               ) -> None:
    msgs = _events(400, seed)          # 200 s of events, windows of 60 s, lateness 30 s
    # Shuffle only within blocks of 20 s: every event arrives at most 20 s late.
    rng = random.Random(shuf)
    shuffled = []
    for i in range(0, len(msgs), 40):
        block = msgs[i:i + 40]
        rng.shuffle(block)
        shuffled += block
    assert _run(config, shuffled) == _run(config, msgs)


def test_rolls_up_to_every_level_and_counts_late_events(config) -> None:
    msgs = _events(400, 3)
    agg = Aggregator(config)
    for m in msgs:
        agg.add(decode(m)[0][0])
    parts = agg.drain(watermark=1140.0)
    by_level: dict[int, float] = {}
    for p in parts:
        by_level[p.level] = by_level.get(p.level, 0) + p.counts[EVENTS]
    assert by_level[0] == by_level[1] == sum(1 for m in msgs if orjson.loads(m)["ts"] < 1140)
    # The route leaves the environment out: an app's canary and production meet (canary gap).
    assert {p.route for p in parts} == {"x"}
    agg.add(decode(b'{"ts": 1010, "operation": "chat", "app": "x"}')[0][0])
    assert agg.late == 1


def test_cohort_count_is_bounded_whatever_producers_send(config) -> None:
    import msgspec

    small = msgspec.structs.replace(config, cohorts=msgspec.structs.replace(config.cohorts,
                                                                         max_cohorts=5))
    agg = Aggregator(small)
    for i in range(50):                       # 50 made-up tenants, 2 events each
        for j in range(2):
            agg.add(decode(orjson.dumps({"ts": 1000.0 + i + j / 10, "operation": "chat",
                                         "tenant": f"x{i}", "app": "a"}))[0][0])
    finest = [p for p in agg.drain_all() if p.level == 1]
    assert len({p.cohort for p in finest}) == 6               # five real ones, then "other"
    assert sum(p.counts[EVENTS] for p in finest) == 100       # nothing lost
    assert agg.folded == 90
    assert ("other", "other", "other") in {p.cohort for p in finest}


def test_version_combinations_are_counted_and_bounded_per_cohort_and_window(config) -> None:
    from detector.core.partials import (
        MAX_OPEN_COMBOS,
        MAX_VALUES,
        MAX_VERSION_COMBOS,
        OTHER,
        OTHER_VERSIONS,
    )

    agg = Aggregator(config)
    rounds = []
    for flush in range(2):                    # the bound holds again after each hand-out
        for i in range(80):                   # 80 model builds, 3 events each, one window
            for j in range(3):
                agg.add(decode(orjson.dumps({
                    "ts": 1000.0 + flush * 5 + i / 100 + j / 1000, "operation": "chat",
                    "app": "a", "model": "m", "model_version": f"m{i}",
                    "prompt_version": "v1"}))[0][0])
        assert len(agg._open) <= MAX_OPEN_COMBOS   # memory: bounded per cohort and window
        rounds.append([p for p in agg.flush_open() if p.level == 1])
    for finest in rounds:
        assert len(finest) == 1                       # one partial per cohort and window
        versions = finest[0].versions
        assert len(versions) <= MAX_VERSION_COMBOS and sum(versions.values()) == 240
        assert versions[Versions("m0", "v1", "unknown")] == 3
        assert versions[OTHER_VERSIONS] == 240 - 3 * (len(versions) - 1)
        assert finest[0].counts[EVENTS] == finest[0].counts[MODEL] == 240
        # Each value's counts, bounded too: MAX_VALUES per field, the rest under "other".
        models = finest[0].values[0]
        assert len(models) == MAX_VALUES and models["m\x1fm0"] == {0: 3, 1: 3}
        assert OTHER in models and models[OTHER] == {}   # the remainder: most events
        # The combinations past MAX_OPEN_COMBOS count as all "unknown"; the rest: a name.
        folded = 240 - 3 * (MAX_OPEN_COMBOS - 1)
        assert finest[0].values[1] == {"v1": {}, "unknown": {0: folded, 1: folded}}


def test_integers_past_the_float_range_are_counted_at_its_ceiling(config) -> None:
    """The contract sets no maximum on token counts or retries: 10**400 is a valid event,
    and it must not stop the events around it from being counted."""
    from math import log1p
    from sys import float_info

    from detector.core.counting import MAX_RETRIES
    from detector.core.partials import SCALE
    from detector.core.signals import IN_N, IN_S, OUT_N, RETRIES

    huge = b"1" + b"0" * 400
    agg = Aggregator(config)
    evs = decode(b'[{"ts": 1000, "operation": "chat", "app": "a", "output_tokens": 5},'
                 b' {"ts": 1001, "operation": "chat", "app": "a", "input_tokens": %s,'
                 b' "retries": %s},'
                 b' {"ts": 1002, "operation": "chat", "app": "a", "output_tokens": 7}]'
                 % (huge, huge))[0]
    assert len(evs) == 3
    agg.add_many(evs)
    (p,) = [p for p in agg.drain_all() if p.level == 1]
    assert p.counts[EVENTS] == 3 and p.counts[OUT_N] == 2 and p.counts[IN_N] == 1
    assert p.counts[IN_S] == int(log1p(float_info.max) * SCALE + 0.5)
    assert p.counts[RETRIES] == MAX_RETRIES


def test_a_coarse_partial_holds_the_sum_of_its_finest_partials_values(config) -> None:
    from detector.core.partials import merge_values, split_values

    agg = Aggregator(config)
    rng = random.Random(4)
    for i in range(300):   # 6 tenants of one app: some on one prompt, some mixed, one model
        t = i % 6
        ev = {"ts": 1020.0 + i / 10, "operation": "chat", "tenant": f"t{t}", "app": "a",
              "model": "m", "model_version": "1",
              "prompt_version": f"v{rng.randrange(2) if t < 3 else t}"}
        if i % 4 == 0:
            ev.update(operation="tool_call", tool_name="search")
        evs, bad = decode(orjson.dumps(ev))[:2]
        assert evs, bad
        agg.add(evs[0])
    parts = agg.drain_all()
    (coarse,) = [p for p in parts if p.level == 0]
    finest = [p for p in parts if p.level == 1]
    assert len(finest) == 6
    # What merging the finest partials one by one gives: the same counts for every value.
    want: dict = {}
    counts = [0] * len(coarse.counts)
    for p in finest:
        want = merge_values(want, counts, p.values, p.counts)
        counts = [x + y for x, y in zip(counts, p.counts, strict=True)]
    assert counts == coarse.counts
    for f in want:
        assert split_values(coarse.values[f], counts) == split_values(want[f], counts), f
    assert set(split_values(coarse.values[1], counts)) == {"v0", "v1", "v3", "v4", "v5"}
    assert coarse.values[0] == {"m\x1f1": {}}   # one value on every tenant: a name only
