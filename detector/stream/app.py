"""The Faust app (`detector run`): the only module that imports faust.

Topology (one worker process runs both halves; scale out by adding workers and partitions):

* stage 1 — :class:`detector.stream.stage1_runner.Stage1Runner`, an aiokafka batch consumer on the
  trace topic (raw bytes, ``getmany``) in group ``<group>-stage1``: decode, hard rules, window
  partials. Every flush it sends one :class:`~detector.stream.stage1_runner.Envelope` per stage-2
  partition (partials and hits whose route key lives there + its source watermarks), rejects
  to the dead-letter topic, then commits. Faust's per-message path costs many times the
  detection work, so the trace topic never goes through it.
* stage 2 — a Faust agent on ``<group>-stage2`` (few messages), split by the finest cohort
  (decision 0010): each stage-2 partition's :class:`~detector.core.shards.Peer` (held by a
  :class:`~detector.stream.stage2_partition.Stage2Partition`) merges the partials of the finest
  cohorts hashed to it and of every coarser cohort, scores a window at the minimum watermark
  over source partitions (idle ones excluded after ``idle_partition_timeout_seconds``), sends
  its per-window report to every other partition over the same topic, and decides the window
  (grouping, the replicated alert lifecycle) once every partition's report is in, emitting
  the alerts of its own cohorts. It writes every changed route key's state, and its exchange
  state, to the changelog-backed table ``stage2`` under keys that hash to the partition
  (``use_partitioner``: the changelog partition of a key is the stage-2 partition).

Tansu's ListOffsets(latest) under-reports the log end, which made Faust's table recovery stop
short of the last changelog records (measured: lost updates after SIGKILL failover);
:func:`_patch_faust` corrects it with fetch high watermarks, and sets the fetch wait that
Faust fixes at 1500 ms (Tansu answers a waiting fetch late: see ``_worker_consumer``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.config
import os
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import faust
import faust.transport.drivers.aiokafka as faust_aiokafka
import msgspec
import orjson
from mode import Service
from prometheus_client import CollectorRegistry

from detector.config import Config
from detector.core.alert import Alert
from detector.core.containment import Call, plan, record
from detector.core.partials import encode, reroute
from detector.core.reload import plan_reload
from detector.core.snapshot import dump_input, dump_route, load_input, load_route, routes
from detector.core.stage2 import MAX_GAP_WINDOWS
from detector.obs.logs import logging_config
from detector.obs.metrics import Metrics, attach_faust_sensor, serve
from detector.runtime import load_or_report, tune_gc
from detector.sinks.containment import ContainmentCaller
from detector.sinks.evidence import EvidenceSink, WindowTotals
from detector.sinks.kafka import KafkaSink
from detector.stream.kafka_io import (
    client_kwargs,
    delay_follower_sync,
    ensure_topics,
    fetch_highwaters,
    fetch_wait_ms,
    partition_for,
    probe_metadata,
)
from detector.stream.reloader import ConfigReloader
from detector.stream.stage1_runner import Envelope, Stage1Runner, decode_envelope, encode_envelope
from detector.stream.stage2_partition import (
    EXCHANGE,
    INPUT,
    MODELS,
    PENDING,
    Stage2Partition,
    key_name,
    legacy,
    pack,
    pending_key,
    pending_window,
    table_key,
    unpack,
)

__all__ = ["SINK_KINDS", "Worker", "add_arguments", "build", "build_sink", "run",
           "wait_for_broker"]

log = logging.getLogger("detector.stream.app")


def _jlog(level: int, event: str, **fields: Any) -> None:
    log.log(level, orjson.dumps({"event": event, **fields}, default=str).decode())


# -- Tansu: fetch high watermarks for Faust's changelog recovery, and its fetch wait ----------
_SETTINGS: dict[str, Any] = {}   # what the Faust patches read; set by _patch_faust
_orig_highwaters = faust_aiokafka.AIOKafkaConsumerThread._highwaters


async def _highwaters(self: Any, partitions: Any) -> Any:
    listed = await _orig_highwaters(self, partitions)
    if self.consumer.in_transaction or not _SETTINGS:
        return listed
    return await fetch_highwaters(_SETTINGS["bootstrap"], listed, **_SETTINGS["kw"])


_orig_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _worker_consumer(self: Any, transport: Any) -> Any:
    # Faust fixes the fetch wait at 1500 ms. Tansu answers a waiting fetch only at its next
    # look, not when records arrive, so a long wait adds most of itself to every stage-2 hop
    # (bench/tansu.py measures it; it shows in bench/stream.py's tail and every alert's latency).
    c = _orig_worker_consumer(self, transport)
    c._fetch_max_wait_ms = _SETTINGS.get("fetch_max_wait_ms", c._fetch_max_wait_ms)
    return c


def _patch_faust(cfg: Config) -> None:
    """Point Faust's consumer at the fetch high-watermark fix and the configured fetch wait."""
    _SETTINGS.update(bootstrap=cfg.kafka.brokers, kw=client_kwargs(cfg.kafka),
                     fetch_max_wait_ms=fetch_wait_ms(cfg.kafka))
    # Patched on purpose (method-assign): see _highwaters and _worker_consumer.
    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _worker_consumer  # type: ignore[method-assign]


