"""Tests for detector.lab.simulate: determinism, contract conformance, labels, injected effects."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from detector.core.events import MODEL_OPERATIONS, TraceEvent, decode
from detector.lab.scenarios import APPS, DEFAULT_SCENARIOS, World, cycle_factor
from detector.lab.simulate import SCENARIOS, add_arguments, run, simulate

START = datetime(2026, 1, 5, tzinfo=UTC)


def _t(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _lines(out: Path) -> list[bytes]:
    return (out / "traces.jsonl").read_bytes().splitlines()


def _decode_all(out: Path) -> tuple[list[TraceEvent], int]:
    events: list[TraceEvent] = []
    rejected_lines = 0
    for line in _lines(out):
        ok, bad = decode(line)
        if bad:
            rejected_lines += 1
            assert not ok, "a malformed line must be rejected as a whole"
        events.extend(ok)
    return events, rejected_lines


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any],
                                                             list[TraceEvent], int]:
    """All scenarios, 4 h at a modest rate: the run most tests inspect."""
    out = tmp_path_factory.mktemp("full")
    simulate(out, hours=4.0, seed=7, rate=10.0)
    labels = json.loads((out / "labels.json").read_text())
    events, rejected = _decode_all(out)
    return out, labels, events, rejected


def _cohort_events(events: list[TraceEvent], cohort: dict[str, str]) -> list[TraceEvent]:
    return [e for e in events if e.app == cohort["app"] and e.environment == cohort["environment"]
            and ("tenant" not in cohort or e.tenant == cohort["tenant"])]


def _between(events: list[TraceEvent], t0: float, t1: float) -> list[TraceEvent]:
    return [e for e in events if t0 <= e.ts < t1]  # type: ignore[operator]


def _model(es: list[TraceEvent]) -> list[TraceEvent]:
    return [e for e in es if e.operation in MODEL_OPERATIONS]


def _share(pred: Callable[[TraceEvent], bool], es: list[TraceEvent]) -> float:
    return sum(1 for e in es if pred(e)) / max(1, len(es))


def _per_chat(op: str, es: list[TraceEvent]) -> float:
    return sum(e.operation == op for e in es) / max(1, sum(e.operation == "chat" for e in es))


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


def _hit(label: str) -> Callable[[list[TraceEvent]], float]:
    return lambda es: _share(lambda e: bool(e.safety_hits) and label in e.safety_hits,
                             _model(es))


def _tool_flag(pred: Callable[[TraceEvent], bool]) -> Callable[[list[TraceEvent]], float]:
    return lambda es: _share(pred, [e for e in es if e.operation == "execute_tool"])


# What each drift scenario moves, measured on the labelled cohort.
METRICS: dict[str, Callable[[list[TraceEvent]], float]] = {
    "refusal": lambda es: _share(lambda e: e.refusal is True, _model(es)),
    "pii_leak": _hit("pii"),
    "prompt_injection": _hit("prompt_injection"),
    "instruction_violations": lambda es: _share(lambda e: e.instruction_violation is True,
                                                _model(es)),
    "format_failures": lambda es: _share(lambda e: e.output_format_valid is False, _model(es)),
    "retry_storm": lambda es: _share(lambda e: bool(e.retries), _model(es)),
    "error_burst": lambda es: _share(lambda e: e.finish_reason == "error", _model(es)),
    "tool_loop": lambda es: _per_chat("execute_tool", es),
    "schema_failures": _tool_flag(lambda e: e.schema_valid is False),
    "fabricated_results": _tool_flag(lambda e: e.tool_result_fabricated is True),
    "memory_flood": lambda es: _per_chat("memory_write", es),
    "human_overrides": lambda es: _per_chat("human_override", es),
    "token_blowup": lambda es: _median([float(e.output_tokens) for e in _model(es)
                                        if isinstance(e.output_tokens, int)]),
    "latency_regression": lambda es: _median([float(e.latency_ms) for e in _model(es)]),
}
REFUSAL_UP = ("refusal_spike", "slow_ramp", "canary_regression", "blip")


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"hours": 1.5, "rate": 4.0, "scenarios": ["refusal_spike"]}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    simulate(a, seed=5, **kw)
    simulate(b, seed=5, **kw)
    simulate(c, seed=6, **kw)
    for name in ("traces.jsonl", "labels.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "traces.jsonl").read_bytes() != (c / "traces.jsonl").read_bytes()


def test_scenario_order_does_not_matter(tmp_path: Path) -> None:
    simulate(tmp_path / "a", hours=2, rate=2.0, scenarios=["blip", "token_blowup"])
    simulate(tmp_path / "b", hours=2, rate=2.0, scenarios=["token_blowup", "blip"])
    assert (tmp_path / "a/traces.jsonl").read_bytes() == (tmp_path / "b/traces.jsonl").read_bytes()


def test_every_line_decodes_except_the_counted_malformed(full: Any) -> None:
    out, labels, events, rejected = full
    assert rejected == labels["malformed_lines"] > 0
    assert len(events) == labels["events"]
    assert rejected / len(_lines(out)) < 0.005


def test_lines_are_in_event_time_order_with_batches_and_both_ts_forms(full: Any) -> None:
    out, labels, events, _ = full
    ts = [e.ts for e in events]
    assert ts == sorted(ts)  # type: ignore[type-var]
    assert _t(labels["start"]) <= ts[0] and ts[-1] < _t(labels["end"])  # type: ignore[operator]
    raw = []
    for line in _lines(out):
        with contextlib.suppress(orjson.JSONDecodeError):  # a deliberately malformed line
            raw.append(orjson.loads(line))
    batches = [r for r in raw if isinstance(r, list)]
    assert 0.01 < len(batches) / len(raw) < 0.06
    assert all(2 <= len(b) <= 20 for b in batches)
    singles = [r for r in raw if isinstance(r, dict) and "ts" in r]
    numeric = sum(isinstance(r["ts"], float | int) for r in singles) / len(singles)
    assert 0.1 < numeric < 0.3
    assert all(r["ts"].endswith("Z") for r in singles if isinstance(r["ts"], str)
               and r["ts"][-1] != "0" and len(r["ts"]) == 24)
    texty = sum("prompt" in r for r in singles) / len(singles)
    assert 0.002 < texty < 0.03


def test_events_carry_identity_and_version_fields(full: Any) -> None:
    _, _, events, _ = full
    for e in events[:5000]:
        for f in ("trace_id", "span_id", "tenant", "region", "app", "model", "model_version",
                  "prompt_version", "policy_version"):
            assert isinstance(getattr(e, f), str), f
    ops = Counter(e.operation for e in events)
    assert ops["chat"] > ops["text_completion"] > 0
    assert ops["execute_tool"] > ops["memory_write"] > ops["human_override"] > 0
    assert ops["invoke_agent"] > 0
    tenants = Counter(e.tenant for e in events)
    top = tenants.most_common()
    assert len(top) >= 30 and top[0][1] > 20 * top[-1][1]  # Zipf-skewed volume
    assert {e.environment for e in events} == {"production", "canary", "staging"}


def test_labels_list_every_scenario_after_warmup_within_range(full: Any) -> None:
    _, labels, _, _ = full
    start, end = _t(labels["start"]), _t(labels["end"])
    incs = labels["incidents"]
    assert sorted(i["scenario"] for i in incs) == sorted(DEFAULT_SCENARIOS)
    for i in incs:
        s0, s1 = _t(i["start"]), _t(i["end"])
        assert start + 3600 <= s0 < s1 < end, i["id"]
        assert i["kind"] == SCENARIOS[i["scenario"]].kind
        assert i["expected_severity"] == SCENARIOS[i["scenario"]].expected
        if i["kind"] == "drift":
            lasting = s1 - s0
            if i["scenario"] == "blip":
                assert lasting == 60
            elif i["scenario"] == "slow_ramp":
                assert 60 * 60 < lasting <= 100 * 60
            else:
                assert 10 * 60 <= lasting <= 25 * 60
        no_change = i["kind"] == "hard_rule" or i["scenario"] == "blip"
        assert (i["suspected_change"] is None) == no_change
        assert 0 < len(i["trace_ids"]) <= 20


def _overlap(a: dict[str, str], b: dict[str, str]) -> bool:
    return a["app"] == b["app"] and a["environment"] == b["environment"] and (
        "tenant" not in a or "tenant" not in b or a["tenant"] == b["tenant"])


def test_incidents_are_staggered(full: Any) -> None:
    _, labels, _, _ = full
    incs = labels["incidents"]
    for i in incs:
        t = _t(i["start"])
        active = [j for j in incs if _t(j["start"]) <= t <= _t(j["end"])]
        assert len(active) <= 2
        for j in active:
            if j is not i:
                assert not _overlap(i["cohort"], j["cohort"]), (i["id"], j["id"])


def test_suspected_change_is_the_version_the_cohort_runs(full: Any) -> None:
    _, labels, events, _ = full
    for i in labels["incidents"]:
        ch = i["suspected_change"]
        if ch is None or i["kind"] == "benign":
            continue
        s0, s1 = _t(i["start"]), _t(i["end"])
        # Model calls end seconds after their trace begins, so a change shows at once.
        es = _model(_cohort_events(events, i["cohort"]))
        before = {getattr(e, ch["field"]) for e in _between(es, s0 - 120, s0 - 30)}
        during = {getattr(e, ch["field"]) for e in _between(es, s0 + 30, s1)}
        after = {getattr(e, ch["field"]) for e in _between(es, s1 + 30, s1 + 600)}
        assert before <= {ch["baseline"]} and during == {ch["now"]}, i["id"]
        assert ch["now"] not in after  # rolled back when the incident ends


def _quiet(events: list[TraceEvent], labels: dict[str, Any],
           cohort: dict[str, str]) -> list[TraceEvent]:
    """The cohort's events away from every incident on its traffic: its normal behaviour."""
    spans = [(_t(i["start"]) - 180, _t(i["end"]) + 180) for i in labels["incidents"]
             if _overlap(i["cohort"], cohort)]
    return [e for e in _cohort_events(events, cohort)
            if not any(a <= e.ts < b for a, b in spans)]  # type: ignore[operator]


