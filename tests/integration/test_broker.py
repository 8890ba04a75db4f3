"""The embedded broker itself: starts, answers metadata, creates topics, restarts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance
from harness import join_two

from detector.lab.broker import Tansu, answers_metadata
from detector.stream.kafka_io import delay_follower_sync, fetch_highwaters, produce

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


def test_a_group_follower_is_not_parked_by_its_early_sync(broker: Tansu) -> None:
    """Tansu parks a follower's SyncGroup that comes before the leader's assignment and
    answers it a second later. Here the leader takes 20 ms to assign (Faust's assignor takes
    longer than aiokafka's): without delay_follower_sync every follower was parked."""
    delay_follower_sync()
    broker.create_topics(["sync-probe"], partitions=4)
    syncs: list[tuple[str, float]] = []
    send, lead = (CoordinatorGroupRebalance._send_sync_group_request,
                  CoordinatorGroupRebalance._on_join_leader)

    async def timed_send(self: CoordinatorGroupRebalance, request: Any) -> Any:
        t = time.monotonic()
        try:
            return await send(self, request)
        finally:
            role = "leader" if request._group_assignment else "follower"
            syncs.append((role, time.monotonic() - t))

    async def slow_lead(self: CoordinatorGroupRebalance, response: Any) -> Any:
        await asyncio.sleep(0.02)
        return await lead(self, response)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CoordinatorGroupRebalance, "_send_sync_group_request", timed_send)
        mp.setattr(CoordinatorGroupRebalance, "_on_join_leader", slow_lead)
        for i in range(3):
            assert asyncio.run(join_two(broker.bootstrap, f"sync-probe-{i}",
                                        "sync-probe")) == [[0, 2], [1, 3]]
    assert sorted(role for role, _ in syncs) == ["follower"] * 3 + ["leader"] * 3
    # Answered at once, or parked (~1 s): nothing in between.
    assert [role for role, took in syncs if took > 0.5] == []
