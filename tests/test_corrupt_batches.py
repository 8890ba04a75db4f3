"""Fetches that skip a corrupt record batch (detector.stream.kafka_io.CorruptBatches), on aiokafka's
own fetch-result reader and record parser, without a broker."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from detector.stream.kafka_io import CorruptBatch, CorruptBatches, skip_corrupt_batches
from tests.record_batches import record_batch

TP = TopicPartition("traces", 3)
READ_UNCOMMITTED = 0


def _fetched(*batches: tuple[int, int, bool]) -> bytes:
    """A fetch response's records: (base offset, records, corrupt) per batch."""
    return b"".join(record_batch([b"%d" % (base + i) for i in range(n)], base_offset=base,
                                 corrupt=bad) for base, n, bad in batches)


def _read(buf: bytes, check_crcs: object) -> tuple[list[int], int]:
    """The offsets aiokafka hands out for one fetch at offset 0, and where it fetches next."""
    skip_corrupt_batches()
    recs = fetcher.PartitionRecords(TP, MemoryRecords(buf), [], 0, None, None, check_crcs,
                                    READ_UNCOMMITTED)
    got = list(recs)
    assert [int(r.value) for r in got] == [r.offset for r in got]   # each value its own
    return [r.offset for r in got], recs.next_fetch_offset


def test_corrupt_batches_are_skipped_and_noted() -> None:
    found = CorruptBatches()
    buf = _fetched((0, 5, False), (5, 4, True), (9, 3, False), (12, 6, True))
    got, nxt = _read(buf, found)
    assert got == [0, 1, 2, 3, 4, 9, 10, 11]      # both sides of a corrupt batch
    assert nxt == 18                               # past the last one too: no refetch
    assert found.take() == [CorruptBatch("traces", 3, 5, 8, "crc_mismatch"),
                            CorruptBatch("traces", 3, 12, 17, "crc_mismatch")]
    assert found.take() == []


def test_what_is_skipped_after_a_take_is_in_the_next_take() -> None:
    # Stage 1 takes the found batches after every getmany, and a getmany may stop part-way
    # through a fetch (max_records): the rest of that fetch is read after the take.
    skip_corrupt_batches()
    found = CorruptBatches()
    recs = fetcher.PartitionRecords(TP, MemoryRecords(_fetched((0, 5, False), (5, 4, True),
                                                               (9, 3, False))),
                                    [], 0, None, None, found, READ_UNCOMMITTED)
    assert [next(recs).offset for _ in range(5)] == [0, 1, 2, 3, 4]
    assert found.take() == []
    assert [r.offset for r in recs] == [9, 10, 11]
    assert found.take() == [CorruptBatch("traces", 3, 5, 8, "crc_mismatch")]


def test_other_consumers_keep_aiokafkas_behaviour() -> None:
    buf = _fetched((0, 5, False), (5, 4, True))
    with pytest.raises(CorruptRecordException):
        _read(buf, True)
    assert _read(_fetched((0, 5, False), (5, 4, False)), CorruptBatches()) == (
        list(range(9)), 9)


def test_stage1_dead_letters_where_a_skipped_batch_was_and_commits_past_it() -> None:
    from prometheus_client import CollectorRegistry

    from detector.config import load_config
    from detector.obs.metrics import Metrics
    from detector.stream.stage1_runner import Stage1Runner, _Source

    cfg = load_config(None, env=False)
    registry = CollectorRegistry()
    r = Stage1Runner(cfg, stage2_topic="s2", stage2_partitions=1, metrics=Metrics(registry))
    r.sources = {3: _Source(cfg, 0.0)}
    r.sources[3].next_offset = 5                  # read up to the batch, nothing after it
    r._skipped([CorruptBatch("traces", 3, 5, 8, "crc_mismatch")])
    [out] = r.pending
    assert (out.topic, out.partition) == (cfg.kafka.dead_letter_topic, None)
    assert dict(out.headers) == {"reason": b"corrupt_batch", "source": b"traces/3/5-8"}
    assert orjson.loads(out.value) == {
        "reason": "corrupt_batch", "field": None, "detail": "record batch skipped: crc_mismatch",
        "payload": {"topic": "traces", "partition": 3, "first_offset": 5, "last_offset": 8}}
    assert r.sources[3].next_offset == 9          # the commit passes it: no lag, no re-skip
    assert registry.get_sample_value("detector_kafka_corrupt_batches_total") == 1
    r._skipped([CorruptBatch("traces", 3, 2, 4, "crc_mismatch")])
    assert r.sources[3].next_offset == 9          # never backwards