def test_drift_effects_are_in_the_data(full: Any) -> None:
    _, labels, events, _ = full
    checked = 0
    for i in labels["incidents"]:
        name = i["scenario"]
        metric = METRICS["refusal"] if name in (*REFUSAL_UP, "refusal_collapse") else \
            METRICS.get(name)
        if metric is None:
            continue
        s0, s1 = _t(i["start"]), _t(i["end"])
        es = _cohort_events(events, i["cohort"])
        before = metric(_quiet(events, labels, i["cohort"]))
        during = metric(_between(es, s0, s1) if name != "slow_ramp" else
                        _between(es, s1 - 1200, s1))  # the top of the ramp and the hold
        if name == "refusal_collapse":
            assert before >= 0.04 and during < before / 5, name
        else:
            # Quantities are x3 and x2.5 on medians diluted by short refusals and errors;
            # overrides come up to 2 minutes after their chat, some past the incident.
            # A blip is x6 for one minute: few events, so sampling noise is large; the ramp's
            # last 20 minutes average about x4.5.
            want = {"token_blowup": 2.5, "latency_regression": 2.0, "human_overrides": 2.0,
                    "blip": 2.0, "slow_ramp": 2.5}.get(name, 3.0)
            assert during >= want * before > 0, (name, before, during)
        checked += 1
    assert checked == len(METRICS) + len(REFUSAL_UP)


