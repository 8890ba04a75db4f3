"""The text a newcomer reads: alert summaries and the demo's rows, warm-up lines and recap."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detector.config import load_config
from detector.core.alert import Alert, alert_record
from detector.core.containment import Call
from detector.core.pipeline import Pipeline
from detector.lab.demo import (
    InTimeOrder,
    _config,
    call_line,
    recap,
    row_lines,
    row_time,
    warmup_line,
)
from detector.lab.flag_server import FlagCall, FlagServer, verify
from detector.lab.simulate import simulate
from detector.sinks.alertmanager_mapping import to_postable
from detector.sinks.containment import ContainmentCaller, sign


@pytest.fixture(scope="module")
def new_version_alerts(tmp_path_factory: pytest.TempPathFactory) -> list[Alert]:
    """A hard-rule incident that comes with a prompt version the baseline never saw."""
    out = tmp_path_factory.mktemp("sim")
    simulate(out, hours=1.5, seed=7, scenarios=["unauthorized_tool"], rate=5)
    p = Pipeline(load_config(None, env=False))
    return p.feed_many((out / "traces.jsonl").read_bytes().splitlines()) + p.finish()


def test_a_new_version_reads_as_new_not_as_none(new_version_alerts: list[Alert]) -> None:
    records = [alert_record(a) for a in new_version_alerts]
    fresh = [(a, r) for a, r in zip(new_version_alerts, records, strict=True)
             if r["suspected_change"] and r["suspected_change"]["baseline"] is None]
    assert fresh, "the scenario should name a version the baseline never saw"
    for a, r in fresh:
        now = r["suspected_change"]["now"]
        assert "None" not in r["summary"]
        assert f"{r['suspected_change']['field']} {now} (new)" in r["summary"]
        _, annotations = to_postable(a, ("tenant", "app", "environment"))
        assert "None" not in annotations["description"]
        assert f"{now} (new)" in annotations["description"]


def _alert(summary: str, status: str = "firing", **kw: object) -> dict:
    return {"id": "i", "status": status, "severity": "sev2", "signal": "refusal_rate",
            "cohort": {"tenant": "t01", "app": "coding-assistant", "environment": "production"},
            "starts_at": "2026-01-05T01:05:00Z", "ends_at": None, "expected": 0.02,
            "window": {"start": "2026-01-05T01:06:00Z", "end": "2026-01-05T01:07:00Z"},
            "summary": summary, **kw}


def test_rows_keep_the_whole_summary_without_cutting_a_word() -> None:
    summary = ("[sev2] refusal_rate above baseline: 0.1161 vs 0.02065 expected, score +6.0 for "
               "2 window(s) in tenant=t01 app=coding-assistant environment=production; "
               "suspected change policy_version p3 -> p4")
    lines = row_lines(_alert(summary), width=60)
    assert lines[0].startswith("2026-01-05 01:07:00  sev2   firing")
    body = [ln.strip() for ln in lines[1:]]
    assert " ".join(body) == summary
    assert all(len(ln) <= 60 for ln in lines[1:])


def test_a_resolution_is_placed_when_the_detector_could_know_it() -> None:
    done = _alert("RESOLVED …", status="resolved", ends_at="2026-01-05T01:02:10Z")
    # five clean windows after the window of the last hit (01:02–01:03)
    assert row_time(done, clean_windows=5, size=60) == "2026-01-05T01:08:00Z"
    assert "ended 01:02" in row_lines(done)[0]
    adopted = {**done, "resolution": "baseline_adopted"}
    assert row_time(adopted) == "2026-01-05T01:02:10Z"


def test_rows_come_out_in_time_order() -> None:
    rows = InTimeOrder(hold=150)
    for t in (300, 100, 460, 200):
        rows.add(t, t)
    assert rows.ready(now=400) == [100, 200]
    assert rows.ready(now=400) == []
    assert rows.rest() == [300, 460]


def test_the_warm_up_says_what_it_waits_for() -> None:
    assert re.search(r"learning baselines: 12/20 windows", warmup_line("2026-01-05T00:12:00Z",
                                                                        12, 20))
    assert "baselines learned" in warmup_line("2026-01-05T00:20:00Z", 20, 20)


def test_the_recap_matches_alerts_to_what_was_planted() -> None:
    planted = [
        {"scenario": "refusal_spike", "signals": ["refusal_rate"],
         "cohort": {"app": "coding-assistant", "environment": "production", "tenant": "t01"},
         "start": "2026-01-05T01:05:00.000Z"},
        {"scenario": "traffic_drop", "signals": ["volume"],
         "cohort": {"app": "sales-copilot", "environment": "production"},
         "start": "2026-01-05T01:31:00.000Z"},
    ]
    alerts = [_alert("a", severity="sev4"), _alert("b"),
              _alert("c", status="resolved", ends_at="2026-01-05T01:27:00Z")]
    text = "\n".join(recap(alerts, planted))
    assert re.search(r"refusal_spike +from 01:05:00 +sev4 at 01:07:00 \(refusal_rate\)", text)
    assert re.search(r"traffic_drop +from 01:31:00 +no alert before the demo ended", text)
    assert "1 incident(s) (sev2 1), 3 message(s): 2 firing, 1 resolved" in text
    assert "refusals per model call" in text and "sev2  sustained" in text
    assert "None" not in text


def test_the_demo_config_still_finds_what_it_replaces(tmp_path: Path) -> None:
    text = _config(tmp_path / "c.toml", "127.0.0.1:1234", 4321).read_text()
    assert 'brokers = "127.0.0.1:1234"' in text and "port = 4321" in text
    assert "log = false" in text and "idle_partition_timeout_seconds = 3\n" in text


def test_the_recap_describes_a_safety_signal_of_the_configured_labels() -> None:
    alert = _alert("a", signal="safety_prompt_injection")
    text = "\n".join(recap([alert], [], ("pii", "prompt_injection")))
    assert "prompt_injection safety hits per event off its baseline" in text


def test_demo_containment_calls_its_flag_endpoint_signed_and_undoes_it(
        tmp_path: Path, new_version_alerts: list[Alert]) -> None:
    """`demo --containment`: the rule the demo adds loads as a non-dry-run sev1 rule, and a
    real caller's call and undo reach the demo's flag endpoint verified; a call signed with
    another secret is refused (401: the call fails) and sets nothing."""
    (tmp_path / "hmac").write_text("demo-secret")
    seen: list[FlagCall] = []
    server = FlagServer(b"demo-secret", on_call=seen.append).start()
    caller: ContainmentCaller | None = None
    try:
        cfg = load_config(_config(tmp_path / "c.toml", "127.0.0.1:1", 1,
                                  (server.url, tmp_path / "hmac")), env=False)
        [rule] = cfg.containment
        assert (rule.name, rule.dry_run, rule.severities) == ("safe_mode", False, ["sev1"])
        fired = next(a for a in new_version_alerts if a.severity == "sev1")
        resolved = next(a for a in new_version_alerts
                        if a.id == fired.id and a.status == "resolved")
        results: list[str] = []
        caller = ContainmentCaller(cfg.containment,
                                   on_result=lambda _id, _a, status, _t: results.append(status))
        caller.submit(Call(rule, fired, False))
        caller.submit(Call(rule, resolved, True))
        assert caller.flush(30)
        assert results == ["ok", "undo_ok"]
        path = f"/tenants/{fired.cohort['tenant']}/apps/{fired.cohort['app']}/flags/safe_mode"
        assert [(c.method, c.path, c.alert_id, c.undo, c.body["enabled"], c.verified)
                for c in seen] == [("PUT", path, fired.id, False, True, True),
                                   ("PUT", path, fired.id, True, False, True)]
        assert server.flags == {path: False}
        line = call_line("2026-01-05T01:00:40Z", seen[0])
        assert f"contain  PUT {path}  signed: 204" in line and fired.id in line
        (tmp_path / "hmac").write_text("not-the-demo-secret")
        caller.submit(Call(rule, fired, False))
        assert caller.flush(30)
        assert results[-1] == "failed" and not seen[-1].verified
        assert server.flags == {path: False}
        assert "signature refused: 401" in call_line("2026-01-05T01:00:40Z", seen[-1])
    finally:
        if caller is not None:
            caller.close()
        server.stop()


def test_the_flag_endpoint_refuses_a_stale_or_malformed_signature() -> None:
    body = b'{"enabled":true}'
    assert verify(b"k", sign(b"k", 1_700_000_000, body), body, now=1_700_000_100)
    assert not verify(b"k", sign(b"k", 1_700_000_000, body), body, now=1_700_000_400)
    assert not verify(b"k", sign(b"k", 1_700_000_000, body), b'{"enabled":false}',
                      now=1_700_000_000)
    for header in ("", "t=x,v1=00", "v1=00", "t=1700000000"):
        assert not verify(b"k", header, body, now=1_700_000_000)
