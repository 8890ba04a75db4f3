"""`detector incident`: the Markdown drafts for one alert, against a golden file.

The fixture holds two alerts' emissions (a refusal spike that escalates, is contained and
resolves; an unrelated hard-rule alert in between). After a deliberate change to the drafts,
regenerate the golden file with
``detector incident a-54b4e09024827981ecb1 --alerts tests/fixtures/incident/alerts.jsonl
> tests/fixtures/incident/expected.md`` and read the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "incident"
ALERT = "a-54b4e09024827981ecb1"


def test_drafts_match_the_golden_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["incident", ALERT, "--alerts", str(FIXTURES / "alerts.jsonl")]) == 0
    out = capsys.readouterr().out
    assert out == (FIXTURES / "expected.md").read_text("utf-8")
    # Both drafts, and only this alert's emissions.
    assert "## First notification (draft)" in out and "## Postmortem (skeleton)" in out
    assert "dddddddd" not in out and "unauthorized_tool_call" not in out


def test_an_unknown_id_or_a_bad_file_is_a_clear_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["incident", "a-nope", "--alerts", str(FIXTURES / "alerts.jsonl")]) == 1
    assert "no alert a-nope" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id":"a-1","status":"firing"}\n')
    assert main(["incident", "a-1", "--alerts", str(bad)]) == 2
    assert "bad.jsonl:1: not an alert" in capsys.readouterr().err
    assert main(["incident", "a-1", "--alerts", str(tmp_path / "absent.jsonl")]) == 2


def test_a_file_or_kafka_exactly_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["incident", ALERT, "--kafka", "--alerts", str(FIXTURES / "alerts.jsonl")])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["incident", ALERT])
    assert e.value.code == 2
    assert "one of the arguments --alerts --kafka is required" in capsys.readouterr().err


def test_kafka_arguments_are_checked_before_any_connection(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["incident", ALERT, "--kafka", "--since", "yesterday"]) == 2
    assert "'yesterday' is not an ISO 8601 time" in capsys.readouterr().err
    assert main(["incident", ALERT, "--kafka", "--since", "2026-01-02T00:00:00Z",
                 "--until", "2026-01-01T00:00:00Z"]) == 2
    assert "is not after --since" in capsys.readouterr().err


def test_the_alerts_links_are_in_the_evidence(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An alert with ``[links]`` names its dashboard and source page under Evidence; the
    golden file's alerts have none, so they show no such line."""
    import orjson

    lines = (FIXTURES / "alerts.jsonl").read_bytes().splitlines()
    linked = []
    for line in lines:
        rec = orjson.loads(line)
        if rec["id"] == ALERT:
            rec["dashboard_url"] = "https://grafana.example/d/x?var-tenant=t01"
            rec["generator_url"] = "https://grafana.example/d/y?alert=" + ALERT
        linked.append(orjson.dumps(rec))
    (tmp_path / "alerts.jsonl").write_bytes(b"\n".join(linked) + b"\n")
    assert main(["incident", ALERT, "--alerts", str(tmp_path / "alerts.jsonl")]) == 0
    out = capsys.readouterr().out
    evidence = out[out.index("### Evidence"):out.index("### Suspected change")]
    assert "- dashboard: <https://grafana.example/d/x?var-tenant=t01>" in evidence
    assert f"- source: <https://grafana.example/d/y?alert={ALERT}>" in evidence
    assert "dashboard:" not in (FIXTURES / "expected.md").read_text("utf-8")
