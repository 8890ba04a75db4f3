"""OpenTelemetry spans through Kafka as the Collector's Kafka exporter writes them (otlp_proto:
a whole batch unkeyed, and one message per trace keyed by its hex trace id) on an extra trace
topic beside the native one: an unauthorized tool call pages sev1 from the real worker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from harness import AlertReader, WorkerProc, wait_assigned, wait_until, write_config

from detector.lab.broker import Tansu
from tests.genai_sdk import PROMPT, agent_spans, per_trace, traces_data

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for key, value in records:
            await p.send_and_wait(topic, value, key=key)
    finally:
        await p.stop()


async def _read_all(bootstrap: str, topic: str, seconds: float) -> list[bytes]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest")
    await c.start()
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=500)).values():
                out += [r.value for r in recs]
    finally:
        await c.stop()
    return out


def test_otlp_spans_from_the_collector_page_sev1(broker: Tansu, names: dict[str, str],
                                                 tmp_path: Path) -> None:
    otlp_topic = f"otlp-spans-{names['group']}"
    cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap, partitions=2, **names)
    text = cfg.read_text().replace(
        "\nextra_traces_topics = []\n",
        f'\nextra_traces_topics = [{{ topic = "{otlp_topic}", format = "otlp_proto" }}]\n', 1)
    assert otlp_topic in text
    cfg.write_text(text)
    now = time.time_ns() - 5 * 10**9
    whole = agent_spans(now, tenant="acme")                      # one unkeyed TracesData
    split = agent_spans(now + 10**9, tenant="globex") + agent_spans(now + 2 * 10**9,
                                                                     tenant="globex")

    w = WorkerProc(cfg, tmp_path / "worker.log")
    reader = AlertReader(broker.bootstrap, names["alerts_topic"])
    try:
        wait_assigned(w)
        asyncio.run(_produce(broker.bootstrap, otlp_topic,
                             [(None, traces_data(whole)), *per_trace(split)]))
        wait_until(lambda: len({a["cohort"]["tenant"] for a in reader.poll()}) >= 2, 120,
                   "sev1 alerts for both tenants")
        pages = [a for a in reader.alerts if a["status"] == "firing"]
        assert {(a["severity"], a["signal"], a["cohort"]["tenant"]) for a in pages} == {
            ("sev1", "unauthorized_tool_call", "acme"),
            ("sev1", "unauthorized_tool_call", "globex")}
        # Evidence: the offending traces' hex ids (an alert that is already firing is not
        # emitted again for the second globex trace).
        ids = {t for a in pages for t in a["evidence"]["trace_ids"]}
        assert f"{whole[0].context.trace_id:032x}" in ids
        assert ids <= {f"{s.context.trace_id:032x}" for s in whole + split} and len(ids) == 2
        # The HTTP spans were counted and skipped, not dead-lettered; nothing was rejected.
        wait_until(lambda: any(e.get("otlp_skipped") == 3 for e in w.events("stage1_progress")),
                   30, "stage 1 to report 3 skipped non-GenAI spans")
        assert asyncio.run(_read_all(broker.bootstrap, names["dead_letter_topic"], 2.0)) == []
        log = w.log()
        assert "Traceback" not in log and PROMPT not in log
        assert all(PROMPT not in str(a) for a in reader.alerts)
    finally:
        reader.close()
        assert w.stop() is not None