def _credentials(cfg: Config) -> Any:
    k = cfg.kafka
    kw = client_kwargs(k)
    if k.security_protocol == "SSL":
        return faust.SSLCredentials(kw["ssl_context"])
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=k.sasl_username, password=k.sasl_password,
                                     mechanism=k.sasl_mechanism or "PLAIN",
                                     ssl_context=kw.get("ssl_context"))
    return None


# -- the worker ---------------------------------------------------------------------------------
@dataclass
class _Unsaved:
    """What the stage-2 agent changed since its last table write (by partition q): route
    keys whose models or alerts changed, route keys whose held hits changed, partitions
    whose exchange state changed; and the stage-2 messages behind it, acked once it is
    written. (The input that came is each partition's ``fresh``.)"""

    touched: set[tuple[int, str]] = field(default_factory=set)
    held: set[tuple[int, str]] = field(default_factory=set)
    moved: set[int] = field(default_factory=set)
    events: list[Any] = field(default_factory=list)


class Worker:
    """Everything `detector run` starts in one process: the Faust app (stage 2 + table), the
    stage-1 runner as a service, the sinks and the metrics."""

    def __init__(self, cfg: Config, *, registry: CollectorRegistry | None = None,
                 extra_sinks: list[Any] | None = None, config_path: str | None = None,
                 watch_config: float = 0.0) -> None:
        self.cfg = cfg
        k = cfg.kafka
        self.q = k.partitions
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, cohort_top_k=cfg.metrics.cohort_top_k)
        self.stage2_topic_name = f"{k.group}-stage2"
        session = cfg.kafka.session_timeout_seconds
        self.runner = Stage1Runner(
            cfg, stage2_topic=self.stage2_topic_name, stage2_partitions=self.q,
            metrics=self.metrics, flush_interval=cfg.kafka.flush_interval_seconds,
            session_timeout=session)
        self.kafka_sink = KafkaSink(None, k.alerts_topic, metrics=self.metrics)
        self.extra_sinks = list(extra_sinks or [])
        self.own_sinks = {kind: sink for kind in SINK_KINDS
                          if (sink := build_sink(kind, cfg, self.metrics)) is not None}
        self.sinks: list[Any] = self._sink_list(cfg)
        # SIGHUP (and --watch-config) re-read the config; see reconfigure.
        self.reloader = ConfigReloader(config_path, cfg, self.reconfigure, self.metrics)
        self.watch_config = watch_config
        self.parts: dict[int, Stage2Partition] = {}
        self._outgoing: list[tuple[int, bytes]] = []   # (from partition, report) to send
        # Route keys restored with a hits record: rewritten once (one written before the
        # per-window records also held the pending input, now in memory only).
        self._rehold: set[tuple[int, str]] = set()
        # What the stage-2 agent changed since its last table write, and the input behind it.
        self._unsaved = _Unsaved()
        self._saved_at = time.monotonic()
        self._stopping = False   # stopping: save after every batch
        self._stream: Any = None
        # Records written before the split (one per route key, its whole tree; under the app
        # and environment before the app routing): the partitions that loaded each (or have
        # their own records of its route). Deleted once every partition has written it anew.
        self.retired: dict[bytes, set[int]] = {}
        self.severity: dict[str, str] = {}
        self.redelivered = 0
        # Containment outcomes from the caller's thread, recorded on the alert state by the
        # stage-2 agent (deque appends and pops are thread-safe).
        self.outcomes: deque[tuple[str, str, str, float]] = deque()
        self.containment = (ContainmentCaller(cfg.containment, metrics=self.metrics,
                                              on_result=self._outcome)
                            if cfg.containment else None)
        ev = cfg.evidence
        self.evidence = (EvidenceSink(cfg, metrics=self.metrics,
                                      out=open(ev.jsonl, "ab") if ev.jsonl else None)  # noqa: SIM115
                         if ev.kafka_topic or ev.jsonl else None)
        self.totals: WindowTotals | None = None   # set with the first stage-2 partition
        _patch_faust(cfg)
        delay_follower_sync()
        # Faust makes a data directory even for memory tables; not in the caller's cwd.
        self._datadir = tempfile.TemporaryDirectory(prefix="detector-faust-")
        self.app = faust.App(
            k.group, datadir=self._datadir.name,
            broker=[f"kafka://{b.strip()}" for b in k.brokers.split(",")],
            broker_credentials=_credentials(cfg), value_serializer="raw",
            key_serializer="raw", web_enabled=False, store="memory://",
            topic_partitions=self.q, topic_replication_factor=k.replication_factor,
            consumer_auto_offset_reset="earliest",
            # Tansu makes a group join wait half the session timeout (Faust's default 60 s).
            broker_session_timeout=session, broker_rebalance_timeout=session,
            broker_heartbeat_interval=max(session / 5, 0.5),
            # A route key's state is its baselines plus pending partials in a backlog: large.
            producer_max_request_size=32 << 20, consumer_max_fetch_size=64 << 20)
        self.topic = self.app.topic(self.stage2_topic_name, key_type=bytes, value_type=bytes,
                                    partitions=self.q, internal=True)
        self.table = self.app.Table("stage2", default=None, key_type=bytes, value_type=bytes,
                                    partitions=self.q, use_partitioner=True)
        self.app.agent(self.topic, name="stage2")(self._agent)
        # Faust sends the revoked set positionally (its stub wants only *args and signal=).
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        attach_faust_sensor(self.app, self.registry)

    async def _on_revoked(self, sender: Any, revoked: Any, **kw: Any) -> None:
        # Eager rebalance: drop the cache; the table (kept in step on every change) is the truth.
        for tp in revoked:
            if tp.topic == self.stage2_topic_name:
                self.parts.pop(tp.partition, None)
        # Unsaved input of a revoked partition stays unacked: its next owner is sent it again.
        gone = {tp.partition for tp in revoked if tp.topic == self.stage2_topic_name}
        self._unsaved.events = [e for e in self._unsaved.events
                                if e.message.partition not in gone]

    def _part(self, q: int) -> Stage2Partition:
        part = self.parts.get(q)
        if part is None:
            part = self.parts[q] = Stage2Partition(
                q, self.cfg, self.cfg.kafka.idle_partition_timeout_seconds, self.q)
            if self.evidence is not None:
                if self.totals is None:
                    self.totals = WindowTotals(part.stage2.scorer.layout.names,
                                               self.cfg.evidence.severities,
                                               list(map(list, self.cfg.cohorts.levels)))
                part.stage2.on_closed = self.totals
            n = 0
            exchange = None
            inputs: list[tuple[int, bytes, bytes]] = []   # (number, table key, state)
            items = [(key, value) for key, value in list(self.table.items()) if value]
            mine: set[str] = set()   # route keys this partition has records of its own of
            for key, value in items:
                if legacy(key) or partition_for(key, self.q) != q:
                    continue
                state, hits, offset = unpack(value)
                part.offset = max(part.offset, offset)
                name = key_name(key)
                if name == EXCHANGE:
                    exchange = state
                    continue
                if name.startswith(INPUT):   # merged after the rest, in the order written
                    inputs.append((int(name[len(INPUT):]), key, state))
                    continue
                pw = pending_window(name)
                if pw is not None:
                    if pw[1] is None:   # rewritten hits only: before per-window records
                        self._rehold.add((q, pw[0]))   # it held the pending input too
                    else:
                        part.windows[(pw[0], pw[1])] = key
                elif name.endswith(MODELS):
                    mine.add(name[:-len(MODELS)].decode())
                load_route(part.stage2, state)
                for h in hits:
                    part.hold(h)
                n += 1
            n += self._load_legacy(part, [(k, v) for k, v in items if legacy(k)], mine)
            part.stage2.prune()   # a route key's whole tree, as written before the split
            if exchange is not None:   # after the route keys: it re-queues the open report
                part.stage2.load_exchange(exchange)
            for _, key, state in sorted(inputs):   # after the exchange: what is not scored
                parts = load_input(state)
                part.stage2.restore_input(parts)
                part.inputs[key] = {p.window for p in parts}
            _jlog(logging.INFO, "stage2_partition_loaded", partition=q, route_keys=n,
                  next_window=part.stage2.next_window, applied_offset=part.offset)
        return part

    def _load_legacy(self, part: Stage2Partition, items: list[tuple[bytes, bytes]],
                     mine: set[str]) -> int:
        """Records written before the split (a route key's whole tree under its plain key;
        before the app routing, under the app and environment): the partition loads each
        whose route it has no record of its own of (its own was written after them), and an
        app's plain record before its old ones (written before it; their deletion may not
        have happened). It writes what it loaded under its own keys at the next save, and
        the old records go once every partition has (:meth:`_save`): every partition keeps
        a replica of the coarser cohorts, so each must load them."""
        q = part.q
        root = self.cfg.cohorts.levels[0]
        entries = [(key, value, reroute(key.decode(), root)) for key, value in items]
        apps = {r for key, _, r in entries if r == key.decode()}
        n = 0
        for key, value, route in entries:
            self.retired.setdefault(key, set()).add(q)
            if route in mine or (route != key.decode() and route in apps):
                continue
            state, hits, offset = unpack(value)
            load_route(part.stage2, state)
            for h in hits:
                part.hold(h if h.route == route else msgspec.structs.replace(h, route=route))
            if partition_for(key, self.q) == q:   # offsets of this stage-2 partition
                part.offset = max(part.offset, offset)
            # Written anew at the next save: models, each pending window and held hits, and
            # the partition's exchange record.
            self._unsaved.touched.add((q, route))
            self._unsaved.moved.add(q)
            self._rehold.add((q, route))
            n += 1
        return n

    def _outcome(self, alert_id: str, action: str, status: str, at: float) -> None:
        self.outcomes.append((alert_id, action, status, at))

    def _record_outcomes(self, touched: set[tuple[int, str]]) -> None:
        """Containment outcomes onto the alerts' state (written to the table with the rest)."""
        while self.outcomes:
            alert_id, action, status, at = self.outcomes.popleft()
            for q, part in self.parts.items():   # every replica of the lifecycle here
                key = record(part.stage2.life, alert_id, action, status, at)
                if key is not None:
                    touched.add((q, part.stage2.route_of(key[1], key[2])))

    def _contain(self, part: Stage2Partition, alerts: list[Alert], calls: list[Call]
                 ) -> list[Alert]:
        """Claim the containment actions of these alerts in the state (before the table
        write that persists them), and the calls to make after it."""
        if self.containment is None:
            return alerts
        out = []
        now = time.time()
        for a in alerts:
            a, cs = plan(part.stage2.life, a, self.cfg.containment, now)
            out.append(a)
            calls += cs
        return out

    async def _agent(self, stream: Any) -> None:
        # Input is acked only once the table holds what it did (_save): a successor resumes
        # from the last write and is delivered the input since then again.
        self._stream = stream
        async for events in stream.noack_take(256, within=0.01):
            alerts: list[Alert] = []
            u = self._unsaved
            calls: list[Call] = []
            self._record_outcomes(u.touched)
            steps = {q: (part.stage2.step, part.stage2.windows_closed)
                     for q, part in self.parts.items()}
            for ev in events:
                q = ev.message.partition
                part = self._part(q)
                if ev.message.offset <= part.offset:
                    # At-least-once redelivery after a failover: already in the table state.
                    self.redelivered += 1
                    continue
                part.offset = ev.message.offset
                u.moved.add(q)
                steps.setdefault(q, (part.stage2.step, part.stage2.windows_closed))
                env = decode_envelope(ev.value)
                part.report(env.sources, env.n_src)
                s2 = part.stage2
                for h in env.hits:
                    part.hold(h)
                    u.held.add((q, h.route))
                for p in env.partials:
                    wire = encode(p)   # as it came (merging mutates it)
                    late = s2.late_partials
                    s2.add_partial(p)
                    if s2.late_partials == late:   # taken: written at the next save
                        part.fresh.append((p.route, p.window, wire))
                for r in env.reports:   # another partition's report: may decide a window
                    alerts += self._contain(part, s2.receive(r), calls)
            u.events += events
            now = time.monotonic()
            for q, part in self.parts.items():
                hits = part.release(now)
                u.touched.update((q, h.route) for h in hits)
                u.held.update((q, h.route) for h in hits)
                wm = part.watermark(now)
                if wm is not None and wm > part.applied:
                    part.applied = wm
                    u.moved.add(q)
                elif hits:
                    wm = None   # hits only: no window to close
                    u.moved.add(q)
                else:
                    wm = None
                s2 = part.stage2
                if wm is not None or hits:
                    alerts += self._contain(part, s2.apply(hits, wm), calls)
            alerts += self._deliver_here(calls, u.moved)
            for q, part in self.parts.items():
                s2 = part.stage2
                step, before = steps.get(q, (None, s2.windows_closed))
                if s2.step != step:
                    # Scoring a window changes every route key's models: write them all
                    # (and delete the scored windows' input records) at the next save.
                    u.touched.update((q, r) for r in routes(s2))
                    u.moved.add(q)
                    part.resent_at = now
                elif (s2.open is not None or s2.ahead) and (
                        now - part.resent_at >= RESEND_AFTER_S):
                    s2.resend()   # a report lost on the way must not hold the window forever
                    part.resent_at = now
                if s2.windows_closed != before:
                    self.metrics.windows_closed.inc(s2.windows_closed - before)
                    # This worker's stage-2 load so far on the partition (bench/stream.py
                    # reads its spread over workers).
                    _jlog(logging.INFO, "stage2_load", partition=q,
                          windows_closed=s2.windows_closed, cohort_windows=s2.cohort_windows,
                          pairs_scored=s2.pairs_scored, ran_ahead=s2.ran_ahead,
                          held_back=s2.held_back)
                    counts = [p.stage2.cohort_counts() for p in self.parts.values()]
                    self.metrics.cohorts.labels(state="warming").set(sum(c[0] for c in counts))
                    self.metrics.cohorts.labels(state="warm").set(sum(c[1] for c in counts))
            self.emit(alerts)
            self._preserve(alerts)
            # Containment claims must be in the table before their calls (a successor finds
            # them and does not call again): a batch with calls saves at once.
            if calls or self._stopping or self.app.rebalancing or (
                    now - self._saved_at >= self.cfg.kafka.state_write_interval_seconds):
                await self._save()
            # Reports go out before their state is saved: a successor that resumes from an
            # earlier save scores those windows again alike, and receivers drop a report of
            # a window they have decided.
            await self._send_reports()
            if self.containment is not None:
                for c in calls:
                    self.containment.submit(c)

    async def save_loop(self, stopping: asyncio.Event) -> None:
        """Save what the agent left unsaved once the interval has passed without a batch to
        do it (a quiet stream), and at once in a rebalance (Faust waits for the acks)."""
        tick = min(self.cfg.kafka.state_write_interval_seconds, 0.1) or 0.1
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), tick)
            if self._unsaved.events and (
                    stopping.is_set() or self.app.rebalancing or time.monotonic()
                    - self._saved_at >= self.cfg.kafka.state_write_interval_seconds):
                await self._save()

    async def _save(self) -> None:
        """State in the table, then the input it reflects acked. Models (the bulk) only when
        they changed; input as it came since the last save, one record per partition
        holding the partials of every window not scored yet, so input is written once
        (decision 0010), and the record deleted with the save that holds the models that
        scored the last of its windows."""
        u, self._unsaved = self._unsaved, _Unsaved()
        self._saved_at = time.monotonic()
        for q, part in self.parts.items():
            if q in u.moved:
                pending = part.stage2.pending
                for rw in [rw for rw in part.windows if rw[1] not in pending]:
                    self.table.pop(part.windows.pop(rw), None)
                for tk in [k for k, ws in part.inputs.items() if pending.keys().isdisjoint(ws)]:
                    del part.inputs[tk]
                    self.table.pop(tk, None)
        for q, key in u.touched:
            owner = self.parts.get(q)
            if owner is not None:
                self.table[table_key(key.encode() + MODELS, q, self.q)] = pack(
                    dump_route(owner.stage2, key, "models"), [], owner.offset)
        # A route key restored with pending input in a record of before: its windows whole,
        # one record each (their input since is in them: not written twice).
        whole: set[tuple[int, str, int]] = set()
        for q, key in self._rehold:
            owner = self.parts.get(q)
            if owner is not None:
                for w in owner.stage2.pending:
                    whole.add((q, key, w))
                    tk = owner.windows.setdefault((key, w), pending_key(key, w, q, self.q))
                    self.table[tk] = pack(dump_route(owner.stage2, key, "pending", (w,)), [],
                                          owner.offset)
        for q, part in self.parts.items():
            pending = part.stage2.pending
            fresh = [(w, b) for r, w, b in part.fresh
                     if w in pending and (q, r, w) not in whole]
            part.fresh = []
            if fresh:
                tk = table_key(INPUT + b"%d" % part.offset, q, self.q)
                self.table[tk] = pack(dump_input([b for _, b in fresh]), [], part.offset)
                part.inputs[tk] = {w for w, _ in fresh}
        u.held |= self._rehold
        self._rehold.clear()
        for q, key in u.held:
            owner = self.parts.get(q)
            if owner is not None:
                self.table[table_key(key.encode() + PENDING, q, self.q)] = pack(
                    dump_route(owner.stage2, key, "pending", ()), owner.held_for(key),
                    owner.offset)
        for q in u.moved:
            owner = self.parts.get(q)
            if owner is not None:
                self.table[table_key(EXCHANGE, q, self.q)] = pack(
                    owner.stage2.dump_exchange(), [], owner.offset)
        for old, qs in list(self.retired.items()):
            if qs.issuperset(range(self.q)):
                if all(q in self.parts for q in qs) and old in self.table:
                    del self.table[old]   # every partition has written its state anew
                del self.retired[old]
        stream = self._stream
        for ev in u.events:
            # A partition revoked since: its input goes to the next owner, unacked.
            if ev.message.partition in self.parts:
                await stream.ack(ev)

    def _deliver_here(self, calls: list[Call], moved: set[int]) -> list[Alert]:
        """Reports between stage-2 partitions of this worker, handed over in process (each
        receiver's exchange state is written with this batch, as one read from the topic
        would be), until none is left: one worker's windows do not wait for a broker hop.
        The reports are kept for the partitions other workers hold (:meth:`_send_reports`)."""
        out: list[Alert] = []
        for _ in range(MAX_GAP_WINDOWS + 2):   # each round decides at most one window
            sent = False
            for q, part in list(self.parts.items()):
                for r in part.stage2.take_outbox():
                    sent = True
                    self._outgoing.append((q, r))
                    for q2, other in self.parts.items():
                        if q2 != q:
                            out += self._contain(other, other.stage2.receive(r), calls)
                            moved.add(q2)
            if not sent:
                break
        return out

    async def _send_reports(self) -> None:
        """Each partition's new reports to every stage-2 partition this worker does not hold.
        Not waited for: the next batch need not wait on the broker's answer, and a report
        lost on the way is sent again (RESEND_AFTER_S)."""
        producer = self.runner.producer
        if producer is None:
            return   # not started yet: they stay queued
        # One message per receiving partition for a batch's reports (a peer running ahead
        # sends many at once), in the order they were made.
        to: dict[int, list[bytes]] = {}
        for q, r in self._outgoing:
            for q2 in range(self.q):
                if q2 != q and q2 not in self.parts:
                    to.setdefault(q2, []).append(r)
        for q2, reports in to.items():
            for i in range(0, len(reports), REPORTS_PER_MESSAGE):
                value = encode_envelope(Envelope({}, 0, [], [], reports[i:i + REPORTS_PER_MESSAGE]))
                fut = await producer.send(self.stage2_topic_name, value, partition=q2)
                fut.add_done_callback(_report_sent)
        self._outgoing.clear()

    def _preserve(self, alerts: list[Alert]) -> None:
        """Evidence records for the alerts that reached an [evidence] severity."""
        if self.evidence is None:
            return
        now = time.time()
        for a in alerts:
            if self.evidence.wants(a):
                try:
                    self.evidence.emit(a, self.totals.take(a.id) if self.totals else None, now)
                except Exception as e:  # a full disk must not stop the stream
                    _jlog(logging.ERROR, "sink_error", sink="evidence", error=repr(e))
        if self.totals is not None:
            self.totals.clear()

    def _sink_list(self, cfg: Config) -> list[Any]:
        out = [*self.own_sinks.values(), *self.extra_sinks]
        return [*out, self.kafka_sink] if cfg.sinks.kafka else out

    def reconfigure(self, cfg: Config) -> None:
        """Take a reloaded config (what :class:`ConfigReloader` accepted): stage 2 judges the
        next windows by it and alerts go to its sinks, with baselines and alert ids kept.
        Called on the event loop, where the stage-2 agent is between batches (its batch body
        awaits only its reports' sends, after its windows), so every window closes whole
        under one config. Every new sink is built
        before anything is swapped: a sink that cannot start leaves everything as it was."""
        plan = plan_reload(self.cfg, cfg)
        if not plan.ok:
            raise ValueError(f"needs a restart: {', '.join(plan.refused)}")
        changed = [kind for kind in SINK_KINDS
                   if getattr(self.cfg.sinks, kind) != getattr(cfg.sinks, kind)]
        built: dict[str, Any] = {}
        try:
            for kind in changed:
                built[kind] = build_sink(kind, cfg, self.metrics)
        except Exception:
            _close_sinks([x for x in built.values() if x is not None])
            raise
        for part in self.parts.values():
            part.cfg = cfg
            part.stage2.reconfigure(cfg)
        am = built.get("alertmanager")
        if am is not None:
            # A new Alertmanager sink learns the incidents already firing (it re-sends them
            # until they resolve), so a changed URL or label set does not orphan them.
            for part in self.parts.values():
                for a in part.stage2.life.firing():
                    if part.stage2.emits(a):   # each partition's replica: its own alerts
                        am.emit(a)
        old = [self.own_sinks[kind] for kind in changed if kind in self.own_sinks]
        now = {kind: built[kind] if kind in built else self.own_sinks.get(kind)
               for kind in SINK_KINDS}
        self.own_sinks = {kind: x for kind, x in now.items() if x is not None}
        self.cfg = cfg
        self.sinks = self._sink_list(cfg)
        if old:   # flushing and stopping a sender thread may wait: not on the event loop
            threading.Thread(target=_close_sinks, args=(old,), name="sink-close",
                             daemon=True).start()

    def emit(self, alerts: list[Alert]) -> None:
        for a in alerts:
            prev = self.severity.get(a.id)
            if a.status == "firing":
                self.severity[a.id] = a.severity
            else:
                self.severity.pop(a.id, None)
            self.metrics.alert_transition(a.signal, a.severity, a.status, prev)
            for s in self.sinks:
                try:
                    s.emit(a)
                except Exception as e:  # one broken sink must not stop the stream
                    _jlog(logging.ERROR, "sink_error", sink=type(s).__name__, error=repr(e))

    def close(self) -> None:
        """What must go even when the stop cannot finish: the temp folder. (The containment
        thread is a daemon: a stop that ran out of time does not wait for its calls.)"""
        self._datadir.cleanup()

    def service(self) -> Service:
        return _Stage1Service(self)

    def faust_worker(self, loglevel: str = "info") -> faust.Worker:
        return _BoundedStopWorker(self, self.app, self.service(), loglevel=loglevel,
                                  quiet=True, logging_config=logging_config(loglevel))


