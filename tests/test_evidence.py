"""Evidence records for sev1/sev2 alerts: the alert, the totals of the window behind it, its
version values, trace ids, config hash and detector version; never any text beyond ids."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry

from detector.config import Config
from detector.core.alert import Alert, encode_alert
from detector.core.pipeline import Pipeline
from detector.obs.metrics import Metrics
from detector.sinks.evidence import EvidenceSink, WindowTotals, config_hash


def _run(config: Config, sim: Path) -> tuple[list[Alert], list[dict], EvidenceSink]:
    """The simulated traffic through the core, with evidence preserved as the worker does."""
    p = Pipeline(config)
    totals = WindowTotals(p.stage2.scorer.layout.names, config.evidence.severities,
                          list(map(list, config.cohorts.levels)))
    p.stage2.on_closed = totals
    buf = io.BytesIO()
    sink = EvidenceSink(config, metrics=Metrics(CollectorRegistry()), out=buf)
    buf.close = lambda: None   # type: ignore[method-assign]  # read it after
    alerts: list[Alert] = []
    lines = (sim / "traces.jsonl").read_bytes().splitlines()
    for i in range(0, len(lines), 500):
        got = p.feed_many(lines[i:i + 500])
        for a in got:
            sink.emit(a, totals.take(a.id), 1_800_000_000.0)
        totals.clear()
        alerts += got
    records = [json.loads(x) for x in buf.getvalue().splitlines()]
    return alerts, records, sink


def test_records_for_sev1_and_sev2_firing_alerts_only(config: Config, spike_sim: Path) -> None:
    alerts, records, sink = _run(config, spike_sim)
    wanted = [a for a in alerts if a.status == "firing" and a.severity in ("sev1", "sev2")]
    assert wanted, "the simulated incidents page"
    assert [r["alert_id"] for r in records] == [a.id for a in wanted]
    assert {a.severity for a in alerts} - {"sev1", "sev2"}, "lower severities were left out"
    for r, a in zip(records, wanted, strict=True):
        assert r["alert"] == json.loads(encode_alert(a))
        assert r["trace_ids"] == a.evidence.trace_ids
        assert r["config_sha256"] == config_hash(config) and len(r["config_sha256"]) == 64
        assert r["detector_version"] == sink.version != ""
        assert r["recorded_at"] == "2027-01-15T08:00:00.000Z"


def test_a_windowed_alert_keeps_its_windows_totals_and_versions(config: Config,
                                                                 spike_sim: Path) -> None:
    _, records, _ = _run(config, spike_sim)
    windowed = [r for r in records if r["alert"]["expected"] is not None]
    assert windowed, "a baseline alert reached sev2"
    for r in windowed:
        totals = r["window_totals"]
        assert totals["events"] == r["alert"]["window"]["events"]
        assert sum(v["events"] for v in r["versions"]) == totals["events"]
        assert all(set(v) == {"model_version", "prompt_version", "policy_version", "events"}
                   for v in r["versions"])
    rule = [r for r in records if r["alert"]["expected"] is None]
    assert rule and all(r["window_totals"] is None for r in rule)   # fired before its window


def test_evidence_holds_no_text_beyond_ids_and_values(config: Config, spike_sim: Path) -> None:
    """Every string in a record is an id, a cohort or version value, a time, a name, the
    alert's own summary or a hash: nothing from an event's free text exists in stage 2."""
    _, records, _ = _run(config, spike_sim)
    traces = (spike_sim / "traces.jsonl").read_text()
    texts = {t for t in re.findall(r'"override_reason":"([^"]+)"', traces) if len(t) >= 10}
    assert texts, "the simulated traffic carries free text to look for"
    blob = json.dumps(records)
    assert not any(t in blob for t in texts)


def test_a_config_change_changes_the_hash(config: Config) -> None:
    other = msgspec.structs.replace(
        config, alerting=msgspec.structs.replace(config.alerting, evidence_trace_ids=5))
    assert config_hash(other) != config_hash(config)
