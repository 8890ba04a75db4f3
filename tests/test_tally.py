"""The C counting (detector/core/_tally.c) against the Python counting it accelerates
(``Aggregator._add_py``, the reference): the same partials, late counts and watermark for
any events, including the ones the C path hands back to Python."""

from __future__ import annotations

import json
import math
import random

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import Config, Price, Spend
from detector.core import counting
from detector.core.aggregator import Aggregator
from detector.core.counting import COST_FIELDS
from detector.core.events import TraceEvent, decode_many
from detector.core.partials import MAX_VALUES, SCALE, Partial
from detector.core.signals import COUNTERS, SET, Counter

HEX = "0123456789abcdef"
OPS = ["chat", "text_completion", "execute_tool", "memory_write", "human_override",
       "invoke_agent", "something_else"]
HUGE = 10**400


def test_the_accelerator_is_built_here() -> None:
    # CI and `make test` compile it (a C compiler is part of the set-up): the comparisons
    # below must not silently compare Python with itself.
    assert counting._tally is not None, "detector.core._tally did not build; see setup.py"


@st.composite
def event(draw: st.DrawFn, t0: float) -> dict:
    ev: dict = {"ts": t0 + draw(st.floats(0, 400, allow_nan=False)),
                "operation": draw(st.sampled_from(OPS)),
                "tenant": draw(st.sampled_from(["t1", "t2", "t3"])),
                "app": draw(st.sampled_from(["a", "b"]))}
    for name, strat in OPTIONAL.items():
        if draw(st.booleans()):
            ev[name] = draw(strat)
    return ev


#: The optional fields an event may carry, and their values.
OPTIONAL: dict[str, st.SearchStrategy] = {
    "trace_id": st.sampled_from("0123f").flatmap(
        lambda c: st.text(HEX, min_size=31, max_size=31).map(lambda s: c + s)),
    "environment": st.sampled_from(["production", "canary"]),
    "model_version": st.sampled_from(["m1", "m2"]),
    "prompt_version": st.sampled_from(["v1", "v2", "v3"]),
    "refusal": st.booleans(), "instruction_violation": st.booleans(),
    "output_format_valid": st.booleans(), "schema_valid": st.booleans(),
    "tool_result_fabricated": st.booleans(),
    "input_tokens": st.one_of(st.integers(0, 5000), st.just(HUGE)),
    "output_tokens": st.integers(0, 2**70),
    "latency_ms": st.floats(0, 1e6, allow_nan=False),
    "retries": st.one_of(st.integers(0, 3), st.just(HUGE)),
    "error_type": st.just("timeout"),
    "finish_reason": st.sampled_from(["stop", "error", "length"]),
    "tool_status": st.sampled_from(["ok", "error"]),
    "safety_hits": st.lists(st.sampled_from(["pii", "secret_leak", "weird", "jailbreak"]),
                            max_size=3),
    "model": st.sampled_from(["m1", "m2", "free"]),
    "tool_name": st.sampled_from(["search", "email", "other", "unknown"]),
    "eval_scores": st.dictionaries(
        st.sampled_from(["faithfulness", "Relevance", "other"]),
        st.one_of(st.floats(-1000, 1000), st.sampled_from([0.0, 1.0, -1000.0, 1000.0])),
        max_size=3),
    "output_entropy": st.one_of(st.floats(0, 1e6, allow_nan=False), st.just(1e308)),
    "escalated": st.booleans(),
}


def _drive(config: Config, batches: list[list[TraceEvent]], python: bool
           ) -> tuple[list[Partial], int, float, int]:
    agg = Aggregator(config)
    add = agg._add_py if python else agg.add_many
    out: list[Partial] = []
    for evs in batches:
        add(evs)
        out += agg.drain()    # closes windows between batches: later events can be late
    return out + agg.drain_all(), agg.late, agg.wm.max_ts, agg.folded


def _same(config: Config, batches: list[list[bytes]]) -> list[Partial]:
    # Each path gets events decoded afresh: the counting must not depend on the other's.
    c = _drive(config, [decode_many(b)[0] for b in batches], python=False)
    py = _drive(config, [decode_many(b)[0] for b in batches], python=True)
    assert c == py
    return c[0]


DEFAULT_PRICE = Price(input_per_million=0.5, output_per_million=1.5)


def _priced(config: Config, default: Price | None = DEFAULT_PRICE) -> Config:
    """Evaluators and prices configured: m1 priced, "free" listed at 0, others the default."""
    spend = Spend(prices={"m1": Price(input_per_million=2.5, output_per_million=10.0),
                          "free": Price()}, default=default or Price())
    return msgspec.structs.replace(config, spend=spend, input=msgspec.structs.replace(
        config.input, evaluators=["faithfulness", "relevance"]))