def test_traffic_drop_and_benign_deploy(full: Any) -> None:
    _, labels, events, _ = full
    by = {i["scenario"]: i for i in labels["incidents"]}
    drop = by["traffic_drop"]
    assert "tenant" not in drop["cohort"] and drop["cohort"]["environment"] == "production"
    es = _cohort_events(events, drop["cohort"])
    s0, s1 = _t(drop["start"]), _t(drop["end"])
    assert len(_between(es, s0, s1)) < 0.25 * len(_between(es, s0 - (s1 - s0), s0))
    benign = by["benign_deploy"]
    es = _cohort_events(events, benign["cohort"])
    s0, s1 = _t(benign["start"]), _t(benign["end"])
    refusal = METRICS["refusal"]
    assert refusal(_between(es, s0, s1)) < 2 * refusal(_between(es, s0 - 3600, s0))
    change = benign["suspected_change"]
    after = {getattr(e, change["field"]) for e in _between(_model(es), s0 + 30, s1 + 600)}
    assert change["now"] in after and change["baseline"] not in after  # a good deploy stays


def test_hard_rule_trace_ids_carry_the_offending_flag(full: Any) -> None:
    _, labels, events, _ = full
    offends: dict[str, Callable[[TraceEvent], bool]] = {
        "unauthorized_tool": lambda e: e.tool_authorized is False,
        "unapproved_action": lambda e: e.tool_approved is False and
        e.tool_side_effect in ("write", "external"),
        "secret_leak": lambda e: bool(e.safety_hits) and "secret_leak" in e.safety_hits,
    }
    by_trace: dict[str, list[TraceEvent]] = defaultdict(list)
    for e in events:
        by_trace[e.trace_id].append(e)  # type: ignore[index]
    for i in labels["incidents"]:
        if i["kind"] != "hard_rule":
            continue
        pred = offends[i["scenario"]]
        bad = [e for t in i["trace_ids"] for e in by_trace[t] if pred(e)]
        assert len(bad) == len(i["trace_ids"]) >= 3
        assert min(e.ts for e in bad) == _t(i["start"])  # type: ignore[type-var]
        assert max(e.ts for e in bad) == _t(i["end"])  # type: ignore[type-var]
        others = [e for e in events if pred(e) and e.trace_id not in i["trace_ids"]]
        assert not others, "offending events only where labelled"


