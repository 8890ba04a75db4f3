"""aiokafka helpers outside Faust: security settings, topic admin, fetch high watermarks,
fetch wait and group-sync settings, the stage-2 partitioner, and a fast batch producer for
tests, demo and benchmarks, and fetches that skip a corrupt record batch
(:class:`CorruptBatches`). Stage 1's consumer is :mod:`detector.stream.stage1_runner`.

Why fetch high watermarks: Tansu answers ListOffsets(latest) with the start of the last
record batch + 1, so ``end_offsets`` under-reports the log end. A fetch response carries the
true high watermark; consumer lag and Faust's changelog recovery use it (see app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer import fetcher
from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from detector.config import KafkaConfig

__all__ = [
    "CorruptBatch",
    "CorruptBatches",
    "client_kwargs",
    "delay_follower_sync",
    "ensure_topics",
    "fetch_highwaters",
    "fetch_wait_ms",
    "partition_for",
    "probe_metadata",
    "produce",
    "skip_corrupt_batches",
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
    CoordinatorGroupRebalance._on_join_follower = _on_join_follower


class CorruptBatch(NamedTuple):
    """A record batch a fetch skipped: where it was and why, never its bytes."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int      # the last offset skipped
    reason: str           # "crc_mismatch"


class CorruptBatches:
    """Give a consumer this as ``check_crcs`` (after :func:`skip_corrupt_batches`): its
    fetches skip a record batch whose CRC does not match and note it in ``found``. aiokafka
    itself raises CorruptRecordException at every fetch of such a batch, so the partition
    never moves again (and records of other partitions drained in the same ``getmany`` are
    lost). Truthy: to aiokafka this still means "check CRCs"."""

    def __init__(self) -> None:
        self.found: list[CorruptBatch] = []

    def __bool__(self) -> bool:
        return True

    def take(self) -> list[CorruptBatch]:
        """The batches skipped since the last call."""
        found, self.found = self.found, []
        return found

    def note(self, batch: CorruptBatch) -> None:
        self.found.append(batch)


class _Skip:
    """Stands in for a corrupt batch: aiokafka moves past a control batch to its
    ``next_offset`` and yields none of its records."""

    __slots__ = ("next_offset",)
    is_control_batch = True
    is_transactional = False
    producer_id = None

    def __init__(self, next_offset: int) -> None:
        self.next_offset = next_offset

    def validate_crc(self) -> bool:
        return True


_UNREAD: Final = object()


class _CrcChecked:
    """One fetched partition's record batches, a batch whose CRC fails swapped for a
    :class:`_Skip` up to where the next batch starts (the failed batch's own last offset is
    under the CRC that failed). Reads one batch ahead, lazily: aiokafka raises what a
    malformed buffer raises while the records are taken, not when the fetch arrives."""

    def __init__(self, records: Any, tp: TopicPartition, sink: CorruptBatches) -> None:
        self._records = records
        self._tp = tp
        self._sink = sink   # not its list: take() swaps that while a fetch is being read
        self._ahead: Any = _UNREAD

    def _peek(self) -> Any:
        if self._ahead is _UNREAD:
            self._ahead = self._records.next_batch() if self._records.has_next() else None
        return self._ahead

    def has_next(self) -> bool:
        return self._peek() is not None

    def next_batch(self) -> Any:
        batch = self._peek()
        self._ahead = _UNREAD
        if batch is None or batch.validate_crc():
            return batch
        after = self._peek()
        first = getattr(batch, "base_offset", batch.next_offset - 1)  # v0/v1: one offset
        end = max(getattr(after, "base_offset", batch.next_offset), first + 1)
        self._sink.note(CorruptBatch(self._tp.topic, self._tp.partition, first, end - 1,
                                     "crc_mismatch"))
        return _Skip(end)


class _PartitionRecords(fetcher.PartitionRecords):
    def __init__(self, tp: TopicPartition, records: Any, aborted: Any, fetch_offset: int,
                 key_deserializer: Any, value_deserializer: Any, check_crcs: Any,
                 isolation_level: Any) -> None:
        if isinstance(check_crcs, CorruptBatches):
            records, check_crcs = _CrcChecked(records, tp, check_crcs), False
        super().__init__(tp, records, aborted, fetch_offset, key_deserializer,
                         value_deserializer, check_crcs, isolation_level)


def skip_corrupt_batches() -> None:
    """Let consumers created with ``check_crcs=CorruptBatches()`` skip corrupt batches
    (others keep aiokafka's behaviour). Idempotent."""
    fetcher.PartitionRecords = _PartitionRecords


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
