"""Producers choose their compression: the worker reads traces in every Kafka codec.

A trace topic written by gzip, snappy, lz4 and zstd producers, one codec per partition, each
with an unauthorized tool call from a tenant of its own: every one of them pages. Without a
codec's library aiokafka cannot unpack that partition's batches (UnsupportedCodecError on
every fetch), and its tenant never pages."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from harness import AlertReader, WorkerProc, wait_until, write_config

from detector.lab.broker import Tansu

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")
T0 = 1_767_571_200.0


def _lines(tenant: str) -> list[bytes]:
    chat = [orjson.dumps({"ts": T0 + i, "operation": "chat", "tenant": tenant,
                          "app": "support-agent"}) for i in range(20)]
    return [*chat, orjson.dumps({"ts": T0 + 20, "operation": "execute_tool", "tenant": tenant,
                                 "app": "support-agent", "tool_name": "send_email",
                                 "tool_authorized": False, "trace_id": "cd" * 16})]


async def _produce(bootstrap: str, topic: str) -> None:
    for part, codec in enumerate(CODECS):
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=5)
        await p.start()
        try:
            futs = [await p.send(topic, v, partition=part) for v in _lines(f"t-{codec}")]
            await asyncio.gather(*futs)
        finally:
            await p.stop()


def test_traces_in_every_kafka_codec_page(broker: Tansu, names: dict[str, str],
                                           tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap,
                       partitions=len(CODECS), idle_partition_timeout_seconds=2, **names)
    broker.create_topics([names["traces_topic"]], len(CODECS))
    asyncio.run(_produce(broker.bootstrap, names["traces_topic"]))
    w = WorkerProc(cfg, tmp_path / "worker.log")
    reader = AlertReader(broker.bootstrap, names["alerts_topic"])
    try:
        def paged() -> set[str]:
            return {a["cohort"]["tenant"] for a in reader.poll()
                    if a["signal"] == "unauthorized_tool_call"}
        want = {f"t-{c}" for c in CODECS}
        wait_until(lambda: paged() >= want or not w.alive(), 90,
                   "an unauthorized_tool_call alert from each codec's tenant")
        assert w.alive() and paged() >= want, w.log()[-2000:]
        assert not w.events("stage1_kafka_error"), w.events("stage1_kafka_error")[:1]
    finally:
        reader.close()
        w.stop()
