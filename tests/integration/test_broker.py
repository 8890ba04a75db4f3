"""The embedded broker itself: starts, answers metadata, creates topics, restarts."""

from __future__ import annotations

import asyncio

import pytest

from detector.broker import Tansu, answers_metadata
from detector.kafka_io import fetch_highwaters, produce

pytestmark = pytest.mark.integration


def test_topics_and_fetch_highwater(broker: Tansu) -> None:
    broker.create_topics(["hw-probe"], partitions=2)
    asyncio.run(produce(broker.bootstrap, "hw-probe", [b"%d" % i for i in range(1000)],
                        partitions=2))

    class TP:
        def __init__(self, p: int) -> None:
            self.topic, self.partition = "hw-probe", p

    tps = [TP(0), TP(1)]
    got = asyncio.run(fetch_highwaters(broker.bootstrap, {tp: 1 for tp in tps}))
    # 500 records per partition; the fetch high watermark is the true log end.
    assert sorted(got.values()) == [500, 500]


def test_restart_same_port(caplog: pytest.LogCaptureFixture) -> None:
    b = Tansu()
    b.start()
    try:
        port = b.port
        b.restart()
        assert b.port == port and answers_metadata(b.bootstrap)
        # Waiting for the port to open logs no client errors (make demo printed one).
        assert not [r for r in caplog.records if r.name.startswith("aiokafka")]
    finally:
        b.stop()
    assert not answers_metadata(b.bootstrap, timeout=1.0)