def test_rate_is_the_mean_events_per_second(full: Any) -> None:
    _, labels, _, _ = full
    expected = labels["rate"] * labels["hours"] * 3600
    assert abs(labels["events"] - expected) < 0.05 * expected


def test_daily_cycle_over_a_day(tmp_path: Path) -> None:
    simulate(tmp_path, hours=24, rate=0.5, scenarios=[], seed=2)
    events, _ = _decode_all(tmp_path)
    hours = Counter(int((e.ts - START.timestamp()) // 3600) for e in events)  # type: ignore[operator]
    trough = sum(hours[h] for h in range(0, 5))
    peak = sum(hours[h] for h in range(12, 17))
    assert 1.6 < peak / trough < 2.4
    assert max(hours, key=hours.__getitem__) in range(10, 19)


def test_none_is_clean_traffic(tmp_path: Path) -> None:
    summary = simulate(tmp_path, hours=1, rate=3.0, scenarios=[])
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert summary["incidents"] == 0 and labels["incidents"] == []
    events, _ = _decode_all(tmp_path)
    assert not any(e.tool_authorized is False or e.tool_approved is False for e in events)
    assert len({e.prompt_version for e in events if e.app == "support-agent"}) == 1


def test_too_short_raises_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too short"):
        simulate(tmp_path, hours=1.0, rate=1.0, scenarios=["refusal_spike"])
    with pytest.raises(ValueError, match="unknown scenario"):
        simulate(tmp_path, hours=3.0, rate=1.0, scenarios=["nope"])


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert run(_cli(["--out", str(out), "--hours", "1.5", "--rate", "2", "--scenario", "blip",
                     "--scenario", "secret_leak", "--seed", "3"])) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "events" in err[0]
    labels = json.loads((out / "labels.json").read_text())
    assert sorted(i["scenario"] for i in labels["incidents"]) == ["blip", "secret_leak"]
    assert run(_cli(["--out", str(out), "--hours", "1", "--rate", "2", "--scenario", "none"])) == 0
    assert json.loads((out / "labels.json").read_text())["incidents"] == []
    assert run(_cli(["--out", str(out), "--hours", "1", "--scenario", "blip"])) == 2
    assert "too short" in capsys.readouterr().err
    later = _cli(["--out", str(out), "--hours", "0.2", "--rate", "2", "--scenario", "none",
                  "--start", "2026-03-01T12:00:00Z"])
    assert run(later) == 0
    first = next(_iter_events(out))
    assert first.ts >= datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()  # type: ignore[operator]
    assert first.ts < (datetime(2026, 3, 1, 12, tzinfo=UTC) +  # type: ignore[operator]
                       timedelta(minutes=1)).timestamp()


def _iter_events(out: Path) -> Iterator[TraceEvent]:
    for line in _lines(out):
        yield from decode(line)[0]


NEW = ("rare_wave", "lowvol_violations", "fabricated_midsize", "benign_shift", "quantity_shift",
       "quantity_cycle", "volume_surge")
#: Opt-in too, with a test of its own (tests/test_acceptance.py): a cycle that is not a day.
SHORT_CYCLE = ("quantity_short_cycle",)


def _simulated(tmp_path_factory: pytest.TempPathFactory, hours: float, seed: int,
               scenarios: tuple[str, ...]) -> tuple[dict[str, Any], list[TraceEvent]]:
    """Labels and events of ``scenarios`` together at a modest rate."""
    out = tmp_path_factory.mktemp("sim")
    simulate(out, hours=hours, seed=seed, rate=10.0, scenarios=list(scenarios))
    return json.loads((out / "labels.json").read_text()), _decode_all(out)[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any],
                                                               list[TraceEvent]]:
    """Issue 12's scenarios together, 6 h."""
    return _simulated(tmp_path_factory, 6.0, 3, NEW)


def test_issue12_scenarios_are_opt_in_and_labelled(shapes: Any) -> None:
    labels, _ = shapes
    assert not set(NEW) & set(DEFAULT_SCENARIOS)
    assert (set(DEFAULT_SCENARIOS) | set(NEW) | set(ISSUE_14) | set(ISSUE_19)
            | set(SHORT_CYCLE) | set(ISSUE_17)) == set(SCENARIOS)
    by = {i["scenario"]: i for i in labels["incidents"]}
    assert sorted(by) == sorted(NEW)
    for name in ("rare_wave", "lowvol_violations", "fabricated_midsize"):
        assert by[name]["kind"] == "drift" and by[name]["expected_severity"] == "sev2"
        assert "tenant" in by[name]["cohort"]
    for name, cap, most in (("benign_shift", "sev2", 7200), ("quantity_shift", "sev2", 7200),
                            ("quantity_cycle", "sev4", 7200), ("volume_surge", "sev4", None)):
        assert by[name]["kind"] == "benign" and by[name]["max_severity"] == cap, name
        assert by[name].get("max_firing_seconds") == most, name
    for name in ("benign_shift", "quantity_shift", "quantity_cycle"):  # they stay
        assert by[name]["end"] == labels["end"]
    assert by["quantity_cycle"]["start"] == labels["start"]
    assert _t(by["rare_wave"]["end"]) - _t(by["rare_wave"]["start"]) == 1200
    assert _t(by["volume_surge"]["end"]) - _t(by["volume_surge"]["start"]) == 1200
    assert by["benign_shift"]["suspected_change"]["field"] == "model_version"


def _around(events: list[TraceEvent], inc: dict[str, Any]) -> tuple[list[TraceEvent],
                                                                      list[TraceEvent]]:
    """The labelled cohort's events during the incident and before it."""
    es = _cohort_events(events, inc["cohort"])
    s0, s1 = _t(inc["start"]), _t(inc["end"])
    return _between(es, s0, s1), _between(es, 0, s0)


def test_rare_rises_on_small_cohorts_have_the_stated_shape(shapes: Any) -> None:
    labels, events = shapes
    by = {i["scenario"]: i for i in labels["incidents"]}
    chats = lambda es: [e for e in es if e.operation == "chat"]  # noqa: E731
    during, before = _around(events, by["rare_wave"])
    inj = _hit("prompt_injection")
    assert 0.06 < inj(chats(during)) < 0.15 and inj(chats(before)) < 0.004
    per_min = len(chats(during)) / 20
    assert 3.5 < per_min < 14, per_min                     # ~7 chats a minute
    during, before = _around(events, by["lowvol_violations"])
    iv = METRICS["instruction_violations"]
    assert 0.3 < iv(during) < 0.5 and iv(before) < 0.03
    minutes = (_t(by["lowvol_violations"]["end"]) - _t(by["lowvol_violations"]["start"])) / 60
    assert 2.5 < len(_model(during)) / minutes < 10         # ~5 model calls a minute
    during, before = _around(events, by["fabricated_midsize"])
    fab = METRICS["fabricated_results"]
    assert 0.05 < fab(during) < 0.11 and fab(before) < 0.01


def test_benign_shapes_move_only_what_they_say(shapes: Any) -> None:
    labels, events = shapes
    by = {i["scenario"]: i for i in labels["incidents"]}
    lat, out = METRICS["latency_regression"], METRICS["token_blowup"]
    tokens_in = lambda es: _median([float(e.input_tokens) for e in _model(es)  # noqa: E731
                                    if e.operation == "chat" and e.input_tokens])
    shift = by["benign_shift"]
    after, before = _around(events, shift)
    assert 1.4 < lat(after) / lat(before) < 1.85
    assert 1.15 < out(after) / out(before) < 1.45
    assert 0.85 < tokens_in(after) / tokens_in(before) < 1.15
    settled = _between(_model(after), _t(shift["start"]) + 30, _t(shift["end"]))
    assert {e.model_version for e in settled} == {shift["suspected_change"]["now"]}
    qs = by["quantity_shift"]
    after, before = _around(events, qs)
    assert 1.8 < tokens_in(after) / tokens_in(before) < 2.2
    assert 0.85 < lat(after) / lat(before) < 1.15
    surge = by["volume_surge"]
    during, _ = _around(events, surge)
    s0 = _t(surge["start"])
    same_before = _between(_cohort_events(events, surge["cohort"]), s0 - 1200, s0)
    assert 2.5 < len(during) / len(same_before) < 3.6
    refusal = METRICS["refusal"]
    assert 0.6 < refusal(during) / refusal(same_before) < 1.6


def test_quantity_cycle_follows_the_time_of_day(shapes: Any) -> None:
    labels, events = shapes
    cyc = next(i for i in labels["incidents"] if i["scenario"] == "quantity_cycle")
    t0 = _t(labels["start"])
    lat = METRICS["latency_regression"]
    mine = _cohort_events(events, cyc["cohort"])
    moved = {i["cohort"]["app"] for i in labels["incidents"]
             if i["scenario"] in ("quantity_cycle", "benign_shift")}
    others = [e for e in events if e.app not in moved]
    # Against apps of steady latency, which share the load effect: the cycle's ratio of 05-06 h to
    # 01:30-02:30 (its trough) is cycle_factor(5.5 h) / cycle_factor(2 h) = 1.26.
    late, trough = (t0 + 5 * 3600, t0 + 6 * 3600), (t0 + 5400, t0 + 9000)
    ratio = (lat(_between(mine, *late)) / lat(_between(mine, *trough))) / \
        (lat(_between(others, *late)) / lat(_between(others, *trough)))
    want = cycle_factor(5.5 * 3600, 0.4) / cycle_factor(2 * 3600, 0.4)
    assert abs(ratio - want) < 0.12, (ratio, want)


def test_a_bigger_world_keeps_the_default_and_adds_small_cohorts() -> None:
    small, big = World.build(), World.build(120)
    assert len(small.tenants) == 40 and len(big.tenants) == 120
    assert len(big.cohorts) >= 250
    assert big.cohorts[:10] == small.cohorts[:10]
    with pytest.raises(ValueError, match="tenants"):
        World.build(3)


ISSUE_14 = ("eval_drop", "spend_surge")
#: Issue 17's leading indicators (tests/test_indicators.py runs them).
ISSUE_17 = ("escalation_surge", "entropy_collapse", "prompt_churn")


@pytest.fixture(scope="module")
def signals_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any],
                                                                    list[TraceEvent]]:
    """Issue 14's scenarios together, 2.5 h."""
    return _simulated(tmp_path_factory, 2.5, 4, ISSUE_14)


