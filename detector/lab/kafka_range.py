"""Read one time range of a Kafka topic, for `replay --kafka` and `backtest --kafka`.

The range is, in every partition, from the first record stamped at or after ``since`` up to,
not including, the first stamped at or after ``until`` (the log end where none is): the
offsets ``offsets_for_times`` names for those times. Reading starts at the broker's offset for
``since``. It reads with kafka-python, the design's synchronous
client, assigning partitions itself: no consumer group is joined and no offset is committed,
so a backtest never moves a running worker's offsets. Partitions are merged by record
timestamp (then partition, offset), so every run over the same range sees the same order.

>>> parse_time("2026-01-05T01:00:00Z"), parse_time("2026-01-05T01:00:00")
(1767574800000, 1767574800000)
>>> parse_time("yesterday")
Traceback (most recent call last):
...
ValueError: 'yesterday' is not an ISO 8601 time (e.g. 2026-01-05T01:00:00Z)
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NamedTuple

from detector.config import Config
from detector.lab.tracefile import Oversized

__all__ = ["KafkaRange", "KafkaRangeError", "add_arguments", "from_args", "parse_time",
           "read_range"]


class KafkaRangeError(RuntimeError):
    """The range cannot be read (no such topic, broker unreachable, read did not finish)."""


class KafkaRange(NamedTuple):
    brokers: str
    topic: str
    since_ms: int
    until_ms: int


class _Record(NamedTuple):
    timestamp: int
    partition: int
    offset: int
    value: bytes


def parse_time(text: str) -> int:
    """An ISO 8601 time (naive means UTC) as epoch milliseconds."""
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2026-01-05T01:00:00Z)") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1000)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Kafka time range (instead of a file)")
    g.add_argument("--kafka", action="store_true",
                   help="read --topic between --since and --until from the config's "
                   "kafka.brokers (no consumer group, no commits)")
    g.add_argument("--brokers", help="bootstrap servers (default: the config's kafka.brokers)")
    g.add_argument("--topic", help="topic to read (default: the config's kafka.traces_topic)")
    g.add_argument("--since", help="ISO 8601 start, inclusive (by record timestamp)")
    g.add_argument("--until", help="ISO 8601 end, exclusive (default: now)")


def from_args(args: argparse.Namespace, config: Config) -> KafkaRange:
    """The range the arguments name; ValueError saying which argument is wrong."""
    if not args.since:
        raise ValueError("--kafka needs --since")
    since = parse_time(args.since)
    until = parse_time(args.until) if args.until else int(time.time() * 1000)
    if until <= since:
        raise ValueError(f"--until {args.until} is not after --since {args.since}")
    return KafkaRange(args.brokers or config.kafka.brokers,
                      args.topic or config.kafka.traces_topic, since, until)


def _consumer(brokers: str, config: Config) -> object:
    from kafka import KafkaConsumer  # late: only this command-line path uses kafka-python

    k = config.kafka
    extra = {}
    if k.security_protocol != "PLAINTEXT":
        extra = {"sasl_mechanism": k.sasl_mechanism or None,
                 "sasl_plain_username": k.sasl_username or None,
                 "sasl_plain_password": k.sasl_password or None,
                 "ssl_cafile": k.ssl_cafile or None, "ssl_certfile": k.ssl_certfile or None,
                 "ssl_keyfile": k.ssl_keyfile or None}
    return KafkaConsumer(bootstrap_servers=brokers.split(","), group_id=None,
                         enable_auto_commit=False, security_protocol=k.security_protocol,
                         **extra)


def read_range(rng: KafkaRange, config: Config, max_bytes: int, *,
               timeout: float = 60.0) -> Iterator[bytes | Oversized]:
    """Every message value in ``rng``, merged across partitions by timestamp; one over
    ``max_bytes`` as :class:`Oversized` (its size and SHA-256, never its bytes). Raises
    KafkaRangeError when the topic is missing or the range is not read within ``timeout``
    seconds of the last record received."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = _consumer(rng.brokers, config)
    except KafkaError as e:
        raise KafkaRangeError(f"{rng.brokers}: {e}") from None
    try:
        parts = consumer.partitions_for_topic(rng.topic)  # type: ignore[attr-defined]
        if not parts:
            raise KafkaRangeError(f"topic {rng.topic!r} does not exist on {rng.brokers}")
        tps = [TopicPartition(rng.topic, p) for p in sorted(parts)]
        hints = consumer.offsets_for_times({tp: rng.since_ms for tp in tps})  # type: ignore[attr-defined]
        todo = {tp: hints[tp].offset for tp in tps if hints[tp] is not None}
        per_part = _fetch(consumer, todo, rng, timeout)
    except KafkaError as e:
        raise KafkaRangeError(f"{rng.topic} on {rng.brokers}: {e}") from None
    finally:
        consumer.close()  # type: ignore[attr-defined]
    for rec in heapq.merge(*per_part):
        v = rec.value
        yield v if len(v) <= max_bytes else Oversized(len(v), hashlib.sha256(v).hexdigest())


def _fetch(consumer: object, todo: dict[object, int], rng: KafkaRange,
           timeout: float) -> list[list[_Record]]:
    """Each partition's records from the first stamped at or after ``since`` (reading from the
    broker's offset for that time: a broker that answers too early, as Tansu does with the
    log start, costs a scan, not a wrong range) to the first stamped at or after ``until``, or
    its log end: the high watermark fetches report (Tansu's ListOffsets(latest) is not one)."""
    c: object = consumer
    c.assign(list(todo))  # type: ignore[attr-defined]
    for tp, start in todo.items():
        c.seek(tp, start)  # type: ignore[attr-defined]
    out: dict[object, list[_Record]] = {tp: [] for tp in todo}
    open_, started = set(todo), set()
    deadline = time.monotonic() + timeout
    while open_:
        if time.monotonic() > deadline:
            raise KafkaRangeError(f"range not read within {timeout:g} s of the last record "
                                  f"({len(open_)} partitions unfinished)")
        batch = c.poll(timeout_ms=200, max_records=10_000)  # type: ignore[attr-defined]
        if batch:
            deadline = time.monotonic() + timeout
        for tp, records in batch.items():
            for r in records if tp in open_ else ():
                if r.timestamp >= rng.until_ms:
                    open_.discard(tp)
                    break
                if tp not in started:
                    if r.timestamp < rng.since_ms:
                        continue
                    started.add(tp)
                if r.value is not None:   # a tombstone carries no event
                    out[tp].append(_Record(r.timestamp, r.partition, r.offset, r.value))
        for tp in list(open_):
            end = c.highwater(tp)  # type: ignore[attr-defined]
            if end is not None and c.position(tp) >= end:  # type: ignore[attr-defined]
                open_.discard(tp)
        c.pause(*[tp for tp in todo if tp not in open_])  # type: ignore[attr-defined]
    return [out[tp] for tp in todo]
