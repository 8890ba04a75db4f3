"""Config hot reload: which keys a running worker may take (core/reload.py, key by key), stage
2 taking them between windows with its baselines and alert ids kept, and the reloader at the
edge (the file read again, results counted, a refused or invalid file leaving all as it was).
The stream end to end, with SIGHUP on a real broker: tests/integration/test_reload.py."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from prometheus_client import CollectorRegistry

from detector.config import Config, SignalConfig, config_hash, load_config, parse_config
from detector.core.pipeline import Pipeline
from detector.core.reload import (
    RELOADABLE_SIGNAL_KEYS,
    RELOADABLE_TOP,
    changed_keys,
    plan_reload,
)
from detector.obs.metrics import Metrics
from detector.stream.reloader import ConfigReloader
from tests.traffic import chats

T0 = 1_767_571_200.0
HIGH = 1000.0   # a refusal_rate threshold nothing crosses


def _doc() -> dict[str, Any]:
    """The packaged default as a TOML document (what an operator edits)."""
    text = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")
    return tomllib.loads(text)


def _with(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *head, last = dotted.split(".")
    node = out
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return out


BASE = parse_config(_doc())

# (dotted key in the document, new value, the dotted key the plan names)
RELOADABLE = [
    ("signals.refusal_rate.threshold", 3.0, "signals.refusal_rate.threshold"),
    ("signals.refusal_rate.direction", "up", "signals.refusal_rate.direction"),
    ("signals.refusal_rate.min_count", 10.0, "signals.refusal_rate.min_count"),
    ("signals.refusal_rate.runbook_url", "https://rb.example/x",
     "signals.refusal_rate.runbook_url"),
    ("signals.refusal_rate.actions.sev2", ["Page the owner"],
     "signals.refusal_rate.actions.sev2"),
    ("signals.safety_toxicity.threshold", 7.0, "signals.safety_toxicity.threshold"),
    ("severity.0.min_persistence", 2, "severity[0].min_persistence"),
    ("severity.6.environments", ["production", "canary"], "severity[6].environments"),
    ("overrides.0.threshold_factor", 0.5, "overrides[0].threshold_factor"),
    ("overrides.0.match", {"app": "other-agent"}, "overrides[0].match.app"),
    ("sinks.log", False, "sinks.log"),
    ("sinks.kafka", False, "sinks.kafka"),
    ("sinks.jsonl", "alerts.jsonl", "sinks.jsonl"),
    ("sinks.alertmanager.urls", ["http://127.0.0.1:9093"], "sinks.alertmanager.urls"),
    ("sinks.alertmanager.resend_interval_seconds", 30,
     "sinks.alertmanager.resend_interval_seconds"),
    ("links.dashboard_url", "https://grafana.example/d/x?t=${tenant}", "links.dashboard_url"),
    ("indicators.churn_windows", 60, "indicators.churn_windows"),
    ("indicators.canary_signals", ["refusal_rate"], "indicators.canary_signals"),
]

# Keys that shape state, stage 1's input or the worker's wiring: a restart.
REFUSED = [
    ("cohorts.levels", [["app"], ["app", "environment"]], "cohorts.levels"),
    ("cohorts.max_cohorts", 50, "cohorts.max_cohorts"),
    ("windows.size_seconds", 30.0, "windows.size_seconds"),
    ("windows.allowed_lateness_seconds", 10.0, "windows.allowed_lateness_seconds"),
    ("baselines.warmup_windows", 5, "baselines.warmup_windows"),
    ("baselines.fast_half_life_windows", 10.0, "baselines.fast_half_life_windows"),
    ("alerting.clear_ratio", 0.5, "alerting.clear_ratio"),
    ("alerting.evidence_trace_ids", 5, "alerting.evidence_trace_ids"),
    ("signals.refusal_rate.enabled", False, "signals.refusal_rate.enabled"),
    ("input.safety_labels", ["pii", "toxicity", "prompt_injection", "jailbreak", "bias"],
     "input.safety_labels"),
    ("input.format", "otlp_json", "input.format"),
    ("rules.sensitive_tools", ["send_email"], "rules.sensitive_tools"),
    ("spend.default.input_per_million", 1.0, "spend.default.input_per_million"),
    ("kafka.brokers", "10.0.0.1:9092", "kafka.brokers"),
    ("kafka.traces_topic", "other", "kafka.traces_topic"),
    ("kafka.partitions", 8, "kafka.partitions"),
    ("kafka.group", "other", "kafka.group"),
    ("metrics.port", 9999, "metrics.port"),
    ("rebaseline", [{"at": "2026-01-01T00:00:00Z"}], "rebaseline"),
    # The containment caller and the evidence writer are built at start-up with their
    # secrets and producers: a changed rule or destination takes a restart.
    ("evidence.severities", ["sev1"], "evidence.severities"),
    ("containment", [{"name": "freeze_tools", "url": "http://127.0.0.1:1/flag"}], "containment"),
]


@pytest.mark.parametrize(("key", "value", "named"), RELOADABLE)
def test_reloadable_key(key: str, value: Any, named: str) -> None:
    plan = plan_reload(BASE, parse_config(_with(_doc(), key, value)))
    assert plan.changed == (named,)
    assert plan.refused == ()
    assert plan.ok


@pytest.mark.parametrize(("key", "value", "named"), REFUSED)
def test_key_that_needs_a_restart(key: str, value: Any, named: str) -> None:
    plan = plan_reload(BASE, parse_config(_with(_doc(), key, value)))
    assert plan.changed == (named,)
    assert plan.refused == (named,)
    assert not plan.ok


def test_one_refused_key_refuses_the_whole_reload_and_names_only_it() -> None:
    doc = _with(_with(_doc(), "signals.refusal_rate.threshold", 3.0),
                "windows.size_seconds", 30.0)
    plan = plan_reload(BASE, parse_config(doc))
    assert plan.changed == ("signals.refusal_rate.threshold", "windows.size_seconds")
    assert plan.refused == ("windows.size_seconds",)


def test_the_same_settings_are_no_change() -> None:
    assert plan_reload(BASE, parse_config(_doc())) == plan_reload(BASE, BASE)
    assert changed_keys(BASE, parse_config(_doc())) == ()
    # A signal listed with the values it has unlisted (here: its defaults) changes nothing.
    listed = _with(_doc(), "signals.safety_toxicity", {})
    assert "safety_toxicity" in parse_config(listed).signals
    assert changed_keys(BASE, parse_config(listed)) == ()


def test_a_rule_added_or_removed_names_the_list() -> None:
    doc = _doc()
    doc["severity"].insert(0, {"severity": "sev1", "signals": ["refusal_rate"]})
    assert plan_reload(BASE, parse_config(doc)).changed == ("severity",)
    assert plan_reload(BASE, parse_config(doc)).ok
    doc = _doc()
    del doc["overrides"]
    assert plan_reload(BASE, parse_config(doc)).changed == ("overrides",)


def test_the_reloadable_names_are_keys_of_the_schema() -> None:
    """A renamed key must not leave a dead entry (and its new name refused without notice)."""
    assert set(RELOADABLE_TOP) <= set(Config.__struct_fields__)
    assert set(RELOADABLE_SIGNAL_KEYS) <= set(SignalConfig.__struct_fields__)
    # Every top-level section is covered by a case above, one way or the other.
    covered = {k.split(".")[0] for k, _, _ in RELOADABLE + REFUSED}
    assert covered == set(Config.__struct_fields__)


# -- stage 2 takes a reloaded config between windows ------------------------------------------


def _cfg(**signal: Any) -> Config:
    doc = _doc()
    doc["signals"]["refusal_rate"].update(signal)
    return parse_config(doc)


WARM = chats(T0, 25, trace_ids=True)                                   # past the 20 warm-up windows
INCIDENT = chats(T0 + 25 * 60, 8, refusing=range(2, 5), trace_ids=True)


def _refusals(alerts: list[Any]) -> list[Any]:
    return [a for a in alerts if a.signal == "refusal_rate"]


def test_a_lowered_threshold_applies_from_the_next_window_without_a_warm_up() -> None:
    high, low = _cfg(threshold=HIGH), _cfg()
    # At the high threshold the incident does not page; at the default it does.
    p = Pipeline(high)
    assert not _refusals(p.feed_many(WARM) + p.feed_many(INCIDENT))
    p = Pipeline(low)
    all_along = _refusals(p.feed_many(WARM) + p.feed_many(INCIDENT))
    assert all_along
    # Without the warm-up (a fresh state) the incident cannot be told from normal.
    p = Pipeline(low)
    assert not _refusals(p.feed_many(INCIDENT))
    # Warmed up at the high threshold, reloaded, then the incident: the same alerts as the
    # low threshold all along, same ids (the baselines learned before the reload are used).
    p = Pipeline(high)
    assert not _refusals(p.feed_many(WARM))
    models = p.stage2.models
    p.stage2.reconfigure(low)
    assert p.stage2.models is models and p.stage2.config is low
    after = _refusals(p.feed_many(INCIDENT))
    assert [(a.id, a.status, a.severity, a.threshold) for a in after] == [
        (a.id, a.status, a.severity, a.threshold) for a in all_along]


def test_an_alert_keeps_its_id_and_takes_the_new_runbook_and_severity_rules() -> None:
    cfg = _cfg()
    p = Pipeline(cfg)
    fired = _refusals(p.feed_many(WARM) + p.feed_many(INCIDENT[:450]))
    assert fired and fired[0].status == "firing"
    first = fired[-1]
    assert first.runbook_url == "https://runbooks.example.com/ai/refusal-rate"
    doc = _doc()
    doc["signals"]["refusal_rate"]["runbook_url"] = "https://rb.example/new"
    doc["signals"]["refusal_rate"]["actions"] = {"sev1": ["Roll back now"]}
    doc["severity"].insert(0, {"severity": "sev1", "signals": ["refusal_rate"]})
    new = parse_config(doc)
    p.stage2.reconfigure(new)
    (now,) = [a for a in p.stage2.life.firing() if a.signal == "refusal_rate"]
    assert now.id == first.id and now.runbook_url == "https://rb.example/new"
    rest = _refusals(p.feed_many(INCIDENT[450:]))
    # The next anomalous window escalates it under the new first rule, same id.
    assert rest[0].id == first.id
    assert rest[0].severity == "sev1" and rest[0].actions == ["Roll back now"]


def test_an_override_changed_on_reload_applies_to_a_cohort_already_scored() -> None:
    p = Pipeline(_cfg())
    p.feed_many(WARM)
    key = (1, ("t1", "support-agent", "production"))
    assert p.stage2.scorer.thresholds(*key)["refusal_rate"] == 5.0
    doc = _doc()
    doc["overrides"].append({"match": {"tenant": "t1"}, "signals": ["refusal_*"],
                             "threshold_factor": 0.5})
    p.stage2.reconfigure(parse_config(doc))
    assert p.stage2.scorer.thresholds(*key)["refusal_rate"] == 2.5


def test_a_direction_changed_on_reload_changes_what_attribution_pages_through() -> None:
    """Attribution pages only through rates watched upwards: a reload that watches refusals
    downwards takes them out of it, and back."""
    p = Pipeline(_cfg())
    assert "refusal_rate" in p.stage2._detecting
    p.stage2.reconfigure(parse_config(_with(_doc(), "signals.refusal_rate.direction", "down")))
    assert "refusal_rate" not in p.stage2._detecting
    p.stage2.reconfigure(parse_config(_with(_doc(), "signals.refusal_rate.direction", "both")))
    assert "refusal_rate" in p.stage2._detecting


def test_stage2_refuses_a_change_that_needs_a_restart_and_keeps_its_config() -> None:
    p = Pipeline(BASE)
    p.feed_many(WARM[:500])
    doc = _with(_with(_doc(), "windows.size_seconds", 30.0),
                "signals.refusal_rate.threshold", 2.0)
    with pytest.raises(ValueError, match=r"needs a restart: windows\.size_seconds$"):
        p.stage2.reconfigure(parse_config(doc))
    assert p.stage2.config is BASE
    assert p.stage2.scorer.config is BASE and p.stage2.life.config is BASE
    assert p.stage2.scorer.thresholds(0, ("support-agent", "production"))["refusal_rate"] == 5.0


# -- the reloader: the file read again, results counted --------------------------------------

def _write(path: Path, threshold: str = "5.0", window: str = "60", jsonl: str | None = None
           ) -> None:
    """The packaged default's text (comments and all, as an operator edits it) with the
    refusal-rate threshold, the window size and the JSON Lines sink set."""
    text = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")
    text, n1 = re.subn(r"(\[signals\.refusal_rate\][^\[]*?\nthreshold = )\S+",
                       rf"\g<1>{threshold}", text, count=1)
    text, n2 = re.subn(r"(?m)^size_seconds = \S+", f"size_seconds = {window}", text, count=1)
    if jsonl is not None:
        text = text.replace('# jsonl = "alerts.jsonl"', f"jsonl = {orjson.dumps(jsonl).decode()}")
    assert n1 == n2 == 1
    path.write_text(text, "utf-8")


class _Worker:
    """What the reloader hands an accepted config to: here, a list of them."""

    def __init__(self) -> None:
        self.applied: list[Config] = []

    def apply(self, cfg: Config) -> None:
        self.applied.append(cfg)


def _count(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("detector_config_reloads_total", {"result": result}) or 0.0


def _hash(registry: CollectorRegistry) -> str | None:
    for f in registry.collect():
        for s in f.samples:
            if s.name == "detector_config_info":
                return s.labels["hash"]
    return None


def test_reloader_results(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "detector.toml"
    _write(path)
    cfg = load_config(path)
    registry = CollectorRegistry()
    w = _Worker()
    r = ConfigReloader(path, cfg, w.apply, Metrics(registry))
    assert _hash(registry) == config_hash(cfg)
    caplog.set_level(logging.INFO, "detector.config")

    assert r.reload("test") == "unchanged"
    assert w.applied == []

    _write(path, threshold="3.0")
    assert r.reload("test") == "applied"
    assert [c.signal("refusal_rate").threshold for c in w.applied] == [3.0]
    assert r.cfg is w.applied[0] and _hash(registry) == config_hash(w.applied[0])
    applied = orjson.loads(caplog.records[-1].getMessage())
    assert applied["event"] == "config_reload_applied"
    assert applied["changed"] == ["signals.refusal_rate.threshold"]

    before = _hash(registry)
    _write(path, threshold="2.0", window="30")
    assert r.reload("test") == "refused"
    assert len(w.applied) == 1 and r.cfg is w.applied[0] and _hash(registry) == before
    line = caplog.records[-1]
    assert line.levelno == logging.ERROR
    refused = orjson.loads(line.getMessage())
    assert refused["restart_keys"] == ["windows.size_seconds"]
    assert "windows.size_seconds cannot change on a running worker" in refused["message"]

    _write(path, threshold="-1")
    assert r.reload("test") == "invalid"
    invalid = orjson.loads(caplog.records[-1].getMessage())
    assert invalid["error"].startswith("signals.refusal_rate.threshold: Expected `float` > 0")
    path.write_text("[windows\nsize_seconds = 60", "utf-8")
    assert r.reload("test") == "invalid"
    assert "not valid TOML" in orjson.loads(caplog.records[-1].getMessage())["error"]
    assert len(w.applied) == 1 and _hash(registry) == before

    assert {k: _count(registry, k) for k in ("applied", "unchanged", "refused", "invalid")} == {
        "applied": 1.0, "unchanged": 1.0, "refused": 1.0, "invalid": 2.0}


def test_reloader_refuses_when_applying_fails(tmp_path: Path) -> None:
    path = tmp_path / "detector.toml"
    _write(path)
    registry = CollectorRegistry()

    def broken(cfg: Config) -> None:
        raise OSError("cannot open the new jsonl file")

    r = ConfigReloader(path, load_config(path), broken, Metrics(registry))
    old = r.cfg
    _write(path, jsonl=str(tmp_path / "nowhere" / "a.jsonl"))
    assert r.reload("test") == "refused"
    assert r.cfg is old and _count(registry, "refused") == 1.0


def test_watch_reloads_a_changed_file_once(tmp_path: Path) -> None:
    path = tmp_path / "detector.toml"
    _write(path)
    registry = CollectorRegistry()
    w = _Worker()
    r = ConfigReloader(path, load_config(path), w.apply, Metrics(registry))
    assert not r.changed_on_disk()
    _write(path, threshold="4.0")
    assert r.changed_on_disk()
    assert not r.changed_on_disk()       # seen: not again until it moves
    path.unlink()
    assert not r.changed_on_disk()       # missing for the moment: not a change

    async def watch() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(r.watch(0.2, stop))
        _write(path, threshold="4.0")
        for _ in range(100):             # bounded: 10 s at most
            if w.applied:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(watch())
    assert [c.signal("refusal_rate").threshold for c in w.applied] == [4.0]


# -- the worker: sinks swapped, stage 2 reconfigured ------------------------------------------

def test_worker_reconfigure_swaps_sinks_and_tells_a_new_alertmanager_what_fires(
        tmp_path: Path) -> None:
    from detector.core.shards import Peer
    from detector.stream.app import Worker
    from detector.stream.stage2_partition import Stage2Partition

    cfg = _cfg()
    p = Pipeline(cfg)
    p.stage2 = Peer(cfg, 0, 1)   # what the worker's stage-2 partition holds (one partition)
    fired = _refusals(p.feed_many(WARM) + p.feed_many(INCIDENT[:450]))
    assert fired

    async def run() -> tuple[Any, ...]:
        w = Worker(cfg)
        part = w.parts[0] = Stage2Partition(0, cfg, 30.0, cfg.kafka.partitions)
        part.stage2 = p.stage2
        kinds_before = [type(s).__name__ for s in w.sinks]
        doc = _doc()
        doc["sinks"]["jsonl"] = str(tmp_path / "alerts.jsonl")
        # Nothing listens there: the sink only holds what it is told.
        doc["sinks"]["alertmanager"]["urls"] = ["http://127.0.0.1:9"]
        doc["signals"]["refusal_rate"]["threshold"] = 4.0
        new = parse_config(doc)
        w.reconfigure(new)
        am = w.own_sinks["alertmanager"]
        held = am.held()
        kinds_after = [type(s).__name__ for s in w.sinks]
        w.emit(fired[:1])
        refused = _with(doc, "windows.size_seconds", 30.0)
        with pytest.raises(ValueError, match=r"windows\.size_seconds"):
            w.reconfigure(parse_config(refused))
        out = (kinds_before, kinds_after, held, w.cfg is new, part.stage2.config is new,
               [type(s).__name__ for s in w.sinks])
        for s in w.own_sinks.values():
            s.close()
        w.close()
        return out

    before, after, held, took, stage2_took, still = asyncio.run(run())
    assert before == ["LogSink", "KafkaSink"]
    assert after == ["LogSink", "JsonlSink", "AlertmanagerSink", "KafkaSink"]
    assert still == after
    assert held["sev2"] + held["sev3"] + held["sev4"] >= 1   # the firing incident, re-told
    assert took and stage2_took
    lines = (tmp_path / "alerts.jsonl").read_bytes().splitlines()
    assert [orjson.loads(ln)["id"] for ln in lines] == [fired[0].id]


def test_config_hash_ignores_layout_and_secrets_but_not_settings() -> None:
    doc = _doc()
    a = parse_config(doc)
    b = parse_config(copy.deepcopy(doc))
    assert config_hash(a) == config_hash(b)
    secret = _with(doc, "sinks.alertmanager.bearer_token", "s3cret")
    assert config_hash(parse_config(secret)) == config_hash(a)
    assert config_hash(parse_config(_with(doc, "signals.refusal_rate.threshold", 4.5))) != (
        config_hash(a))
    assert msgspec.json.encode(a)   # the hash's input is the config's own encoding
