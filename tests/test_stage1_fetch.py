"""What stage 1 holds from a fetch: kafka.fetch_max_bytes bounds the fetch (compressed bytes)
and the records taken from it at once (decompressed), without a broker."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import msgspec
import pytest

from detector.config import ConfigError, load_config, parse_config
from detector.stream.kafka_io import CorruptBatches
from detector.stream.stage1_runner import Stage1Runner


class _Record(NamedTuple):
    serialized_value_size: int


def _runner(**kafka: Any) -> Stage1Runner:
    raw = msgspec.to_builtins(load_config(None, env=False))
    raw["kafka"].update(kafka)
    return Stage1Runner(parse_config(raw), stage2_topic="s2", stage2_partitions=1)


def test_the_consumer_fetches_at_most_fetch_max_bytes_and_skips_corrupt_batches() -> None:
    r = _runner(fetch_max_bytes=12 << 20)

    async def consumer() -> Any:
        c = r.new_consumer()
        await c.stop()        # never started: closes its client, no connection made
        return c

    c = asyncio.run(consumer())
    assert (c._fetch_max_bytes, c._max_partition_fetch_bytes) == (12 << 20, 3 << 20)
    assert c._check_crcs is r.corrupt and isinstance(r.corrupt, CorruptBatches)
    assert load_config(None, env=False).kafka.fetch_max_bytes == 8 << 20   # the default


def test_records_taken_at_once_are_bounded_by_their_decompressed_size() -> None:
    r = _runner()                                  # 8 MiB, batch_max_messages 1000
    assert r._max_records() == 8                   # nothing seen yet: 1 MiB messages at most
    # 100-event messages; a sample of each partition's records: 8 of 5000, all 10 of 10.
    r._measure([[_Record(33_000)] * 5000, [_Record(31_000)] * 10])
    assert r._max_records() == int((8 << 20) / ((8 * 33_000 + 10 * 31_000) / 18)) == 263
    r._measure([[_Record(330)] * 20_000])
    assert r._max_records() == 10_000              # small messages: batch_max_messages x 10
    r._measure([])                                 # an empty fetch says nothing new
    assert r._max_records() == 10_000


def test_fetch_max_bytes_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.fetch_max_bytes: Expected `int` >= 1048576"):
        _runner(fetch_max_bytes=1000)
