"""A worker upgraded to routing stage 2 by app (decision 0009: the environment left out of the
route key, so an app's canary and production meet for the canary gap) and split by the finest
cohort (decision 0010) finds stage-2 state written before, one record per route key under its plain
key (one per app and environment, or already per app), in the table's changelog: every
stage-2 partition loads it (each keeps the coarser cohorts and its own finest ones), writes it
under its own keys, and the old records are deleted: the baselines survive the upgrade (no
second warm-up)."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from harness import (
    AlertReader,
    WorkerProc,
    file_lines,
    identity,
    produce_lines,
    wait_assigned,
    wait_until,
    write_config,
)

from detector.config import load_config
from detector.core.alert import alert_record
from detector.core.partials import SEP, decode_partial, encode
from detector.core.pipeline import Pipeline
from detector.core.snapshot import dump_route, load_route, routes
from detector.lab.broker import Tansu
from detector.lab.simulate import simulate
from detector.stream.kafka_io import ensure_topics, partition_for
from detector.stream.stage2_partition import EXCHANGE, INPUT, MODELS, PENDING, key_name, pack

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _old_records(pipe: Pipeline) -> dict[bytes, bytes]:
    """The stage-2 state as the previous version wrote it: one record per root cohort (app
    and environment), its pending partials under that key."""
    out: dict[bytes, bytes] = {}
    levels = pipe.stage2.levels
    for route in sorted(routes(pipe.stage2)):
        doc = msgspec.msgpack.decode(zlib.decompress(dump_route(pipe.stage2, route)))
        by_root: dict[tuple[str, ...], dict[str, list]] = {}

        def root(level: int, cohort: list[str]) -> tuple[str, ...]:
            fields = levels[level]
            return tuple(cohort[fields.index(f)] for f in levels[0])

        for m in doc["models"]:
            by_root.setdefault(root(m[0], m[1]), {"models": [], "pending": [], "alerts": []})[
                "models"].append(m)
        for raw in doc["pending"]:
            p = decode_partial(raw)
            r = root(p.level, list(p.cohort))
            p.route = SEP.join(r)
            by_root.setdefault(r, {"models": [], "pending": [], "alerts": []})[
                "pending"].append(encode(p))
        for a in doc["alerts"]:
            by_root.setdefault(root(a[2], a[0]), {"models": [], "pending": [], "alerts": []})[
                "alerts"].append(a)
        for r, part in by_root.items():
            state = zlib.compress(msgspec.msgpack.encode(
                {"v": doc["v"], "next_window": doc["next_window"], **part}), 1)
            out[SEP.join(r).encode()] = pack(state, [], -1)
    return out


def _write_changelog(bootstrap: str, topic: str, records: dict[bytes, bytes]) -> None:
    async def run() -> None:
        await ensure_topics(bootstrap, {topic: PARTITIONS})
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            for k, v in records.items():
                await p.send_and_wait(topic, v, key=k, partition=partition_for(k, PARTITIONS))
        finally:
            await p.stop()
    asyncio.run(run())


def _latest(bootstrap: str, topic: str, keys: int) -> dict[bytes, bytes | None]:
    """The changelog's last value per key (None: a tombstone)."""
    async def run() -> dict[bytes, bytes | None]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest")
        await c.start()
        out: dict[bytes, bytes | None] = {}
        try:
            idle = 0
            for _ in range(60):                 # bounded: at most ~30 s
                got = await c.getmany(timeout_ms=500)
                for recs in got.values():
                    for r in recs:
                        out[r.key] = r.value
                idle = 0 if got else idle + 1
                if idle >= 4 and len(out) >= keys:
                    break
        finally:
            await c.stop()
        return out
    return asyncio.run(run())