@pytest.mark.parametrize("setup", ["default", "priced", "no_default_price"])
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(event(1_000_000.0), max_size=60), min_size=1, max_size=5))
def test_c_counts_what_python_counts(config: Config, setup: str, batches: list[list[dict]]
                                     ) -> None:
    cfg = {"default": config, "priced": _priced(config),
           "no_default_price": _priced(config, None)}[setup]
    # json, not orjson: orjson does not write integers past 64 bits.
    parts = _same(cfg, [[json.dumps(e).encode() for e in b] for b in batches])
    n = sum(map(len, batches))
    assert sum(p.counts[0] for p in parts if p.level == 0) <= n


def test_cost_and_eval_scores_are_counted_in_both_paths(config: Config) -> None:
    """The new counters hold what they say, in C and in Python alike."""
    cfg = _priced(config)
    evs = [orjson.dumps(e) for e in (
        {"ts": 1e6, "operation": "chat", "app": "a", "model": "m1", "input_tokens": 1000,
         "output_tokens": 100, "eval_scores": {"Faithfulness": 0.5, "toxicity": 0.9}},
        {"ts": 1e6 + 1, "operation": "chat", "app": "a", "model": "free", "input_tokens": 9},
        {"ts": 1e6 + 2, "operation": "chat", "app": "a", "model": "new", "output_tokens": 10},
        {"ts": 1e6 + 3, "operation": "invoke_agent", "app": "a", "input_tokens": 5,
         "eval_scores": {"relevance": -0.25}})]
    parts = _same(cfg, [evs])
    p = next(p for p in parts if p.level == 0)
    lay = Aggregator(cfg).layout
    got = dict(zip(lay.names, p.counts, strict=True))
    # m1: 1000 × 2.5 + 100 × 10 = 3500 millionths; "new" at the default: 10 × 1.5 = 15;
    # "free" is listed at 0 (no cost), and an agent span is not a model call.
    x1, x2 = (int(math.log1p(v) * SCALE + 0.5) for v in (3500.0, 15.0))
    assert (got["cost_n"], got["cost_sum"], got["cost_sq"]) == (2, x1 + x2, x1 * x1 + x2 * x2)
    assert (got["eval_faithfulness_n"], got["eval_faithfulness_sum"]) == (1, 512)
    assert (got["eval_relevance_n"], got["eval_relevance_sum"], got["eval_relevance_sq"]) == (
        1, -256, 65536)
    assert len(lay.names) == len(p.counts)   # "toxicity" is not configured: no counter


def test_hand_built_scores_are_counted_by_python(config: Config) -> None:
    """Scores decode() would not make (ints, NaN, past the bound) go the Python way."""
    cfg = _priced(config)
    odd = [TraceEvent(ts=1_000_030.0, operation="chat", app="a",
                      eval_scores={"faithfulness": 1, "relevance": float("nan")}),
           TraceEvent(ts=1_000_031.0, operation="chat", app="a",
                      eval_scores={"faithfulness": 5000.0})]
    normal = decode_many([orjson.dumps({"ts": 1_000_000.0 + i, "operation": "chat", "app": "a",
                                        "eval_scores": {"faithfulness": i / 60}})
                          for i in range(60)])[0]
    mixed = normal[:30] + odd + normal[30:]
    c, py = Aggregator(cfg), Aggregator(cfg)
    c.add_many(list(mixed))
    py._add_py(list(mixed))
    assert c.drain_all() == py.drain_all()


def test_c_and_python_agree_on_ties_and_past_the_cohort_and_version_budgets(config: Config) -> None:
    small = msgspec.structs.replace(config, cohorts=msgspec.structs.replace(
        config.cohorts, max_cohorts=4))
    rng = random.Random(5)
    batches = [[orjson.dumps({
        "ts": 5000.0 + b * 20 + i / 50, "operation": "chat", "tenant": f"t{rng.randrange(9)}",
        "app": "a", "model_version": f"m{rng.randrange(30)}",
        "output_tokens": rng.choice([5, 6, 7]), "latency_ms": rng.choice([10.0, 20.0]),  # ties
        "trace_id": f"{rng.getrandbits(128):032x}", "refusal": rng.random() < 0.3})
        for i in range(500)] for b in range(6)]
    parts = _same(small, batches)
    assert ("other", "other", "other") in {p.cohort for p in parts}


