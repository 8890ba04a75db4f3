"""The signals users ask their current tools for (issue 14): evaluation scores per configured
evaluator and spend per model call, end to end through the pipeline."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import orjson
import pytest

from detector.config import Config, Price, Spend
from detector.core.partials import empty_partial
from detector.core.signals import Layout, layout_of
from tests.test_detection import run
from tests.traffic import T0, trace_id

COHORTS = ({"tenant": "acme", "app": "agent"}, {"tenant": "globex", "app": "agent"})


def _config(config: Config) -> Config:
    spend = Spend(prices={"small": Price(input_per_million=0.5, output_per_million=1.5),
                          "big": Price(input_per_million=5.0, output_per_million=15.0)})
    return msgspec.structs.replace(config, spend=spend, input=msgspec.structs.replace(
        config.input, evaluators=["faithfulness", "relevance"]))


def _stream(minutes: int, fx: Callable[[int, dict[str, str]], dict[str, Any]] = lambda m, c: {},
            per_minute: int = 100) -> Iterator[bytes]:
    """Chats of model "small" with faithfulness ~0.85 and relevance ~0.9 scores, and a score
    of an evaluator nobody configured; ``fx`` may set ``faithfulness`` and ``model``."""
    rng = random.Random(7)
    for m in range(minutes):
        for cohort in COHORTS:
            f = fx(m, cohort)
            for i in range(per_minute):
                yield orjson.dumps({
                    "ts": T0 + m * 60 + (i + 0.5) * 60 / per_minute, "operation": "chat",
                    "trace_id": trace_id(rng), **cohort, "model": f.get("model", "small"),
                    "model_version": f.get("model", "small"),
                    "input_tokens": int(rng.lognormvariate(7, 0.5)),
                    "output_tokens": int(rng.lognormvariate(5, 0.5)),
                    "eval_scores": {"Faithfulness": rng.gauss(f.get("faithfulness", 0.85), 0.08),
                                    "relevance": rng.gauss(0.9, 0.05),
                                    "toxicity": rng.random()}})


def _run(config: Config, msgs: Iterator[bytes]) -> list[dict[str, Any]]:
    return run(config, msgs)[1]


def test_unknown_evaluators_never_make_a_signal_or_a_counter(config: Config) -> None:
    lay = layout_of(_config(config))
    names = {s.name for s in lay.signals}
    assert {"eval_faithfulness", "eval_relevance", "cost"} <= names
    assert not {n for n in names if "toxicity" in n and n != "safety_toxicity"}
    assert lay.size == Layout(tuple(config.input.safety_labels), ("a", "b")).size


def test_an_eval_score_drop_in_one_cohort_pages_it_alone(config: Config, alert_validator
                                                         ) -> None:
    def fx(m: int, c: dict[str, str]) -> dict[str, Any]:
        return {"faithfulness": 0.7} if c["tenant"] == "acme" and 40 <= m < 50 else {}

    alerts = _run(_config(config), _stream(60, fx))
    for a in alerts:
        alert_validator.validate(a)
    evals = [a for a in alerts if a["signal"].startswith("eval_")]
    # acme, and the app that holds it; never its neighbour
    assert {(a["signal"], a["cohort"].get("tenant")) for a in evals} <= {
        ("eval_faithfulness", "acme"), ("eval_faithfulness", None)}
    first = next(a for a in evals if a["cohort"].get("tenant") == "acme")
    assert first["score"] <= -first["threshold"]
    # plain means of the scores, not geometric ones
    assert first["observed"] == pytest.approx(0.7, abs=0.03)
    assert first["expected"] == pytest.approx(0.85, abs=0.02)
    assert "sev2" in {a["severity"] for a in evals}           # sustained in production
    assert {a["status"] for a in evals} == {"firing", "resolved"}
    assert first["evidence"]["trace_ids"]                     # the lowest scores


def test_eval_scores_rising_do_not_alert(config: Config) -> None:
    def fx(m: int, c: dict[str, str]) -> dict[str, Any]:
        return {"faithfulness": 0.97} if 40 <= m < 50 else {}

    alerts = _run(_config(config), _stream(60, fx))
    assert not [a for a in alerts if a["signal"].startswith("eval_")]


def test_a_switch_to_a_pricier_model_is_recorded_not_paged(config: Config) -> None:
    def fx(m: int, c: dict[str, str]) -> dict[str, Any]:
        return {"model": "big"} if c["tenant"] == "acme" and m >= 40 else {}

    alerts = _run(_config(config), _stream(60, fx))
    cost = [a for a in alerts if a["signal"] == "cost"]
    assert cost and {a["cohort"].get("tenant") for a in cost} <= {"acme", None}
    assert {a["severity"] for a in cost} == {"sev4"}            # however long it lasts
    acme = next(a for a in cost if a["cohort"].get("tenant") == "acme")
    assert acme["observed"] > 5 * acme["expected"]
    assert acme["suspected_change"]["now"] == "big"
    # the price table's unit per million tokens: millionths of it per call
    assert 100 < acme["expected"] < 2000
    assert not [a for a in alerts if a["signal"] != "cost"]


def test_without_prices_or_evaluators_there_is_neither_signal(config: Config) -> None:
    def fx(m: int, c: dict[str, str]) -> dict[str, Any]:
        return {"model": "big", "faithfulness": 0.5} if m >= 40 else {}

    assert _run(config, _stream(60, fx)) == []


def test_the_declared_counters_keep_the_wire_order_of_the_partials() -> None:
    """Partials cross the wire and sit in snapshots as a list of counters: the declaration
    must lay them out as before it (724ae42) but for the counters ADDED since, where
    Layout.fit puts them in an older partial, and name the same signals in the same order."""
    lay = Layout(("pii",), ("faithfulness",))
    assert lay.names == (
        "events", "model_calls", "tool_calls", "refusals", "instruction_violations",
        "format_checked", "format_failures", "schema_invalid", "fabricated_results",
        "human_overrides", "memory_writes", "retries", "errors",
        "in_tok_n", "in_tok_sum", "in_tok_sq", "out_tok_n", "out_tok_sum", "out_tok_sq",
        "lat_n", "lat_sum", "lat_sq", "escalations", "escalation_reported", "entropy_n",
        "entropy_sum", "entropy_sq", "safety_pii", "safety_other", "cost_n", "cost_sum",
        "cost_sq", "eval_faithfulness_n", "eval_faithfulness_sum", "eval_faithfulness_sq")
    assert [(s.name, s.num, s.den, s.sq, s.flags, s.log) for s in lay.signals] == [
        ("refusal_rate", 3, 1, -1, True, True), ("tool_calls_per_chat", 2, 1, -1, False, True),
        ("schema_invalid_rate", 7, 2, -1, True, True),
        ("fabricated_tool_result_rate", 8, 2, -1, True, True),
        ("instruction_violation_rate", 4, 1, -1, True, True),
        ("output_format_failure_rate", 6, 5, -1, True, True),
        ("human_override_rate", 9, 1, -1, True, True),
        ("memory_write_rate", 10, 1, -1, False, True), ("retry_rate", 11, 0, -1, False, True),
        ("error_rate", 12, 0, -1, True, True), ("safety_pii", 27, 0, -1, True, True),
        ("safety_other", 28, 0, -1, True, True), ("input_tokens", 13, 14, 15, False, True),
        ("output_tokens", 16, 17, 18, False, True), ("latency_ms", 19, 20, 21, False, True),
        ("cost", 29, 30, 31, False, True), ("eval_faithfulness", 32, 33, 34, False, False),
        ("escalation_rate", 22, 23, -1, True, True), ("output_entropy", 24, 25, 26, False, True),
        ("volume", 0, 0, -1, False, True)]


def test_an_older_partial_gets_the_added_counters_as_zeros_and_keeps_its_groups() -> None:
    """A partial written before the leading indicators' counters (a rolling upgrade's stage 1,
    a saved state) is read with zeros for them, its groups' counters and evidence in place;
    one from a config with fewer evaluators is widened at the end."""
    lay = Layout(("pii",), ("faithfulness",))
    added = ("escalations", "escalation_reported", "entropy_n", "entropy_sum", "entropy_sq")
    old_names = [n for n in lay.names if n not in added]
    old = empty_partial(0, 0, ("a",), len(old_names))
    old.counts[:] = range(1, len(old_names) + 1)
    pii = old_names.index("safety_pii")
    old.samples = {3: ["0a"], pii: ["0b"]}
    old.top = {16: [(7, "0c")], old_names.index("eval_faithfulness_n"): [(-2, "0d")]}
    lay.fit(old)
    got = dict(zip(lay.names, old.counts, strict=True))
    assert got == {**{n: i + 1 for i, n in enumerate(old_names)}, **dict.fromkeys(added, 0)}
    assert old.samples == {3: ["0a"], lay.at["safety"]: ["0b"]}
    assert old.top == {16: [(7, "0c")], lay.eval_at: [(-2, "0d")]}
    fewer = empty_partial(0, 0, ("a",), lay.size - 3)   # before "faithfulness" was listed
    fewer.counts[lay.at["escalations"]] = 5
    lay.fit(fewer)
    assert len(fewer.counts) == lay.size - 3 and fewer.counts[lay.at["escalations"]] == 5
