"""Paging end to end, all real: trace events into Kafka (Tansu) -> `detector run` -> the
Alertmanager sink -> Debian's Alertmanager, routed by deploy/alertmanager/alertmanager.yml to a
webhook receiver; Debian's Prometheus scrapes the worker's /metrics and evaluates the no-input
rule from deploy/prometheus/rules.yml.

Only timings are shortened for the test (Alertmanager group waits, the rule's 5-minute
threshold and `for`); routes, receivers, labels and expressions are the deployed ones."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from harness import WorkerProc, produce_lines, wait_until, write_config

from detector.lab.broker import Tansu, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import services as svc

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_571_200.0


def _chats(start: float, end: float) -> list[bytes]:
    return [orjson.dumps({"ts": t, "operation": "chat", "tenant": "t1", "app": "support-agent",
                          "trace_id": f"{int(t * 10):032x}"})
            for t in [start + 2 * i for i in range(int((end - start) / 2))]]


def _am_config(hook: str) -> str:
    text = (ROOT / "deploy/alertmanager/alertmanager.yml").read_text()
    text = re.sub(r'url: "http://[^"]+"', f'url: "{hook}"', text)
    text = re.sub(r"group_wait: \d+[sm]", "group_wait: 1s", text)
    return re.sub(r"group_interval: \d+[sm]", "group_interval: 2s", text)


def _prom_rules() -> str:
    doc = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "DetectorNoInput"]
    assert len(rules) == 1 and "> 300" in rules[0]["expr"]
    rule = dict(rules[0], expr=rules[0]["expr"].replace("> 300", "> 5"), **{"for": "2s"})
    return yaml.safe_dump({"groups": [{"name": "detector-health", "rules": [rule]}]})


def test_unauthorized_call_pages_resolves_and_silence_is_noticed(names: dict[str, str],
                                                                 tmp_path: Path) -> None:
    metrics_port = free_port()
    with Tansu(free_port()) as broker, svc.RecordingServer() as hook, \
            svc.alertmanager(_am_config(hook.url + "/hook")) as am, \
            svc.prometheus(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "rule_files: ['{rules_dir}/*.yml']\n"
                "scrape_configs:\n  - job_name: detector\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{metrics_port}']\n",
                rule_files={"health.yml": _prom_rules()}) as prom:
        cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap, partitions=2,
                           idle_partition_timeout_seconds=2, **names)
        cfg.write_text(re.sub(r"(?m)^port = 0$", f"port = {metrics_port}", cfg.read_text()))
        w = WorkerProc(cfg, tmp_path / "worker.log", env={"DETECTOR_ALERTMANAGER_URLS": am.url})
        try:
            wait_until(lambda: w.events("stage1_assigned") or not w.alive(), 90, "worker join")
            bad = orjson.dumps({"ts": T0 + 61, "operation": "execute_tool", "tenant": "t1",
                                "app": "support-agent", "tool_name": "send_email",
                                "tool_authorized": False, "trace_id": "ab" * 16})
            produce_lines(broker.bootstrap, names["traces_topic"],
                          [*_chats(T0, T0 + 120), bad], partitions=2)

            def active() -> list[dict]:
                return [a for a in svc.http_json(am.url + "/api/v2/alerts?active=true")
                        if a["labels"].get("alertname") == "ModelUnauthorizedToolCall"]

            got = wait_until(active, 60, "the alert in Alertmanager's API")[0]
            assert got["labels"].items() >= {
                "severity": "critical", "sev": "sev1", "signal": "unauthorized_tool_call",
                "tenant": "t1", "app": "support-agent", "environment": "production"}.items()
            assert "ab" * 16 in got["annotations"]["trace_ids"]
            assert got["annotations"]["runbook_url"].startswith("https://")
            assert got["annotations"]["summary"] and got["annotations"]["description"]
            page = wait_until(lambda: [b for b in hook.snapshot() if b["status"] == "firing"],
                              30, "the firing notification at the webhook")[0]
            assert page["receiver"] == "pager"     # sev1 routes to the pager

            # The incident is over: five clean windows later the alert resolves.
            produce_lines(broker.bootstrap, names["traces_topic"], _chats(T0 + 120, T0 + 600),
                          partitions=2)
            wait_until(lambda: not active(), 90, "the alert to resolve in Alertmanager")
            wait_until(lambda: [b for b in hook.snapshot() if b["status"] == "resolved"], 60,
                       "the resolved notification at the webhook")

            # Prometheus scrapes the worker, and pages on its silence.
            def decoded() -> float:
                r = svc.http_json(prom.url + "/api/v1/query?query="
                                  "sum(detector_events_decoded_total)")["data"]["result"]
                return float(r[0]["value"][1]) if r else 0.0

            wait_until(lambda: decoded() > 0, 30, "detector metrics scraped by Prometheus")
            cohorts = svc.http_json(prom.url + "/api/v1/query?query=detector_cohorts")
            by_state = {r["metric"]["state"]: float(r["value"][1])
                        for r in cohorts["data"]["result"]}
            assert by_state.get("warming", 0) + by_state.get("warm", 0) >= 2   # t1 and its app
            wait_until(lambda: [a for a in svc.http_json(prom.url + "/api/v1/alerts")["data"]
                                ["alerts"] if a["labels"]["alertname"] == "DetectorNoInput"
                                and a["state"] == "firing"], 60,
                       "the no-input rule to fire once traffic stopped")
            assert w.alive() and "Traceback" not in w.log()
        finally:
            w.stop()