def test_keys_seen_again_evicted_or_alike_in_content_count_as_python_counts(config: Config
                                                                          ) -> None:
    """The C path finds an event's open partial through a bounded cache of key fields by
    content (_tally.c, key_cache): more distinct keys than it holds, each seen again after
    others took its slot, with 1-, 2- and 4-byte characters and lengths on either side of
    its 8-byte steps, must count exactly as the Python path does."""
    wide = msgspec.structs.replace(config, cohorts=msgspec.structs.replace(
        config.cohorts, max_cohorts=20_000))
    names = [f"t{i}" + "x" * (i % 17) + ("", "\u00e9", "\u4e2d", "\U0001f600")[i % 4]
             for i in range(5000)]
    rng = random.Random(11)
    batches = [[orjson.dumps({
        "ts": 5000.0 + b * 30 + i / 1000, "operation": "chat", "tenant": t, "app": "a",
        "model_version": f"m{i % 3}", "refusal": rng.random() < 0.3})
        for i, t in enumerate(rng.sample(names, len(names)))] for b in range(2)]
    parts = _same(wide, batches)
    fine = [p for p in parts if p.level == len(wide.cohorts.levels) - 1]
    assert {p.cohort[0] for p in fine} == set(names)
    assert sum(p.counts[0] for p in fine) == 10_000


def test_an_open_partial_is_stored_under_the_key_it_was_asked_for(config: Config) -> None:
    """_partial_for keeps the key object it is passed (the C counting caches that object and
    its hash for identity hits); a key folded past the cohort budget is stored by content."""
    small = msgspec.structs.replace(config, cohorts=msgspec.structs.replace(
        config.cohorts, max_cohorts=1))
    agg = Aggregator(small)
    nf = len(agg.finest)
    k1 = (7, tuple(f"a{i}" for i in range(nf)) + ("v",) * len(counting.COMBO_FIELDS))
    p = agg._partial_for(k1)
    assert next(k for k in agg._open if k == k1) is k1
    k2 = (7, tuple(f"b{i}" for i in range(nf)) + ("v",) * len(counting.COMBO_FIELDS))
    q = agg._partial_for(k2)   # past the budget of one cohort: the all-"other" one
    assert q is not p and k2 not in agg._open and agg.folded == 1
    assert q.cohort == tuple("other" for _ in range(nf))


def test_c_counting_asks_for_a_partial_once_per_key_and_window(config: Config) -> None:
    """The C lookup of an event's open partial (cached key and hash, _tally.c) finds the
    partial made for an earlier event: _partial_for runs only for a key not yet open, across
    batches, windows and cohorts seen again after others."""
    agg = Aggregator(config)
    asked: list[tuple[int, tuple[object, ...]]] = []
    made = agg._partial_for

    def counted(key: tuple[int, tuple[object, ...]]) -> Partial:
        asked.append(key)
        return made(key)

    agg._partial_for = counted   # type: ignore[method-assign]
    agg._ctx = agg._c_context()
    lines = [orjson.dumps({"ts": 1000.0 + i * 7.0, "operation": "chat", "app": f"a{i % 3}",
                          "tenant": f"t{i % 2}"}) for i in range(120)]
    for b in range(0, 120, 25):
        agg.add_many(decode_many(lines[b:b + 25])[0])
    assert len(asked) == len(set(asked)) == len(agg._open)
    assert sum(p.counts[0] for p in agg._open.values()) == 120


def test_events_of_an_unexpected_shape_are_counted_by_python_in_order(config: Config) -> None:
    """Events built by hand (an int timestamp, a float token count, a bool retries) are not
    what decode() makes: the C path stops at each and the Python path counts it."""
    odd = [TraceEvent(ts=1_000_030, operation="chat", app="a", input_tokens=7.5),
           TraceEvent(ts=1_000_031.0, operation="chat", app="a", retries=True),
           TraceEvent(ts=1_000_032.0, operation="chat", app="a", output_tokens=-0.0)]
    normal = decode_many([orjson.dumps({"ts": 1_000_000.0 + i, "operation": "chat",
                                        "app": "a", "input_tokens": i}) for i in range(60)])[0]
    mixed = normal[:30] + odd + normal[30:]
    c = Aggregator(config)
    c.add_many(list(mixed))
    py = Aggregator(config)
    py._add_py(list(mixed))
    assert c.drain_all() == py.drain_all()
    assert c.wm.max_ts == py.wm.max_ts == 1_000_059.0


