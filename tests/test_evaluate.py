"""Tests for detector.lab.evaluate: matching, tolerances, severity, false alerts, the CLI."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.lab.evaluate import add_arguments, evaluate, render, run
from detector.lab.simulate import simulate

T0 = datetime(2026, 1, 5, tzinfo=UTC)
W = 60.0


def _at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def _labels() -> dict[str, Any]:
    """Two hours; a tenant drift, a canary drift, a hard rule and a benign deploy."""
    return {
        "start": _at(0), "end": _at(120), "window_hint_seconds": 60, "incidents": [
            {"id": "inc-01", "scenario": "refusal_spike", "kind": "drift",
             "signals": ["refusal_rate"],
             "cohort": {"tenant": "t01", "app": "support-agent", "environment": "production"},
             "start": _at(60), "end": _at(75), "expected_severity": "sev2",
             "suspected_change": {"field": "prompt_version", "baseline": "v42", "now": "v43"},
             "trace_ids": []},
            {"id": "inc-02", "scenario": "unauthorized_tool", "kind": "hard_rule",
             "signals": ["unauthorized_tool_call"],
             "cohort": {"tenant": "t02", "app": "payments-agent", "environment": "production"},
             "start": "2026-01-05T01:30:00.123Z", "end": "2026-01-05T01:33:00.000Z",
             "expected_severity": "sev1", "suspected_change": None, "trace_ids": []},
            {"id": "inc-03", "scenario": "benign_deploy", "kind": "benign", "signals": [],
             "cohort": {"app": "sales-copilot", "environment": "production"},
             "start": _at(90), "end": _at(100), "expected_severity": None,
             "suspected_change": {"field": "model_version", "baseline": "a", "now": "b"},
             "trace_ids": []},
            {"id": "inc-04", "scenario": "canary_regression", "kind": "drift",
             "signals": ["refusal_rate"],
             "cohort": {"app": "support-agent", "environment": "canary"},
             "start": _at(100), "end": _at(110), "expected_severity": "sev3",
             "suspected_change": None, "trace_ids": []},
        ]}


def _alert(aid: str, signal: str, cohort: dict[str, str], end: str, severity: str = "sev2",
           status: str = "firing", change: dict[str, str] | None = None) -> dict[str, Any]:
    return {"id": aid, "status": status, "severity": severity, "signal": signal,
            "cohort": cohort, "starts_at": end, "observed": 1.0, "score": 5.0,
            "window": {"start": end, "end": end, "events": 10}, "suspected_change": change,
            "evidence": {"trace_ids": []}, "summary": "s"}


T01 = {"tenant": "t01", "app": "support-agent", "environment": "production"}
APP = {"app": "support-agent", "environment": "production"}


def _row(report: dict[str, Any], iid: str) -> dict[str, Any]:
    return next(r for r in report["incidents"] if r["id"] == iid)


def test_match_needs_the_signal_and_a_compatible_cohort() -> None:
    alerts = [
        _alert("wrong-signal", "latency_ms", T01, _at(62)),
        _alert("other-tenant", "refusal_rate", {**T01, "tenant": "t09"}, _at(62)),
        _alert("other-env", "refusal_rate", {**APP, "environment": "canary"}, _at(62)),
    ]
    r = evaluate(_labels(), alerts)
    assert not _row(r, "inc-01")["detected"]
    assert r["summary"]["false_alerts"] == 3
    for cohort in (T01, APP, {**T01, "region": "eu-west-1"}, {"app": "support-agent"}):
        r = evaluate(_labels(), [_alert("a", "refusal_rate", cohort, _at(62))])
        assert _row(r, "inc-01")["detected"], cohort
        assert r["summary"]["false_alerts"] == 0


def test_tenant_alert_matches_an_app_wide_incident() -> None:
    cohort = {"tenant": "t05", "app": "support-agent", "environment": "canary"}
    r = evaluate(_labels(), [_alert("a", "refusal_rate", cohort, _at(101), "sev3")])
    assert _row(r, "inc-04")["detected"] and _row(r, "inc-04")["severity_ok"]


@pytest.mark.parametrize(("minute", "matches"), [
    (59.0, True), (59.0 - 1 / 60, False),  # one window before the start, not more
    (78.0, True), (78.0 + 1 / 60, False),  # three windows after the end, not more
])
def test_time_tolerance_edges(minute: float, matches: bool) -> None:
    r = evaluate(_labels(), [_alert("a", "refusal_rate", T01, _at(minute))])
    assert _row(r, "inc-01")["detected"] is matches
    assert r["summary"]["false_alerts"] == (0 if matches else 1)


def test_detection_time_is_the_first_firing_window_end() -> None:
    records = [
        _alert("a", "refusal_rate", T01, _at(62), "sev4"),
        _alert("a", "refusal_rate", T01, _at(64), "sev2"),  # severity change, same id
        _alert("a", "refusal_rate", T01, _at(80), "sev2", status="resolved"),
    ]
    r = evaluate(_labels(), records)
    row = _row(r, "inc-01")
    assert row["ttd_seconds"] == 120.0 and row["ttd_windows"] == 2
    assert row["max_severity"] == "sev2" and row["severity_ok"]
    assert r["summary"]["alerts"] == 1
    # A resolved record first in the file does not make the detection time.
    r = evaluate(_labels(), [records[2], records[0]])
    assert _row(r, "inc-01")["ttd_seconds"] == 120.0


def test_ttd_in_windows_rounds_up_and_counts_within_three() -> None:
    r = evaluate(_labels(), [_alert("a", "refusal_rate", T01, _at(61))])
    assert _row(r, "inc-01")["ttd_windows"] == 1
    r = evaluate(_labels(), [_alert("a", "refusal_rate", T01,
                                    "2026-01-05T01:03:00.001Z")])
    assert _row(r, "inc-01")["ttd_windows"] == 4
    assert r["summary"]["drift_within_3_windows"] == 0 and r["summary"]["drift_detected"] == 1
    r = evaluate(_labels(), [_alert("a", "refusal_rate", T01, _at(59.5))])
    assert _row(r, "inc-01")["ttd_windows"] == 0  # early by less than a window: immediate
    assert r["summary"]["drift_within_3_windows"] == 1


def test_windows_count_from_the_drift_point_and_seconds_from_the_start() -> None:
    labels = _labels()
    labels["incidents"][0]["drift_point"] = _at(70)   # a ramp from 60, half-way at 70
    r = evaluate(labels, [_alert("a", "refusal_rate", T01, _at(66))])
    row = _row(r, "inc-01")
    assert row["ttd_seconds"] == 360.0 and row["ttd_windows"] == 0   # before the midpoint
    assert row["drift_point"] == "2026-01-05T01:10:00.000Z"
    assert r["summary"]["drift_within_3_windows"] == 1
    r = evaluate(labels, [_alert("a", "refusal_rate", T01, _at(73.5))])
    assert _row(r, "inc-01")["ttd_windows"] == 4
    assert r["summary"]["drift_within_3_windows"] == 0
    # Without a drift point, the start: the same alert is 14 windows late.
    r = evaluate(_labels(), [_alert("a", "refusal_rate", T01, _at(73.5))])
    assert _row(r, "inc-01")["ttd_windows"] == 14


def test_simulated_labels_put_the_drift_point_at_the_centre_of_the_transition(
        tmp_path: Path) -> None:
    simulate(tmp_path, hours=4.0, seed=1, rate=20.0,
             scenarios=["slow_ramp", "human_overrides", "refusal_spike"])
    labels = json.loads((tmp_path / "labels.json").read_text())
    got = {i["scenario"]: i for i in labels["incidents"]}
    ramp, over, step = got["slow_ramp"], got["human_overrides"], got["refusal_spike"]
    assert step["drift_point"] == step["start"]
    assert _secs(over["drift_point"]) - _secs(over["start"]) == 62.5   # mean of 5-120 s
    # A ramp of 60-90 minutes, then 5-10 at full strength: its midpoint is 30-45 min in.
    assert 30 * 60 <= _secs(ramp["drift_point"]) - _secs(ramp["start"]) <= 45 * 60
    assert _secs(ramp["drift_point"]) < _secs(ramp["end"])


def _secs(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def test_severity_accuracy_uses_the_most_severe_matching_alert() -> None:
    alerts = [
        _alert("app", "refusal_rate", APP, _at(63), "sev4"),
        _alert("tenant", "refusal_rate", T01, _at(65), "sev3"),
        _alert("canary", "refusal_rate", {"app": "support-agent", "environment": "canary"},
               _at(102), "sev3"),
    ]
    r = evaluate(_labels(), alerts)
    row = _row(r, "inc-01")
    assert row["max_severity"] == "sev3" and row["severity_ok"] is False
    assert row["ttd_seconds"] == 180.0  # the earliest matching alert detects
    s = r["summary"]
    assert (s["severity_checked"], s["severity_correct"], s["severity_accuracy"]) == (2, 1, 0.5)
    assert s["recall"] == pytest.approx(2 / 3)


def test_false_alerts_per_hour_by_severity() -> None:
    alerts = [
        _alert("f1", "latency_ms", APP, _at(10), "sev2"),
        _alert("f2", "volume", APP, _at(20), "sev4"),
        _alert("f3", "volume", APP, _at(30), "sev4"),
        _alert("ok", "refusal_rate", T01, _at(61)),
    ]
    s = evaluate(_labels(), alerts)["summary"]
    assert s["false_alerts"] == 3 and s["false_alerts_per_hour"] == 1.5  # 2 h of event time
    assert s["false_alerts_by_severity"] == {"sev1": 0, "sev2": 1, "sev3": 0, "sev4": 2}
    assert sorted(s["false_alert_ids"]) == ["f1", "f2", "f3"]


def test_benign_change_alerts_are_false_and_sev1_to_3_are_violations() -> None:
    cohort = {"tenant": "t03", "app": "sales-copilot", "environment": "production"}
    alerts = [
        _alert("loud", "output_tokens", cohort, _at(92), "sev2"),
        _alert("quiet", "latency_ms", cohort, _at(93), "sev4"),
        _alert("outside", "latency_ms", cohort, _at(104), "sev2"),  # after end + 3 windows
    ]
    r = evaluate(_labels(), alerts)
    s = r["summary"]
    assert s["false_alerts"] == 3 and s["benign_violations"] == ["loud"]
    assert _row(r, "inc-03")["benign_violation"] is True
    assert s["incidents"] == 3  # the benign change is not counted in recall
    assert "VIOLATED" in render(r)


def test_hard_rule_detected_at_the_offending_event() -> None:
    cohort = {"tenant": "t02", "app": "payments-agent", "environment": "production"}
    exact = _alert("r1", "unauthorized_tool_call", cohort, "2026-01-05T01:30:00.123+00:00",
                   "sev1")
    r = evaluate(_labels(), [exact])
    row = _row(r, "inc-02")
    assert row["detected"] and row["at_event"] and row["severity_ok"]
    assert r["summary"]["hard_rule_at_event"] == 1
    late = _alert("r2", "unauthorized_tool_call", cohort, "2026-01-05T01:31:00.000Z", "sev1")
    r = evaluate(_labels(), [late])
    assert _row(r, "inc-02")["detected"] and _row(r, "inc-02")["at_event"] is False
    assert r["summary"]["hard_rule_at_event"] == 0


def test_suspected_change_named_correctly() -> None:
    right = {"field": "prompt_version", "baseline": "v42", "now": "v43"}
    wrong = {"field": "model_version", "baseline": "x", "now": "y"}
    for change, want in ((right, True), (wrong, False), (None, False)):
        r = evaluate(_labels(), [_alert("a", "refusal_rate", T01, _at(62), change=change)])
        assert _row(r, "inc-01")["suspected_change_ok"] is want
    r = evaluate(_labels(), [])
    assert _row(r, "inc-01")["suspected_change_ok"] is None  # not detected: nothing to judge
    assert _row(r, "inc-04")["suspected_change_ok"] is None  # no change labelled


def test_nothing_detected_and_nothing_labelled() -> None:
    r = evaluate(_labels(), [])
    assert r["summary"]["recall"] == 0.0 and r["summary"]["false_alerts"] == 0
    empty = {"start": _at(0), "end": _at(60), "incidents": []}
    r = evaluate(empty, [_alert("a", "volume", APP, _at(5), "sev4")])
    assert r["summary"]["recall"] is None and r["summary"]["false_alerts_per_hour"] == 1.0


def test_bad_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="has no 'signal'"):
        evaluate(_labels(), [{"id": "a", "cohort": {}, "severity": "sev2"}])
    with pytest.raises(ValueError, match="labels"):
        evaluate({"incidents": []}, [])


def test_render_is_an_aligned_table_with_summary_lines() -> None:
    r = evaluate(_labels(), [_alert("a", "refusal_rate", T01, _at(62))])
    text = render(r)
    lines = text.splitlines()
    header = lines[0]
    assert header.split()[:3] == ["id", "scenario", "cohort"]
    body = lines[1:5]
    col = header.index("cohort")
    assert all(line[col - 2: col] == "  " for line in body)  # columns line up
    assert "t01/support-agent/production" in text and "*/support-agent/canary" in text
    for needle in ("recall: 1/3", "severity accuracy: 1/1", "false alerts: 0 of 1",
                   "hard rules alerted at the offending event: 0/1"):
        assert needle in text, needle


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels, alerts = tmp_path / "labels.json", tmp_path / "alerts.jsonl"
    labels.write_text(json.dumps(_labels()))
    alerts.write_text(json.dumps(_alert("a", "refusal_rate", T01, _at(62))) + "\n\n")
    assert run(_args(["--labels", str(labels), "--alerts", str(alerts)])) == 0
    assert "recall: 1/3" in capsys.readouterr().out
    assert run(_args(["--labels", str(labels), "--alerts", str(alerts), "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["detected"] == 1
    assert run(_args(["--labels", str(tmp_path / "missing.json"),
                      "--alerts", str(alerts)])) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "Traceback" not in err
    alerts.write_text('{"id": "a"\n')
    assert run(_args(["--labels", str(labels), "--alerts", str(alerts)])) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err
    labels.write_text("[1, 2]")
    alerts.write_text("")
    assert run(_args(["--labels", str(labels), "--alerts", str(alerts)])) == 2


def test_oracle_alerts_on_simulated_labels_score_perfectly(tmp_path: Path) -> None:
    """Alerts built from the labels themselves: full recall, no false alerts."""
    simulate(tmp_path, hours=3, rate=2.0, seed=4,
             scenarios=["refusal_spike", "secret_leak", "canary_regression", "benign_deploy"])
    labels = json.loads((tmp_path / "labels.json").read_text())
    alerts = []
    for inc in labels["incidents"]:
        if inc["kind"] == "benign":
            continue
        end = inc["start"] if inc["kind"] == "hard_rule" else \
            (datetime.fromisoformat(inc["start"]) + timedelta(minutes=2)).isoformat()
        alerts.append(_alert(inc["id"], inc["signals"][0], inc["cohort"], end,
                             inc["expected_severity"], change=inc["suspected_change"]))
    r = evaluate(labels, alerts)
    s = r["summary"]
    assert s["recall"] == 1.0 and s["false_alerts"] == 0 and s["severity_accuracy"] == 1.0
    assert s["hard_rule_at_event"] == 1 and s["suspected_change_correct"] == 2
    assert s["drift_within_3_windows"] == 2


def test_benign_labels_bound_severity_and_firing_time() -> None:
    """A change that stays (issue 12's benign_shift): a short page at the change is allowed
    by its label, firing for more than two hours of event time is not, nor a sev1."""
    labels = _labels()
    labels["end"] = _at(300)
    shift = {"id": "inc-05", "scenario": "benign_shift", "kind": "benign",
             "signals": ["latency_ms", "output_tokens"], "cohort": {"app": "coding-assistant",
                                                   "environment": "production"},
             "start": _at(130), "end": _at(300), "expected_severity": None,
             "max_severity": "sev2", "max_firing_seconds": 7200.0,
             "suspected_change": None, "trace_ids": []}
    labels["incidents"].append(shift)
    cohort = {"tenant": "t03", "app": "coding-assistant", "environment": "production"}
    short = [_alert("short", "latency_ms", cohort, _at(131), "sev4"),
             _alert("short", "latency_ms", cohort, _at(134), "sev2"),
             {**_alert("short", "latency_ms", cohort, _at(170), "sev2", "resolved"),
              "ends_at": _at(170)}]
    r = evaluate(labels, short)
    row = _row(r, "inc-05")
    assert not row["benign_violation"] and r["summary"]["benign_violations"] == []
    assert row["longest_firing_seconds"] == 39 * 60.0       # 131 -> 170
    assert (row["allowed_severity"], row["allowed_firing_seconds"]) == ("sev2", 7200.0)
    assert r["summary"]["benign_changes"] == 2 and r["summary"]["benign_changes_ok"] == 2
    # Never resolved: it fires to the end of the input, 169 minutes.
    stuck = _alert("stuck", "output_tokens", cohort, _at(131), "sev4")
    loud = _alert("loud", "latency_ms", cohort, _at(200), "sev1")
    r = evaluate(labels, [*short, stuck, loud])
    row = _row(r, "inc-05")
    assert row["benign_violation"] and row["violating_alert_ids"] == ["stuck", "loud"]
    assert row["longest_firing_seconds"] == 169 * 60.0
    assert r["summary"]["benign_violations"] == ["loud", "stuck"]
    assert r["summary"]["benign_changes_ok"] == 1
    assert "VIOLATED (fired 169 min)" in render(r)
    # A benign label that names its signals answers for those only (another change may
    # share the app).
    other = _alert("other", "refusal_rate", cohort, _at(131), "sev2")
    r = evaluate(labels, [*short, other])
    assert "other" not in _row(r, "inc-05")["alert_ids"]
    assert not _row(r, "inc-05")["benign_violation"]
    assert "other" in r["summary"]["false_alert_ids"]


def test_an_alert_a_real_incident_explains_is_no_benign_violation() -> None:
    labels = _labels()
    labels["incidents"][2]["cohort"] = APP     # the benign deploy overlaps inc-01's tenant
    labels["incidents"][2]["start"], labels["incidents"][2]["end"] = _at(60), _at(70)
    r = evaluate(labels, [_alert("real", "refusal_rate", T01, _at(62), "sev2")])
    assert _row(r, "inc-01")["detected"]
    assert not _row(r, "inc-03")["benign_violation"]
    assert r["summary"]["benign_violations"] == []
