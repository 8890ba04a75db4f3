"""A corrupt record batch on the trace topic is skipped, dead-lettered and paged on; the
good batches on both sides of it, and other partitions, are all counted.

Tansu stores a produced batch whose CRC does not match as it came (checked: a consumer then
gets CorruptRecordException), so the batch is written the way a corrupting producer or disk
would leave it: built with aiokafka's record builder, one byte of its records flipped after
the CRC was computed, sent in a raw ProduceRequest. Before the fix, aiokafka raised on every
fetch of that partition and stage 1 retried forever: the unauthorized tool call written after
the corrupt batch never paged. Debian's Prometheus scrapes the worker and evaluates the
DetectorKafkaCorruptBatch rule as deployed (deploy/prometheus/rules.yml)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.structs import TopicPartition
from harness import AlertReader, WorkerProc, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families

from detector.lab.broker import Tansu, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import services as svc
from record_batches import record_batch

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_571_200.0


def _event(ts: float, tenant: str, **more: object) -> bytes:
    return orjson.dumps({"ts": ts, "operation": "chat", "tenant": tenant,
                         "app": "support-agent", **more})


def _unauthorized(ts: float, tenant: str, trace_id: str) -> bytes:
    return _event(ts, tenant, operation="execute_tool", tool_name="send_email",
                  tool_authorized=False, trace_id=trace_id)


async def _produce_raw(bootstrap: str, topic: str, batches: list[tuple[int, bytes]]) -> None:
    """Each (partition, batch bytes) in one ProduceRequest, in order, acks=1."""
    c = AIOKafkaClient(bootstrap_servers=bootstrap)
    await c.bootstrap()
    try:
        for part, data in batches:
            node = c.cluster.leader_for_partition(TopicPartition(topic, part))
            req = ProduceRequest(transactional_id=None, required_acks=1, timeout=5000,
                                 topics=[(topic, [(part, data)])])
            resp = await c.send(node, req)
            assert resp.topics[0][1][0][1] == 0, resp   # error_code: the broker took it
    finally:
        await c.close()


def _dead_letters(bootstrap: str, topic: str) -> list[tuple[bytes, dict[str, bytes]]]:
    async def read() -> list[tuple[bytes, dict[str, bytes]]]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest")
        await c.start()
        try:
            got = await c.getmany(timeout_ms=2000)
            return [(r.value, dict(r.headers)) for recs in got.values() for r in recs]
        finally:
            await c.stop()
    return asyncio.run(read())


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if not s.labels}


def _corrupt_rule() -> str:
    doc = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]
             if r.get("alert") == "DetectorKafkaCorruptBatch"]
    assert len(rules) == 1
    return yaml.safe_dump({"groups": [{"name": "detector-health", "rules": rules}]})


def test_corrupt_batch_is_skipped_dead_lettered_and_pages(names: dict[str, str],
                                                          tmp_path: Path) -> None:
    metrics_port = free_port()
    topic = names["traces_topic"]
    before = [_event(T0 + i, "t1") for i in range(30)]
    hidden = [*(_event(T0 + 30 + i, "t-corrupt") for i in range(9)),
              _unauthorized(T0 + 39, "t-corrupt", "ee" * 16)]
    after = [*(_event(T0 + 40 + i, "t1") for i in range(30)),
             _unauthorized(T0 + 70, "t1", "ab" * 16)]
    other = [_event(T0 + i, "t2") for i in range(25)]
    good = len(before) + len(after) + len(other)
    with Tansu(free_port()) as broker, svc.prometheus(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: ['{rules_dir}/*.yml']\n"
            "scrape_configs:\n  - job_name: detector\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n",
            rule_files={"health.yml": _corrupt_rule()}) as prom:
        broker.create_topics([topic], 2)
        cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap, partitions=2,
                           idle_partition_timeout_seconds=2, **names)
        cfg.write_text(re.sub(r"(?m)^port = 0$", f"port = {metrics_port}", cfg.read_text()))
        w = WorkerProc(cfg, tmp_path / "worker.log")
        reader = AlertReader(broker.bootstrap, names["alerts_topic"])
        try:
            wait_until(lambda: w.events("stage1_assigned") or not w.alive(), 90, "worker join")

            # The worker's counters (0) are scraped first: increase() needs a sample before.
            def scraped() -> list[object]:
                return svc.http_json(prom.url + "/api/v1/query?query="
                                     "detector_events_consumed_total")["data"]["result"]
            wait_until(scraped, 30, "Prometheus to scrape the worker")

            asyncio.run(_produce_raw(broker.bootstrap, topic, [
                (0, record_batch(before)), (1, record_batch(other)),
                (0, record_batch(hidden, corrupt=True)), (0, record_batch(after))]))

            def paged() -> list[dict[str, Any]]:
                return [a for a in reader.poll() if a["signal"] == "unauthorized_tool_call"]
            got = wait_until(paged, 60, "the unauthorized tool call after the corrupt batch")
            assert [(a["cohort"]["tenant"], a["severity"]) for a in got] == [("t1", "sev1")]
            assert got[0]["evidence"]["trace_ids"] == ["ab" * 16]

            # Every good event on both sides and in the other partition counted; the corrupt
            # batch's ten not.
            wait_until(lambda: _scrape(metrics_port).get("detector_events_decoded_total")
                       == good, 30, f"{good} decoded events")
            m = _scrape(metrics_port)
            assert m["detector_events_consumed_total"] == good
            assert m["detector_kafka_corrupt_batches_total"] == 1

            # Dead-lettered: where it was and why, never its bytes.
            dlq = _dead_letters(broker.bootstrap, names["dead_letter_topic"])
            assert len(dlq) == 1, dlq
            value, headers = dlq[0]
            first, last = len(before), len(before) + len(hidden) - 1
            assert headers == {"reason": b"corrupt_batch",
                               "source": f"{topic}/0/{first}-{last}".encode()}
            rec = orjson.loads(value)
            assert rec["reason"] == "corrupt_batch"
            assert rec["payload"] == {"topic": topic, "partition": 0,
                                      "first_offset": first, "last_offset": last}
            assert b"t-corrupt" not in value and b"t-corrupt" not in w.log().encode()

            # The deployed self-health rule pages on it.
            wait_until(lambda: [a for a in svc.http_json(prom.url + "/api/v1/alerts")["data"]
                                ["alerts"] if a["labels"]["alertname"] ==
                                "DetectorKafkaCorruptBatch" and a["state"] == "firing"
                                and a["labels"]["severity"] == "critical"],
                       30, "DetectorKafkaCorruptBatch to fire in Prometheus")

            # Skipped once, not at every fetch.
            time.sleep(1.5)
            assert len(w.events("stage1_corrupt_batch")) == 1
            assert w.alive() and "Traceback" not in w.log()
            assert not w.events("stage1_kafka_error"), w.events("stage1_kafka_error")[:1]
        finally:
            reader.close()
            w.stop()