def test_fixed_point_log1p_is_pythons_to_the_last_unit() -> None:
    rng = random.Random(3)
    values = [*range(0, 20_000), *(rng.randrange(2**60) for _ in range(20_000)),
              *(rng.random() * 10 ** rng.randrange(-8, 300) for _ in range(20_000)),
              math.ulp(0.0), 2**53 + 1, HUGE]
    fixed = counting._tally.fixed_log1p
    for v in values:
        assert fixed(v) == int(math.log1p(min(v, counting._FMAX)) * SCALE + 0.5), v


def test_a_timestamp_near_the_float_maximum_is_counted_alike(config: Config) -> None:
    """Valid by the contract; its window index is past 64 bits, and so is the closed-window
    mark once it has been drained."""
    far = [orjson.dumps({"ts": 1e300, "operation": "chat", "app": "a"})]
    near = [orjson.dumps({"ts": 1_000_000.0 + i, "operation": "chat", "app": "a"})
            for i in range(10)]
    batches = [near, far, near]
    parts = _same(config, batches)
    assert sum(p.counts[0] for p in parts if p.level == 1 and p.window < 10**9) == 10
    agg = Aggregator(config)
    for b in batches:
        agg.add_many(decode_many(b)[0])
        agg.drain()
    assert agg.late == 10   # the second ten: their window closed when the far one came


def _value(field: str) -> object:
    """A value of ``field`` as an event would carry it, for a "set" test."""
    (f,) = (f for f in msgspec.inspect.type_info(TraceEvent).fields if f.name == field)
    types = {type(t) for t in getattr(f.type, "types", (f.type,))}
    return True if msgspec.inspect.BoolType in types else "x"


def _counted_by(c: Counter, i: int) -> dict:
    """An event that counter ``c`` counts, by its declaration (with a trace id from "0", so
    that every kind of evidence is kept)."""
    # From a window's start (1_000_020 = 16667 minutes), so every counter's event shares it.
    ev: dict = {"ts": 1_000_020.0 + i, "operation": c.on[0] if c.on else "chat", "app": "a",
                "trace_id": f"0{i:031x}"}
    for f, t in c.when[:1]:
        ev[f] = _value(f) if t is SET else t
    ev.update({"sum": {c.field: 3}, "log1p": {c.field: 100},
               "labels": {c.field: ["pii", "weird"]},
               "cost": {"model": "m1", "input_tokens": 1000, "output_tokens": 10},
               "scores": {c.field: {"faithfulness": 0.5, "relevance": -0.5}}}.get(c.rule, {}))
    return ev


def test_every_declared_counter_is_counted_and_keeps_its_evidence_in_both_paths(
        config: Config) -> None:
    """For each counter in signals.COUNTERS an event it counts: C and Python agree, every
    counter of the layout is counted, and each keeps the evidence it declares."""
    cfg = _priced(msgspec.structs.replace(config, input=msgspec.structs.replace(
        config.input, safety_labels=["pii"])))
    parts = _same(cfg, [[orjson.dumps(_counted_by(c, i)) for i, c in enumerate(COUNTERS)]])
    p = next(p for p in parts if p.level == 0)
    lay = Aggregator(cfg).layout
    assert [n for n, v in zip(lay.names, p.counts, strict=True) if not v] == []
    want = {"ids": "samples", "sampled": "samples", "top": "top", "lowest": "top"}
    for c in COUNTERS:
        kept = getattr(p, want[c.evidence]) if c.evidence else {}
        at = lay.at[c.name]
        assert not c.evidence or at in kept, c.name
        assert c.evidence or (at not in p.samples and at not in p.top), c.name


def test_the_property_test_draws_every_field_and_operation_the_counters_read() -> None:
    read = {f for c in COUNTERS for f in (c.field, *(f for f, _ in c.when)) if f}
    assert read | set(COST_FIELDS) <= set(OPTIONAL), read - set(OPTIONAL)
    assert all(set(c.on) & set(OPS) for c in COUNTERS if c.on)