def _mean_score(es: list[TraceEvent], name: str) -> float:
    xs = [e.eval_scores[name] for e in es if e.eval_scores and name in e.eval_scores]
    assert len(xs) > 50
    return sum(xs) / len(xs)


def test_eval_scores_come_from_the_apps_evaluators_on_answered_calls(signals_run: Any) -> None:
    _, events = signals_run
    scored = [e for e in events if e.eval_scores is not None]
    assert {e.app for e in scored} == {"support-agent", "sales-copilot"}
    assert all(e.operation in MODEL_OPERATIONS and e.finish_reason != "error" for e in scored)
    assert {tuple(e.eval_scores) for e in scored if e.app == "sales-copilot"} == {("relevance",)}
    assert all(0.0 <= v <= 1.0 for e in scored for v in e.eval_scores.values())
    support = _model([e for e in events if e.app == "support-agent"])
    assert 0.4 < len([e for e in support if e.eval_scores]) / len(support) < 0.55


def test_eval_drop_lowers_faithfulness_in_its_cohort_only(signals_run: Any) -> None:
    labels, events = signals_run
    inc = next(i for i in labels["incidents"] if i["scenario"] == "eval_drop")
    assert (inc["kind"], inc["signals"], inc["expected_severity"]) == (
        "drift", ["eval_faithfulness"], "sev2")
    during, before = _around(events, inc)
    ratio = _mean_score(during, "faithfulness") / _mean_score(before, "faithfulness")
    assert 0.8 < ratio < 0.9
    assert abs(_mean_score(during, "relevance") - _mean_score(before, "relevance")) < 0.02