def _report_sent(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        _jlog(logging.WARNING, "stage2_report_not_sent", error=repr(fut.exception()),
              message=f"sent again after {RESEND_AFTER_S:g} s without progress")


#: A window waiting on other partitions' reports this long sends its own again (a send
#: that failed without a restart would otherwise hold every partition's windows).
RESEND_AFTER_S = 10.0
#: Reports in one message to a stage-2 partition (a quiet window's is a few bytes; one with
#: findings carries their evidence ids and suspected change).
REPORTS_PER_MESSAGE = 256

#: SIGTERM/SIGINT to exit at most: within deploy/k8s's 60 s grace before its SIGKILL, and
#: well above a clean stop (bench/shutdown.py).
STOP_WITHIN_S = 30.0


class _BoundedStopWorker(faust.Worker):
    """Faust's worker, but a stop on SIGTERM/SIGINT that is not done within
    :data:`STOP_WITHIN_S` (a broker that does not answer the final commit, Faust's consumer
    thread waiting on it) ends the process with status 1: what was not committed is
    redelivered to the next worker (at least once)."""

    def __init__(self, worker: Worker, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._detector = worker

    def _schedule_shutdown(self, signal: Any) -> None:   # mode calls it on SIGTERM and SIGINT
        if not self._signal_stop_time:
            t = threading.Timer(STOP_WITHIN_S, self._stop_overdue, (int(signal),))
            t.daemon = True
            t.start()
        super()._schedule_shutdown(signal)

    def _stop_overdue(self, signum: int) -> None:
        _jlog(logging.ERROR, "stop_timeout", signal=signum, waited_s=STOP_WITHIN_S,
              message="stop not done in time (broker not answering?); exiting, uncommitted "
                      "input is redelivered")
        self._detector.close()
        logging.shutdown()
        os._exit(1)


class _Stage1Service(Service):
    """Runs the stage-1 runner with the worker; stops it (final flush + commit) on shutdown."""

    def __init__(self, worker: Worker, **kw: Any) -> None:
        super().__init__(**kw)
        self.worker = worker
        self.runner = worker.runner
        self.stopping = asyncio.Event()

    async def on_start(self) -> None:
        await self.runner.start()
        self.worker.kafka_sink.producer = self.runner.producer
        if self.worker.evidence is not None:
            self.worker.evidence.producer = self.runner.producer
        self.add_future(self.runner.run(self.stopping))
        self.add_future(self.worker.save_loop(self.stopping))
        reloader = self.worker.reloader
        # The handler runs on the event loop, between the stage-2 agent's batches.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.reload, "sighup")
        if self.worker.watch_config > 0:
            self.add_future(reloader.watch(self.worker.watch_config, self.stopping))
        _jlog(logging.INFO, "config_reload_ready", path=str(reloader.path or "default config"),
              hash=reloader.hash, watch_s=self.worker.watch_config or None)

    async def on_stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        self.stopping.set()
        # From here the stage-2 agent saves after every batch, and what it left is saved
        # now: Faust's stop waits for every message to be acked.
        self.worker._stopping = True
        await self.worker._save()
        await self.worker.kafka_sink.drain(5.0)
        await self.runner.stop()
        caller = self.worker.containment
        if caller is not None:   # calls in flight finish; their retries are cut short
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, caller.flush, 5.0)
            await loop.run_in_executor(None, caller.close)


#: The sinks a config builds (each from its own key of [sinks]); Kafka's is the worker's own.
SINK_KINDS = ("log", "jsonl", "alertmanager")


def build_sink(kind: str, cfg: Config, metrics: Metrics) -> Any | None:
    """The ``kind`` sink as ``cfg`` sets it, or None where it is off."""
    if kind == "log" and cfg.sinks.log:
        from detector.sinks.log import LogSink
        return LogSink()
    if kind == "jsonl" and cfg.sinks.jsonl:
        from detector.sinks.jsonl import JsonlSink
        return JsonlSink(open(cfg.sinks.jsonl, "ab"), close_out=True)
    if kind == "alertmanager" and cfg.sinks.alertmanager.urls:
        from detector.sinks.alertmanager import AlertmanagerSink
        return AlertmanagerSink(cfg.sinks.alertmanager, metrics=metrics)
    return None


def _close_sinks(sinks: list[Any], flush_s: float = 5.0) -> None:
    """Deliver what replaced sinks still hold (bounded), then stop them."""
    for s in sinks:
        try:
            s.flush(flush_s)
            s.close()
        except Exception as e:  # a broken sink must not take the reload with it
            _jlog(logging.ERROR, "sink_error", sink=type(s).__name__, error=repr(e))


# -- start-up -----------------------------------------------------------------------------------
async def wait_for_broker(cfg: Config, *, max_wait: float | None = None) -> bool:
    """Until the cluster answers metadata: a clear log line per attempt, backoff 1 s → 30 s.
    Then create the topics the detector owns. False if ``max_wait`` ran out."""
    k = cfg.kafka
    kw = client_kwargs(k)
    start = time.monotonic()
    delay = 1.0
    attempt = 0
    while not await probe_metadata(k.brokers, **kw):
        attempt += 1
        waited = time.monotonic() - start
        if max_wait is not None and waited + delay > max_wait:
            _jlog(logging.ERROR, "broker_unreachable_giving_up", brokers=k.brokers,
                  attempts=attempt, waited_s=round(waited, 1))
            return False
        _jlog(logging.WARNING, "broker_unreachable", brokers=k.brokers, attempt=attempt,
              retry_in_s=delay, message=f"cannot reach Kafka at {k.brokers}; retrying")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
    created = await ensure_topics(
        k.brokers, {k.traces_topic: k.partitions, k.alerts_topic: k.partitions,
                    k.dead_letter_topic: k.partitions, f"{k.group}-stage2": k.partitions,
                    **{t.topic: k.partitions for t in k.extra_traces_topics},
                    **({cfg.evidence.kafka_topic: k.partitions} if cfg.evidence.kafka_topic
                       else {})},
        replication=k.replication_factor, **kw)
    _jlog(logging.INFO, "broker_ready", brokers=k.brokers, topics_created=created)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="detector TOML config (default: the packaged one)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--max-wait", type=float, default=None,
                        help="give up if the broker is unreachable this long (default: never)")
    parser.add_argument("--watch-config", type=float, nargs="?", const=2.0, default=0.0,
                        metavar="SECONDS",
                        help="reload the config when its file changes, looking every SECONDS "
                             "(default 2 when given; SIGHUP reloads it in any case)")


def run(args: argparse.Namespace) -> int:
    """`detector run`: one worker until SIGINT/SIGTERM."""
    tune_gc()   # also when started as `python -m detector.stream.app` (demo, tests, benchmarks)
    logging.config.dictConfig(logging_config(args.log_level))
    cfg = load_or_report(args.config, "run")
    if cfg is None:
        return 2
    try:
        ok = asyncio.run(wait_for_broker(cfg, max_wait=args.max_wait))
    except KeyboardInterrupt:
        return 130
    if not ok:
        return 3
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run() above closed its loop
    w = Worker(cfg, config_path=args.config, watch_config=args.watch_config)
    if cfg.metrics.port:
        _, port = serve(w.registry, cfg.metrics.host, cfg.metrics.port)
        _jlog(logging.INFO, "metrics_serving", url=f"http://{cfg.metrics.host}:{port}/metrics")
    try:
        w.faust_worker(args.log_level).execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def build(cfg: Config, **kw: Any) -> Worker:
    """A configured worker, not started (tests, demo)."""
    return Worker(cfg, **kw)


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m detector.stream.app",
                                 description="detector worker")
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
