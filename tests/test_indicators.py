"""Issue 17's leading indicators: escalations and output entropy (optional event fields),
prompt churn, and the canary-versus-production gap, detected at sev4/sev3 and quiet on
clean traffic."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from detector.config import Config, load_config
from detector.core.alert import alert_record
from detector.core.pipeline import Pipeline
from detector.core.severity import RANK
from detector.lab.simulate import simulate

LEADING = ("escalation_surge", "entropy_collapse", "prompt_churn", "canary_regression")
#: The alert each scenario is found by (canary_regression's own refusal alert aside).
FOUND_BY = {"escalation_surge": "escalation_rate", "entropy_collapse": "output_entropy",
            "prompt_churn": "prompt_churn", "canary_regression": "canary_gap"}
INDICATORS = ("escalation_rate", "output_entropy", "prompt_churn", "canary_gap")
WINDOW = 60.0


def _t(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _replay(config: Config, lines: list[bytes], shards: int = 1) -> list[dict[str, Any]]:
    pipe = Pipeline(config, shards=shards)
    out = []
    for i in range(0, len(lines), 4096):
        out += pipe.feed_many(lines[i:i + 4096])
    out += pipe.finish()
    return [alert_record(a) for a in out]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(None, env=False)


@pytest.fixture(scope="module")
def leading(tmp_path_factory: pytest.TempPathFactory, config: Config
            ) -> tuple[dict[str, Any], list[bytes], list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("leading")
    simulate(out, hours=3, seed=3, rate=40.0, scenarios=list(LEADING))
    labels = json.loads((out / "labels.json").read_text())
    lines = (out / "traces.jsonl").read_bytes().splitlines()
    return labels, lines, _replay(config, lines)


@pytest.mark.parametrize("scenario", LEADING)
def test_each_leading_indicator_is_detected_on_its_cohort_at_its_severity(
        leading: tuple[dict[str, Any], list[bytes], list[dict[str, Any]]], scenario: str) -> None:
    labels, _, alerts = leading
    inc = next(i for i in labels["incidents"] if i["scenario"] == scenario)
    start, end = _t(inc["start"]), _t(inc["end"])
    found = [a for a in alerts if a["signal"] == FOUND_BY[scenario] and a["status"] == "firing"
             and all(a["cohort"].get(k) == v for k, v in inc["cohort"].items())
             and start < _t(a["window"]["end"]) <= end + 2 * WINDOW]
    assert found, scenario
    worst = min((a["severity"] for a in found), key=RANK.__getitem__)
    assert worst == inc["expected_severity"], [a["summary"] for a in found]
    if scenario != "prompt_churn":   # the first windows: it is a leading indicator
        assert _t(found[0]["window"]["end"]) <= start + 5 * WINDOW
    change = found[-1]["suspected_change"]
    assert change is not None and change["field"] == inc["suspected_change"]["field"]


def test_leading_indicators_never_page_and_stay_inside_their_incidents(
        leading: tuple[dict[str, Any], list[bytes], list[dict[str, Any]]]) -> None:
    """sev3 at most; and no indicator alert starts away from an incident (the fields are
    reported all along by the scenarios' apps, from the first event)."""
    labels, _, alerts = leading
    spans = [(_t(i["start"]), _t(i["end"])) for i in labels["incidents"]]
    mine = [a for a in alerts if a["signal"] in INDICATORS]
    assert mine and all(RANK[a["severity"]] >= 3 for a in mine)
    stray = [a["summary"] for a in mine if a["status"] == "firing" and not any(
        s - WINDOW < _t(a["starts_at"]) <= e + 2 * WINDOW for s, e in spans)]
    assert stray == []


def test_the_canary_gap_names_both_cohorts_and_never_text(
        leading: tuple[dict[str, Any], list[bytes], list[dict[str, Any]]]) -> None:
    _, _, alerts = leading
    gap = next(a for a in alerts if a["signal"] == "canary_gap")
    assert gap["cohort"]["environment"] == "canary"
    assert "in canary vs" in gap["summary"] and "environment=production" in gap["summary"]
    assert "refusal_rate" in gap["summary"] and gap["observed"] > gap["expected"]
    assert gap["evidence"]["trace_ids"]
    assert gap["runbook_url"] == "https://runbooks.example.com/ai/canary-gap"


def test_sharded_stage2_gives_the_same_leading_alerts(
        leading: tuple[dict[str, Any], list[bytes], list[dict[str, Any]]], config: Config) -> None:
    _, lines, alerts = leading
    assert _replay(config, lines, shards=3) == alerts


# -- the canary gap, both ways, on hand-made windows ------------------------------------------
T0 = 1_767_225_600.0   # 2026-01-01, a window boundary


def _window(w: int, env: str, calls: int, refusals: int, tenant: str = "t1") -> bytes:
    evs = [{"ts": T0 + w * WINDOW + 30 + i * 0.01, "operation": "chat", "tenant": tenant,
            "app": "a", "environment": env, "refusal": i < refusals,
            "trace_id": f"{w:08x}{i:08x}{0:016x}", "prompt_version": f"{env}-v1"}
           for i in range(calls)]
    return orjson.dumps(evs)


def _gap_run(config: Config, drift: str | None, windows: int = 70, at: int = 50
             ) -> list[dict[str, Any]]:
    """Production (600 calls a window) and canary (60) at a 5 % refusal rate; from window
    ``at`` the ``drift`` environment's rate is 30 %."""
    msgs = []
    for w in range(windows):
        for env, calls in (("production", 600), ("canary", 60)):
            rate = 0.3 if env == drift and w >= at else 0.05
            msgs.append(_window(w, env, calls, round(calls * rate)))
    msgs.append(_window(windows + 2, "production", 1, 0))   # closes the last windows
    pipe = Pipeline(config)
    out = []
    for m in msgs:
        out += pipe.feed_many([m])
    return [alert_record(a) for a in out]


@pytest.mark.parametrize("drift", ["canary", "production"])
def test_the_gap_is_seen_both_ways_and_resolves(config: Config, drift: str) -> None:
    """The canary drifting while production holds, and production drifting while the canary
    holds: the same canary_gap alert on the canary cohort, its sign the direction."""
    every = _gap_run(config, drift)
    alerts = [a for a in every if a["signal"] == "canary_gap"]
    firing = [a for a in alerts if a["status"] == "firing"]
    assert firing and firing[0]["cohort"] == {"app": "a", "environment": "canary"}
    assert _t(firing[0]["window"]["end"]) <= T0 + 53 * WINDOW
    assert (firing[0]["score"] > 0) == (drift == "canary")
    assert max(RANK[a["severity"]] for a in firing) == 4 and firing[-1]["severity"] == "sev3"
    if drift == "canary":   # the environments' difference
        assert firing[0]["suspected_change"] == {"field": "prompt_version",
                                                 "baseline": "production-v1", "now": "canary-v1"}
    else:   # production pages on its own: the gap names what that alert names
        own = [a for a in every if a["signal"] == "refusal_rate"
               and a["cohort"].get("environment") == "production"
               and a["window"]["end"] <= firing[0]["window"]["end"]]
        assert own and firing[0].get("suspected_change") == own[-1].get("suspected_change")


def test_no_gap_on_equal_environments_or_when_turned_off(config: Config) -> None:
    assert [a for a in _gap_run(config, None) if a["signal"] == "canary_gap"] == []
    off = msgspec.structs.replace(config, signals={
        **config.signals, "canary_gap": msgspec.structs.replace(
            config.signal("canary_gap"), enabled=False)})
    assert [a for a in _gap_run(off, "canary") if a["signal"] == "canary_gap"] == []


def test_prompt_churn_counts_new_versions_not_the_first_ones(config: Config) -> None:
    """Two new prompt versions are no churn at the default threshold of three; a third is,
    and the alert names the newest against the one before."""
    def run(versions: int) -> list[dict[str, Any]]:
        msgs = []
        for w in range(80):
            v = min(max(0, (w - 30) // 10 + 1), versions) if w >= 30 else 0
            msgs.append(orjson.dumps([{"ts": T0 + w * WINDOW + 30 + i * 0.01,
                                       "operation": "chat", "tenant": "t1", "app": "a",
                                       "prompt_version": f"v{v}"} for i in range(50)]))
        msgs.append(orjson.dumps({"ts": T0 + 90 * WINDOW, "operation": "chat", "app": "a"}))
        pipe = Pipeline(config)
        out = []
        for m in msgs:
            out += pipe.feed_many([m])
        return [alert_record(a) for a in out if a.signal == "prompt_churn"]

    assert run(2) == []
    churn = run(3)
    assert churn and churn[0]["severity"] == "sev4"
    assert churn[0]["cohort"] == {"app": "a", "environment": "production"}
    assert churn[0]["suspected_change"] == {"field": "prompt_version", "baseline": "v2",
                                            "now": "v3"}
    assert churn[0]["observed"] == 3.0 and "3 new prompt versions" in churn[0]["summary"]


def test_clean_traffic_with_the_new_fields_is_quiet(tmp_path: Path, config: Config) -> None:
    """The scenarios' apps report escalations and entropy from the first event; with the
    incidents cut out of the file (benign traffic only), no indicator fires."""
    simulate(tmp_path, hours=4, seed=5, rate=20.0, scenarios=["escalation_surge",
                                                              "entropy_collapse"])
    labels = json.loads((tmp_path / "labels.json").read_text())
    first = min(_t(i["start"]) for i in labels["incidents"])
    lines = [x for x in (tmp_path / "traces.jsonl").read_bytes().splitlines()
             if b'"ts"' in x and _ts(x) < first]
    assert any(b"output_entropy" in x for x in lines) and any(b"escalated" in x for x in lines)
    alerts = _replay(config, lines)
    assert [a["summary"] for a in alerts if RANK[a["severity"]] < 4] == []
    assert [a["summary"] for a in alerts if a["signal"] in INDICATORS] == []


def _ts(line: bytes) -> float:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return 0.0
    first = doc[0] if isinstance(doc, list) and doc else doc
    ts = first.get("ts", 0.0) if isinstance(first, dict) else 0.0
    return _t(ts) if isinstance(ts, str) else float(ts)
