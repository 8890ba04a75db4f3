"""Stage 1's pacing on a backlog and the consumers' settings, without a broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import msgspec
import orjson
from aiokafka.structs import TopicPartition

from detector.config import load_config
from detector.core.signals import EVENTS
from detector.stream.stage1_runner import CHUNK_EVENTS, Stage1Runner, _Source, decode_envelope


def _runner() -> Stage1Runner:
    return Stage1Runner(load_config(None, env=False), stage2_topic="s2", stage2_partitions=1)


def test_a_fetch_is_worked_through_in_chunks_of_about_the_same_events() -> None:
    r = _runner()
    n = 2 * CHUNK_EVENTS + 123
    recs = list(range(n))
    chunks = list(r._chunks(recs))                  # single-event messages
    assert [len(c) for c in chunks] == [CHUNK_EVENTS, CHUNK_EVENTS, 123]
    recs = list(range(20 * CHUNK_EVENTS))
    r._per_message = 100.0                          # 100-event batches: ~CHUNK_EVENTS a chunk
    chunks = list(r._chunks(recs))
    assert {len(c) for c in chunks[:-1]} == {CHUNK_EVENTS // 100}
    assert [x for c in chunks for x in c] == recs   # in order, nothing lost or repeated


class _Fetched:
    """What the consumer knows from its last fetch: each partition's high watermark."""

    def __init__(self, hw: dict[int, int]) -> None:
        self.hw = hw

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.hw.get(tp.partition)


def test_behind_means_a_partition_has_records_past_what_was_read() -> None:
    r = _runner()
    cfg = load_config(None, env=False)
    r.sources = {0: _Source(cfg, 0.0), 1: _Source(cfg, 0.0)}
    r.sources[0].next_offset, r.sources[1].next_offset = 10, 5
    r.consumer = _Fetched({0: 10, 1: 5})            # type: ignore[assignment]
    assert not r._behind()
    r.consumer = _Fetched({0: 10, 1: 9})            # type: ignore[assignment]
    assert r._behind()
    r.consumer = _Fetched({0: 10})                  # type: ignore[assignment]
    assert not r._behind()                          # no fetch yet for partition 1: unknown


def test_a_flush_is_due_at_once_when_a_backlog_has_been_read_to_its_end() -> None:
    r = _runner()
    cfg = load_config(None, env=False)
    r.sources = {0: _Source(cfg, 0.0)}
    r.sources[0].next_offset = 10
    r._flushed_at = 100.0
    r.consumer = _Fetched({0: 500})                 # type: ignore[assignment]
    assert not r._flush_due(101.0, urgent=False)    # behind: every 4 intervals (2 s)
    assert r._flush_due(101.0, urgent=True)         # a hard-rule hit goes out at once
    assert r._flush_due(102.0, urgent=False)
    r.consumer = _Fetched({0: 10})                  # type: ignore[assignment]
    assert r._flush_due(100.1, urgent=False)        # just caught up: at once
    assert not r._flush_due(100.2, urgent=False)    # then every interval (0.5 s)
    assert r._flush_due(100.5, urgent=False)


def test_both_stages_fetch_with_the_configured_wait() -> None:
    """Faust fixes its consumer's fetch wait at 1500 ms; on Tansu, which answers a waiting
    fetch only at its next look, that was a median 428 ms on every stage-2 hop."""
    from detector.stream.app import Worker  # the only module that imports faust

    cfg = load_config(None, env=False)
    cfg = msgspec.structs.replace(
        cfg, kafka=msgspec.structs.replace(cfg.kafka, fetch_max_wait_seconds=0.04))

    async def consumers() -> list[Any]:
        w = Worker(cfg)
        got = [w.runner.new_consumer(),
               w.app.consumer._thread._create_worker_consumer(w.app.transport)]
        for c in got:
            await c.stop()          # never started: closes its client, no connection made
        return got

    assert [c._fetch_max_wait_ms for c in asyncio.run(consumers())] == [40, 40]
    assert load_config(None, env=False).kafka.fetch_max_wait_seconds == 0.1   # the default


class _Record(NamedTuple):
    value: bytes
    offset: int


class _Broker:
    """Stands in for the runner's producer and consumer: keeps what a flush sends and commits,
    and says every partition was read to its end."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None, bytes]] = []
        self.committed: dict[TopicPartition, int] = {}

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None, headers: Any = None) -> asyncio.Future[None]:
        self.sent.append((topic, partition, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    def highwater(self, tp: TopicPartition) -> int:
        return 2


def test_a_flush_sends_one_partial_per_cohort_and_window_over_all_its_sources() -> None:
    """Each source partition counts its own partials; stage 1 merges them before they go out,
    so stage 2 gets one per (window, cohort) from a worker, not one per partition."""
    r = _runner()
    cfg = load_config(None, env=False)
    broker = _Broker()
    r.producer = r.consumer = broker                # type: ignore[assignment]
    r.sources = {0: _Source(cfg, 0.0), 1: _Source(cfg, 0.0)}
    now = time.time()   # a live source believes a few events at once if they are this fresh
    msgs = [orjson.dumps({"ts": now - 1 + i / 1000, "operation": "chat", "tenant": "t1",
                          "app": "a", "trace_id": f"{i:032x}"}) for i in range(4)]
    r._feed({TopicPartition(r.topic, 0): [_Record(msgs[0], 0), _Record(msgs[2], 1)],
             TopicPartition(r.topic, 1): [_Record(msgs[1], 0), _Record(msgs[3], 1)]}, 0.0)
    asyncio.run(r._flush(1.0))
    [(topic, q, value)] = broker.sent
    env = decode_envelope(value)
    assert (topic, q, sorted(env.sources)) == ("s2", 0, [0, 1])
    assert sorted((p.level, p.cohort, p.counts[EVENTS]) for p in env.partials) == [
        (0, ("a", "production"), 4), (1, ("t1", "a", "production"), 4)]
    assert broker.committed == {TopicPartition(r.topic, 0): 2, TopicPartition(r.topic, 1): 2}