def test_spend_surge_switches_the_cohort_to_the_pricier_model(signals_run: Any) -> None:
    labels, events = signals_run
    inc = next(i for i in labels["incidents"] if i["scenario"] == "spend_surge")
    assert (inc["kind"], inc["signals"], inc["expected_severity"]) == ("drift", ["cost"], "sev4")
    during, before = _around(events, inc)
    calls = Counter(e.model for e in _model(during))
    assert calls["m-xlarge"] > 0.95 * calls.total()   # but traces begun just before the switch
    assert {e.model for e in before} == {"m-large"}
    c = inc["cohort"]
    others = [e for e in events if (e.app, e.environment) != (c["app"], c["environment"])
              or e.tenant != c.get("tenant", e.tenant)]
    assert "m-xlarge" not in {e.model for e in others}


def test_leading_indicator_fields_come_only_from_the_scenarios_apps(tmp_path: Path) -> None:
    """escalated and output_entropy appear on the chosen app's model calls alone (its
    background), the surge moves escalations in its span only, and prompt_churn deploys its
    versions in turn."""
    simulate(tmp_path, hours=2.5, seed=4, rate=10.0, scenarios=list(ISSUE_17))
    labels = json.loads((tmp_path / "labels.json").read_text())
    by = {i["scenario"]: i for i in labels["incidents"]}
    events, _ = _decode_all(tmp_path)
    surge, churn = by["escalation_surge"], by["prompt_churn"]
    flagged = [e for e in events if e.escalated is not msgspec.UNSET]
    assert flagged and {e.app for e in flagged} == {surge["cohort"]["app"]}
    assert {e.operation for e in flagged} <= MODEL_OPERATIONS
    assert {e.app for e in events if e.output_entropy is not msgspec.UNSET} == {
        by["entropy_collapse"]["cohort"]["app"]}
    mine = _cohort_events(flagged, surge["cohort"])
    inside = _between(mine, _t(surge["start"]), _t(surge["end"]))
    before = _between(mine, 0.0, _t(surge["start"]))
    assert sum(e.escalated for e in inside) / len(inside) > 3 * (
        sum(e.escalated for e in before) / len(before))
    versions = [e.prompt_version for e in _between(_cohort_events(events, churn["cohort"]),
                                                   _t(churn["start"]), _t(churn["end"]))]
    base = dict(APPS[churn["cohort"]["app"]].versions)["prompt_version"]
    assert len(set(versions) - {base}) == 4   # (a trace begun before it still has the base)
    assert versions[-1] == churn["suspected_change"]["now"]