def test_state_under_the_old_route_keys_survives_the_upgrade(
        broker: Tansu, names: dict[str, str], tmp_path: Path) -> None:
    simulate(tmp_path / "sim", hours=2.0, rate=20.0, seed=3,
             scenarios=["refusal_spike", "canary_regression"])
    lines = file_lines(tmp_path / "sim" / "traces.jsonl")
    cut = len(lines) // 2
    cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap, partitions=PARTITIONS,
                       idle_partition_timeout_seconds=20, **names)
    config = load_config(cfg, env=False)
    before = Pipeline(config)
    for ln in lines[:cut]:
        before.feed(ln)
    old = _old_records(before)
    apps = {k.split(SEP.encode())[0] for k in old}
    assert len(old) > len(apps)                         # several environments per app
    # One app was moved already (a worker wrote its own record, then died before deleting
    # the old ones, here stale: from early in the day): its own record is the state.
    done = sorted(apps)[0]
    early = Pipeline(config)
    for ln in lines[:cut // 4]:
        early.feed(ln)
    stale = {k: v for k, v in _old_records(early).items() if k.split(SEP.encode())[0] == done}
    assert stale
    own = {done: pack(dump_route(before.stage2, done.decode()), [], -1)}
    # Some app's environments were on different stage-2 partitions under the old keys.
    assert any(len({partition_for(k, PARTITIONS) for k in old if k.startswith(a + SEP.encode())})
               > 1 for a in apps)

    # What the upgraded detector pages from the old state on, in process.
    expected_pipe = Pipeline(config)
    for key, blob in old.items():
        if key.split(SEP.encode())[0] != done:
            load_route(expected_pipe.stage2, msgspec.msgpack.decode(blob)[0])
    load_route(expected_pipe.stage2, msgspec.msgpack.decode(own[done])[0])
    expected = [alert_record(a) for ln in lines[cut:] for a in expected_pipe.feed(ln)]
    cold = Pipeline(config)
    cold_alerts = [alert_record(a) for ln in lines[cut:] for a in cold.feed(ln)]
    assert sorted(map(identity, cold_alerts)) != sorted(map(identity, expected))  # teeth

    changelog = f"{names['group']}-stage2-changelog"
    written = {**{k: v for k, v in old.items() if k.split(SEP.encode())[0] != done},
               **stale, **own}
    _write_changelog(broker.bootstrap, changelog, written)
    w = WorkerProc(cfg, tmp_path / "worker.log")
    reader = AlertReader(broker.bootstrap, names["alerts_topic"])
    try:
        wait_assigned(w)
        produce_lines(broker.bootstrap, names["traces_topic"], lines[cut:],
                      partitions=PARTITIONS)
        wait_until(lambda: len(reader.poll()) >= len(expected), 180,
                   f"{len(expected)} alerts on {names['alerts_topic']}")
        reader.poll(2.0)
        assert sorted(map(identity, reader.alerts)) == sorted(map(identity, expected))
        # Every partition loads every record (the coarser cohorts are replicated), but not
        # the stale ones.
        loaded = [e["route_keys"] for e in w.events("stage2_partition_loaded")]
        assert loaded == [len(written) - len(stale)] * PARTITIONS
        latest = _latest(broker.bootstrap, changelog, len(old) + len(apps))
        assert all(latest.get(k, b"") is None for k in old)       # old keys deleted
        assert latest.get(done, b"") is None                      # and the app's plain one
        live = {k for k, v in latest.items() if v}
        names = {key_name(k) for k in live}
        assert EXCHANGE in names
        # State under the app's key, each partition's own records of it (and the input
        # not scored yet as it came, under the partition's).
        routes_live = {n.split(PENDING)[0].split(MODELS)[0] for n in names - {EXCHANGE}
                       if not n.startswith(INPUT)}
        assert routes_live == apps
        assert all(len({partition_for(k, PARTITIONS) for k in live
                        if key_name(k) == a + MODELS}) == PARTITIONS for a in apps)
        assert "Traceback" not in w.log()
    finally:
        reader.close()
        assert w.stop() is not None
