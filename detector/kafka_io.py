"""aiokafka helpers outside Faust: security settings, topic admin, fetch high watermarks,
fetch wait and group-sync settings, the stage-2 partitioner, and a fast batch producer for
tests, demo and benchmarks. Stage 1's consumer is :mod:`detector.stage1_runner`.

Why fetch high watermarks: Tansu answers ListOffsets(latest) with the start of the last
record batch + 1, so ``end_offsets`` under-reports the log end. A fetch response carries the
true high watermark; consumer lag and Faust's changelog recovery use it (see app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from detector.config import KafkaConfig

__all__ = [
    "client_kwargs",
    "delay_follower_sync",
    "ensure_topics",
    "fetch_highwaters",
    "fetch_wait_ms",
    "partition_for",
    "probe_metadata",
    "produce",
]

def client_kwargs(k: KafkaConfig | None) -> dict[str, Any]:
    """[kafka] security settings as aiokafka client keyword arguments (TLS, SASL PLAIN/SCRAM)."""
    if k is None or k.security_protocol == "PLAINTEXT":
        return {}
    kw: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = create_ssl_context(cafile=k.ssl_cafile, certfile=k.ssl_certfile,
                                               keyfile=k.ssl_keyfile)
    if k.security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = k.sasl_mechanism or "PLAIN"
        kw["sasl_plain_username"] = k.sasl_username
        kw["sasl_plain_password"] = k.sasl_password
    return kw


def fetch_wait_ms(k: KafkaConfig) -> int:
    """``kafka.fetch_max_wait_seconds`` as aiokafka's ``fetch_max_wait_ms``."""
    return max(1, round(k.fetch_max_wait_seconds * 1000))


#: How long a group follower waits before its SyncGroup (see delay_follower_sync).
FOLLOWER_SYNC_DELAY: Final = 0.05
_orig_on_join_follower = CoordinatorGroupRebalance._on_join_follower


async def _on_join_follower(self: CoordinatorGroupRebalance) -> Any:
    await asyncio.sleep(FOLLOWER_SYNC_DELAY)
    return await _orig_on_join_follower(self)


def delay_follower_sync() -> None:
    """Make group followers send SyncGroup FOLLOWER_SYNC_DELAY after their JoinGroup answer.

    Tansu parks a follower's SyncGroup that arrives before the leader's assignment and looks
    again a second later, while Kafka answers it when the assignment arrives. All members get
    their JoinGroup answer at once, and a follower's SyncGroup went out before the leader had
    computed the assignment in 3 to 7 joins of 10 (bench/tansu.py): a worker sat a second
    without partitions at start, scale-out and failover. 50 ms is what it costs on Kafka."""
    CoordinatorGroupRebalance._on_join_follower = _on_join_follower  # type: ignore[method-assign]


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default Kafka partitioner (murmur2) picks for ``key``: stage 1 sends
    stage-2 input for a route key to the partition the table changelog uses for that key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def probe_metadata(bootstrap: str, **kw: Any) -> bool:
    """True if the cluster answers a metadata request."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **kw)
    try:
        await client.bootstrap()
        return True
    except KafkaError:
        return False
    finally:
        await client.close()


async def ensure_topics(bootstrap: str, topics: Mapping[str, int], *, replication: int = 1,
                        config: Mapping[str, Mapping[str, str]] | None = None, wait: float = 15,
                        **kw: Any) -> list[str]:
    """Create the topics that are missing (name -> partitions); return the created ones.
    Waits until metadata lists every topic with a leader for each partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kw)
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, n, replication, topic_configs=dict((config or {}).get(t, {})))
               for t, n in topics.items() if t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(new)
            created = [t.name for t in new]
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            desc = await admin.describe_topics(list(topics))
            ok = {d["topic"] for d in desc if d["error_code"] == 0 and d["partitions"]
                  and all(p["leader"] >= 0 for p in d["partitions"])}
            if ok >= set(topics):
                return created
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics not ready: {sorted(set(topics) - ok)}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def fetch_highwaters(bootstrap: str, listed: Mapping[Any, int | None],
                           timeout: float = 10.0, **kw: Any) -> dict[Any, int | None]:
    """Correct ``end_offsets`` answers with the high watermark of a real fetch.

    ``listed`` maps topic partitions (anything with .topic and .partition) to the listed end
    offset. For a non-empty partition one record before the listed end is fetched; the fetch
    response's high watermark is the true log end. Keys of the result are those of ``listed``.
    """
    out: dict[Any, int | None] = dict(listed)
    need = {TopicPartition(tp.topic, tp.partition): tp for tp, off in listed.items() if off}
    if not need:
        return out
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                         **kw)
    await c.start()
    try:
        c.assign(list(need))
        for tp, orig in need.items():
            c.seek(tp, max(int(listed[orig] or 0) - 1, 0))
        left = set(need)
        deadline = asyncio.get_running_loop().time() + timeout
        while left and asyncio.get_running_loop().time() < deadline:
            got = await c.getmany(*left, timeout_ms=300)
            left -= {tp for tp in got if c.highwater(tp) is not None}
        for tp, orig in need.items():
            hw = c.highwater(tp)
            if hw is not None and hw > (out[orig] or 0):
                out[orig] = hw
    finally:
        await c.stop()
    return out


async def produce(bootstrap: str, topic: str, values: Iterable[bytes], *, partitions: int,
                  key: bytes | None = None, **kw: Any) -> int:
    """Send ``values`` round-robin over ``partitions`` with aiokafka record batches (the
    per-``send`` path costs ~20 µs a message; batches amortise it). Returns messages sent."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1,
                         max_batch_size=1 << 20, max_request_size=8 << 20, **kw)
    await p.start()
    sent = 0
    try:
        batches: list[Any] = [p.create_batch() for _ in range(partitions)]
        futs: list[asyncio.Future[Any]] = []
        for i, v in enumerate(values):
            part = i % partitions
            if batches[part].append(key=key, value=v, timestamp=None) is None:
                futs.append(await p.send_batch(batches[part], topic, partition=part))
                batches[part] = p.create_batch()
                batches[part].append(key=key, value=v, timestamp=None)
                if len(futs) >= 64:
                    await asyncio.gather(*futs)
                    futs.clear()
            sent += 1
        for part, b in enumerate(batches):
            if b.record_count():
                futs.append(await p.send_batch(b, topic, partition=part))
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return sent