ISSUE_19 = ("two_changes", "canary_version", "tool_version", "fleet_then_app")


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any],
                                                                  list[TraceEvent]]:
    """Issue 19's scenarios together, 3 h."""
    return _simulated(tmp_path_factory, 3.0, 3, ISSUE_19)


def _during(events: list[TraceEvent], inc: dict[str, Any], lo: float = 0.0,
            hi: float = 0.0) -> list[TraceEvent]:
    t0 = datetime.fromisoformat(inc["start"]).timestamp() + lo
    t1 = datetime.fromisoformat(inc["end"]).timestamp() + hi
    c = inc["cohort"]
    return [e for e in events if t0 <= e.ts < t1 and e.app == c["app"]
            and e.environment == c["environment"]]


def test_issue19_rollouts_are_labelled_and_shaped(rollouts: Any) -> None:
    """A canary on a tenth of the traffic, a tool's new version in place of the old, and an
    earlier benign change (on one app, or on every app) that stays."""
    labels, events = rollouts
    assert not set(ISSUE_19) & set(DEFAULT_SCENARIOS)
    by = {i["scenario"]: i for i in labels["incidents"]}
    assert sorted(by) == sorted(ISSUE_19)
    canary = by["canary_version"]
    assert canary["rollout_share"] == 0.1 and canary["suspected_change"]["field"] == (
        "model_version")
    calls = [e for e in _during(events, canary, 30, -30) if e.operation == "chat"]
    new = [e for e in calls if e.model_version == canary["suspected_change"]["now"]]
    assert 0.07 < len(new) / len(calls) < 0.13
    assert sum(e.refusal is True for e in new) / len(new) > 0.2 > 0.08 > sum(
        e.refusal is True for e in calls if e not in new) / (len(calls) - len(new))
    tool = by["tool_version"]
    old, now = tool["suspected_change"]["baseline"], tool["suspected_change"]["now"]
    assert now == f"{old}-v2"
    names = {e.tool_name for e in _during(events, tool, 30, -30)
             if e.operation == "execute_tool"}
    assert now in names and old not in names
    for name, field, apps in (("two_changes", "prompt_version", 1),
                              ("fleet_then_app", "policy_version", 4)):
        inc = by[name]
        early = inc["earlier_change"]
        assert early["field"] == field and len(early["apps"]) == apps
        at = datetime.fromisoformat(early["at"]).timestamp()
        start = datetime.fromisoformat(inc["start"]).timestamp()
        assert at < start - 600   # well before the harmful change
        app = inc["cohort"]["app"]
        before = {getattr(e, field) for e in events if e.app == app and at - 120 <= e.ts < at}
        after = {getattr(e, field) for e in events if e.app == app and at + 60 <= e.ts < start}
        assert len(after) == 1 and not after & before   # a new value, then it stays