def test_tool_names_are_counted_alike_and_bounded(config: Config) -> None:
    """Each tool name's counters (Partial.values, per event in both paths) are its events',
    and past TOOL_NAMES names a partial counts the rest under "other"."""
    from detector.core.counting import TOOL_NAMES
    from detector.core.partials import OTHER, TOOL_FIELD, split_values
    from detector.core.signals import EVENTS, FIXED_AT, TOOL_COUNTERS

    evs = [orjson.dumps({"ts": 999960 + i / 10, "operation": "execute_tool", "app": "a",
                         "tool_name": f"t{i % (TOOL_NAMES + 6)}", "schema_valid": i % 3 > 0})
           for i in range(400)] + [orjson.dumps({"ts": 999990, "operation": "chat",
                                                 "app": "a", "refusal": True})]
    parts = _same(config, [evs[:200], evs[200:]])
    (p,) = [p for p in parts if p.level == 0]
    tools = split_values(p.values[TOOL_FIELD], p.counts)
    assert len(p.values[TOOL_FIELD]) <= MAX_VALUES and OTHER in tools
    assert tools["unknown"][EVENTS] == 1                       # the chat
    assert tools["t0"][EVENTS] == 400 // (TOOL_NAMES + 6)
    bad = FIXED_AT["schema_invalid"]
    assert sum(c.get(bad, 0) for v, c in tools.items()) == p.counts[bad] == 134
    assert all(set(c) <= set(TOOL_COUNTERS) for v, c in tools.items() if v != "unknown")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.just(0), st.integers(-10**6, 10**12)), min_size=1, max_size=40),
       st.floats(1e-3, 1e30), st.integers(0, 5))
def test_scaled_sums_in_c_are_python_s(counts: list[int], g: float, offset: int) -> None:
    """attribution.Trail's decayed sums: the C twin adds what the Python loop adds."""
    from array import array

    assert counting.scaled_add is counting._tally.scaled_add
    rng = random.Random(len(counts))
    start = [rng.uniform(0, 1e6) for _ in range(offset + len(counts))]
    c_buf, py_buf = array("f", start), array("f", start)
    counting.scaled_add(c_buf, offset, counts, g)
    counting._scaled_add_py(py_buf, offset, counts, g)
    assert c_buf.tobytes() == py_buf.tobytes()
    with pytest.raises(ValueError, match="room"):
        counting.scaled_add(c_buf, offset + 1, counts, g)


tool_counts = st.dictionaries(
    st.sampled_from(["search", "calc", "other", "zeta", "a"]),
    st.lists(st.integers(-10**9, 10**12), min_size=len(counting.TOOL_COUNTERS),
             max_size=len(counting.TOOL_COUNTERS)), max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.lists(tool_counts, min_size=1, max_size=5))
def test_roll_up_tool_sums_in_c_are_python_s(members: list[dict[str, list[int]]]) -> None:
    """Aggregator._roll_up's tool names' counters: C adds into a coarse cohort's what the
    Python twin adds, never into a member's own arrays, and writes them out as
    partials.tool_values does."""
    from array import array

    from detector.core import aggregator
    from detector.core.partials import UNKNOWN, tool_values

    mine = [{n: array("q", lst) for n, lst in m.items()} for m in members]
    before = [{n: list(a) for n, a in m.items()} for m in mine]
    c_into: dict[str, object] = {}
    py_into: dict[str, object] = {}
    for m in mine:
        assert aggregator._tool_sum(c_into, m) is True
        aggregator._tool_sum_py(py_into, m)
    assert [{n: list(a) for n, a in m.items()} for m in mine] == before   # members unchanged
    assert {n: list(a) for n, a in c_into.items()} == py_into  # type: ignore[call-overload]
    at = counting.TOOL_COUNTERS
    assert aggregator._tool_values(c_into, UNKNOWN) == tool_values(py_into, [], at)  # type: ignore[arg-type]
    for m in mine:
        assert aggregator._tool_values(m, UNKNOWN) == tool_values(m, [], at)


def test_tool_sums_of_another_shape_left_to_python() -> None:
    """Tool counters that are not stage 1's arrays (a list, another length) or whose sum
    passes int64: C changes nothing and says so (False / None), the Python twins then run."""
    from array import array

    from detector.core import aggregator

    n = len(counting.TOOL_COUNTERS)
    into: dict[str, object] = {"calc": array("q", [1] * n)}
    for bad in ({"calc": [1] * n}, {"calc": array("q", [1] * (n + 1))},
                {"x": array("q", [1] * n), "calc": array("d", [1.0] * n)}):
        assert aggregator._tool_sum(into, bad) is False
        assert list(into) == ["calc"] and list(into["calc"]) == [1] * n  # type: ignore[call-overload]
        assert aggregator._tool_values(bad, "unknown") is None
    big = {"calc": array("q", [2**62] * n)}
    assert aggregator._tool_sum(big, {"calc": array("q", [2**62] * n)}) is False
    assert list(big["calc"]) == [2**62] * n
    aggregator._tool_sum_py(big, {"calc": array("q", [2**62] * n)})   # Python ints: any size
    assert big["calc"] == [2**63] * n
