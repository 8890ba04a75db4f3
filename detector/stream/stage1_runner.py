"""Stage 1 on the trace topic: an aiokafka batch consumer that decodes, checks hard rules
and counts window partials per source partition, and hands them to stage 2 in one
:class:`Envelope` per stage-2 partition each flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from detector.config import Config
from detector.core.events import Rejection
from detector.core.otlp import Decoder, decoder_for
from detector.core.partials import LegacyPartial, Partial, combine
from detector.core.rules import LegacyHit, RuleHit
from detector.core.shards import peers_of
from detector.core.signals import EVENTS
from detector.core.stage1 import Stage1
from detector.core.watermark import SourceMark
from detector.core.wire import Wire
from detector.obs.metrics import Metrics
from detector.stream.kafka_io import (
    CorruptBatch,
    CorruptBatches,
    client_kwargs,
    fetch_wait_ms,
    skip_corrupt_batches,
)
from detector.stream.stage2_partition import owner

__all__ = ["Envelope", "Stage1Runner", "decode_envelope", "encode_envelope"]

#: Events worked on between two yields to the event loop. Each yield lets the loop read one
#: more 256 KiB piece of the next fetch response from the socket; with four times as many the
#: worker waited on the broker between fetches (bench/stream.py shows the throughput).
CHUNK_EVENTS: Final = 2048
#: On a backlog stage 1 flushes every flush_interval x this (alerts wait on it anyway).
BACKLOG_FLUSH_FACTOR: Final = 4
#: Source ids of the i-th extra trace topic start at (i + 1) x this; the main topic's are its
#: partition numbers (so one topic works as before).
SOURCE_STRIDE: Final = 1 << 20

log = logging.getLogger("detector.kafka")


class Envelope(msgspec.Struct, array_like=True):
    """What stage 1 sends to one stage-2 partition per flush: the partials and hard-rule hits
    whose route key lives there, and the watermark of every source partition it owns (in the
    same message, so a watermark never overtakes the partials it covers)."""

    sources: dict[int, SourceMark]           # per source partition
    n_src: int                               # partitions of the trace topic
    partials: list[Partial]
    hits: list[RuleHit]
    # Added with stage 2 split by the finest cohort (decision 0010): a stage-2 partition's
    # per-window reports to the others (core.shards.Report bytes); stage 1 sends none.
    reports: list[bytes] = []


class Outgoing(NamedTuple):
    """One record queued for the next flush's send (dead letters, envelopes)."""

    topic: str
    partition: int | None            # None: the producer's partitioner picks
    value: bytes
    headers: list[tuple[str, bytes]]


class _LegacyEnvelope(Envelope):
    """One a stage 1 from before named version combinations as joined strings sent."""

    partials: list[LegacyPartial]  # type: ignore[assignment]  # the old wire form
    hits: list[LegacyHit]  # type: ignore[assignment]  # the old wire form

    def upgrade(self) -> Envelope:
        return Envelope(self.sources, self.n_src, [p.upgrade() for p in self.partials],
                        [h.upgrade() for h in self.hits])


_ENVELOPE: Final = Wire(Envelope, _LegacyEnvelope)   # an old one in flight across an upgrade
_PLAIN: Final = msgspec.msgpack.Encoder()


def encode_envelope(e: Envelope) -> bytes:
    if e.reports:
        return _ENVELOPE.encode(e)
    # Without reports, the four fields of before: a worker of older code reads it.
    return _PLAIN.encode((e.sources, e.n_src, e.partials, e.hits))


def decode_envelope(data: bytes) -> Envelope:
    return _ENVELOPE.decode(data)


class _Source:
    """One assigned trace-topic partition."""

    __slots__ = ("hits", "last_data", "next_offset", "stage1")

    def __init__(self, config: Config, now: float, decoder: Decoder | None = None) -> None:
        self.stage1 = Stage1(config, clock=time.time, decoder=decoder)   # a live stream: "now"
        self.next_offset: int | None = None
        self.last_data = now
        self.hits: list[RuleHit] = []


class Stage1Runner(ConsumerRebalanceListener):
    """Stage 1 as a batch consumer: aiokafka ``getmany`` on the trace topic (its own consumer
    group ``<group>-stage1``), one :class:`Stage1` per source partition, a flush every
    ``flush_interval`` seconds (at once when a hard rule fired): partials, hits and
    watermarks to the stage-2 topic, rejects to the dead-letter topic, then the commit.
    Faust's per-message path costs far more than the detection work; ``getmany`` does not."""

    def __init__(self, config: Config, *, stage2_topic: str, stage2_partitions: int,
                 metrics: Metrics | None = None, flush_interval: float = 0.5,
                 session_timeout: float = 10.0, heartbeat: float = 5.0) -> None:
        k = config.kafka
        self.config = config
        self.topic = k.traces_topic
        # Trace topics in a fixed order (source ids follow it), each with its format's decoder.
        formats = {k.traces_topic: config.input.format,
                   **{t.topic: t.format for t in k.extra_traces_topics}}
        self.decoders = {t: decoder_for(f, config.input.otlp) for t, f in formats.items()}
        self.base = {t: i * SOURCE_STRIDE for i, t in enumerate(formats)}
        self.dlq = k.dead_letter_topic
        self.stage2_topic = stage2_topic
        self.q = stage2_partitions
        self.fin = len(config.cohorts.levels) - 1
        self.owner = owner(stage2_partitions)   # the stage-2 partition of a finest cohort
        self.metrics = metrics
        self.flush_interval = flush_interval
        self.idle_timeout = k.idle_partition_timeout_seconds
        self.heartbeat = heartbeat
        self.kw = client_kwargs(k)
        self.session_timeout = session_timeout
        # aiokafka clients bind to the running loop: created in start().
        self.consumer: AIOKafkaConsumer = None
        self.producer: AIOKafkaProducer = None
        self.sources: dict[int, _Source] = {}
        self.pending: list[Outgoing] = []
        self.lock = asyncio.Lock()
        self.n_src = 0
        self._last_sent: dict[int, SourceMark] = {}
        self._sent_at = 0.0
        self._flushed_at = 0.0
        self._was_behind = False
        self._log_at = 0.0
        self.stats = {"events": 0, "messages": 0, "rejected": 0, "late": 0, "flushes": 0,
                      "otlp_skipped": 0}
        self.lag: dict[int, int] = {}
        self._per_message = 1.0   # events per message, last seen
        self.corrupt = CorruptBatches()
        # Bytes per message, last seen; until then as large as a message may be.
        self._message_bytes = float(config.input.max_message_bytes)

    def new_consumer(self) -> AIOKafkaConsumer:
        """The trace-topic consumer, not started (aiokafka binds it to the running loop)."""
        k = self.config.kafka
        skip_corrupt_batches()
        return AIOKafkaConsumer(
            bootstrap_servers=k.brokers, group_id=f"{k.group}-stage1",
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(max(self.session_timeout / 4, 0.5) * 1000),
            # aiokafka fetches for the partitions it holds no records of, so with up to four
            # partitions a worker holds about fetch_max_bytes of fetched (compressed) bytes.
            max_partition_fetch_bytes=max(k.fetch_max_bytes // 4, 1 << 20),
            fetch_max_bytes=k.fetch_max_bytes,
            fetch_max_wait_ms=fetch_wait_ms(k), metadata_max_age_ms=5000,
            check_crcs=self.corrupt, **self.kw)

    async def start(self) -> None:
        k = self.config.kafka
        self.consumer = self.new_consumer()
        self.producer = AIOKafkaProducer(bootstrap_servers=k.brokers, linger_ms=5,
                                         max_request_size=8 << 20, **self.kw)
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe(list(self.decoders), listener=self)

    async def stop(self) -> None:
        async with self.lock:
            with contextlib.suppress(Exception):
                await self._flush(time.monotonic(), final=True)
        await self.consumer.stop()
        await self.producer.stop()

    # -- rebalance: flush and commit what we hold for partitions that leave ------------------
    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.lock:
            with contextlib.suppress(Exception):
                await self._flush(time.monotonic(), final=True)
            for tp in revoked:
                self.sources.pop(self._sid(tp), None)
                self.lag.pop(self._sid(tp), None)

    def _sid(self, tp: TopicPartition) -> int:
        """The source id of a trace-topic partition (the Envelope's key for it)."""
        return self.base[tp.topic] + tp.partition

    def _tp(self, sid: int) -> TopicPartition:
        topic = next(t for t, b in reversed(self.base.items()) if b <= sid)
        return TopicPartition(topic, sid - self.base[topic])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        now = time.monotonic()
        for tp in assigned:
            if self._sid(tp) not in self.sources:
                self.sources[self._sid(tp)] = _Source(self.config, now, self.decoders[tp.topic])
        n = 0
        for topic in self.decoders:
            parts = self.consumer.partitions_for_topic(topic)
            n += len(parts) if parts else sum(tp.topic == topic for tp in assigned)
        self.n_src = n
        log.info(orjson.dumps({"event": "stage1_assigned",
                               "partitions": sorted(f"{tp.topic}/{tp.partition}"
                                                    for tp in assigned)}).decode())

    # -- the loop ---------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        backoff = 0.5
        while not stopping.is_set():
            try:
                batch = await self.consumer.getmany(
                    timeout_ms=int(self.flush_interval * 1000), max_records=self._max_records())
                self._measure(batch.values())
                async with self.lock:
                    now = time.monotonic()
                    urgent = False
                    for tp, recs in batch.items():
                        for chunk in self._chunks(recs):
                            # Yield between chunks: the fetcher, which shares this loop, asks
                            # for the next records and reads the answer while this chunk is
                            # worked on (without it the worker sat idle in select() for part
                            # of a backlog).
                            await asyncio.sleep(0)
                            urgent |= self._feed({tp: chunk}, now)
                    self._skipped(self.corrupt.take())   # found while getmany read the fetch
                    if self._flush_due(now, urgent):
                        await self._flush(now)
                backoff = 0.5
            except (KafkaError, OSError) as e:
                log.warning(orjson.dumps({"event": "stage1_kafka_error", "error": repr(e)[:300],
                                          "retry_in_s": backoff}).decode())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # a bug must not take the worker down silently: log, go on
                log.exception(orjson.dumps({"event": "stage1_error",
                                            "retry_in_s": backoff}).decode())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _max_records(self) -> int:
        """Messages to take from the fetched records at once. They are held decompressed, and
        a fetch's limit counts compressed bytes (JSON traces shrink ~4x with lz4): take about
        ``kafka.fetch_max_bytes`` of them, at the message size seen so far."""
        k = self.config.kafka
        return max(1, min(k.batch_max_messages * 10,
                          int(k.fetch_max_bytes / self._message_bytes)))

    def _measure(self, fetched: Iterable[list[Any]]) -> None:
        """Bytes per message, from about 8 records of each partition: a sample, as reading
        every record's size would add a step per message to the hot loop."""
        n = size = 0
        for recs in fetched:
            for r in recs[::max(1, len(recs) // 8)]:
                n += 1
                size += r.serialized_value_size
        if n:
            self._message_bytes = max(size / n, 1.0)

    def _skipped(self, corrupt: list[CorruptBatch]) -> None:
        """Dead-letter where each corrupt batch was (not its bytes) and move the partition's
        commit past it: a batch skipped at the end of the log must not look like lag."""
        for c in corrupt:
            log.warning(orjson.dumps({"event": "stage1_corrupt_batch", **c._asdict()}).decode())
            detail = f"record batch skipped: {c.reason}"
            where = {"topic": c.topic, "partition": c.partition,
                     "first_offset": c.first_offset, "last_offset": c.last_offset}
            self.pending.append(Outgoing(
                self.dlq, None, Rejection("corrupt_batch", None, detail, where).to_json(), [
                    ("reason", b"corrupt_batch"),
                    ("source",
                     f"{c.topic}/{c.partition}/{c.first_offset}-{c.last_offset}".encode())]))
            src = self.sources.get(c.partition + self.base.get(c.topic, 0))
            if src is not None and (src.next_offset or 0) <= c.last_offset:
                src.next_offset = c.last_offset + 1
            if self.metrics is not None:
                self.metrics.corrupt_batches.inc()

    def _flush_due(self, now: float, urgent: bool) -> bool:
        """Flush partials and commit now? At once after a hard-rule hit, and when a backlog
        has just been read to its end (the alerts it held back are due). Else every interval,
        and every BACKLOG_FLUSH_FACTOR intervals while behind: each flush costs stage 2 a merge
        and a state write per route key, whatever the events it carries."""
        behind = self._behind()
        caught_up, self._was_behind = self._was_behind and not behind, behind
        due = self.flush_interval * (BACKLOG_FLUSH_FACTOR if behind else 1)
        return urgent or caught_up or now - self._flushed_at >= due

    def _chunks(self, recs: list[Any]) -> Iterator[list[Any]]:
        """``recs`` in pieces of about CHUNK_EVENTS events, sized from the events per message
        seen so far (1 for single-event messages, ~100 for batches)."""
        step = max(1, int(CHUNK_EVENTS / self._per_message))
        for i in range(0, len(recs), step):
            yield recs[i:i + step]

    def _feed(self, batch: Mapping[TopicPartition, list[Any]], now: float) -> bool:
        t0 = time.perf_counter()
        m = self.metrics
        urgent = False
        events = rejected = late = msgs = skipped = 0
        for tp, recs in batch.items():
            src = self.sources.get(self._sid(tp))
            if src is None or not recs:
                continue
            # One call per fetched batch: runs of single-event messages decode together.
            out = src.stage1.feed_many([r.value or b"" for r in recs])
            events += out.decoded
            late += out.late
            skipped += out.skipped
            if out.hits:
                src.hits.extend(out.hits)
                urgent = True
            for rej in out.rejects:
                rejected += 1
                if m is not None:
                    m.events_rejected.labels(reason=rej.reason).inc()
                # A negative index is a message of an earlier fetch (an event the clock held).
                where = (recs[rej.message].offset if rej.message >= 0
                         else f"before-{recs[0].offset}")
                self.pending.append(Outgoing(self.dlq, None, rej.to_json(), [
                    ("reason", rej.reason.encode()),
                    ("source", f"{tp.topic}/{tp.partition}/{where}".encode())]))
            msgs += len(recs)
            src.next_offset = recs[-1].offset + 1
            src.last_data = now
        self.stats["events"] += events
        self.stats["messages"] += msgs
        if msgs:
            self._per_message = max(1.0, (events + rejected) / msgs)
        self.stats["rejected"] += rejected
        self.stats["late"] += late
        self.stats["otlp_skipped"] += skipped
        if m is not None and skipped:
            m.otlp_spans_skipped.inc(skipped)
        if m is not None and msgs:
            m.events_consumed.inc(events + rejected)
            m.events_decoded.inc(events)
            if late:
                m.events_late.inc(late)
            m.last_consumed.set(time.time())
            m.processing_seconds.observe(time.perf_counter() - t0)
        return urgent

    async def _position(self, p: int) -> int | None:
        """Where the consumer reads next in a partition it has read nothing from since it was
        assigned (the committed offset). Without it, a quiet partition whose log is not empty
        looks behind forever, never goes idle, and holds every window open."""
        try:
            return await asyncio.wait_for(
                self.consumer.position(self._tp(p)), 0.2)
        except (TimeoutError, KafkaError):
            return None   # not known yet: asked again at the next flush

    def _lag(self, p: int, src: _Source) -> int | None:
        """Records left to read in partition ``p`` as of the last fetch; None if unknown."""
        hw = self.consumer.highwater(self._tp(p))
        pos = src.next_offset
        return None if hw is None or pos is None else max(hw - pos, 0)

    def _behind(self) -> bool:
        """Whether a fetch left records to read in any partition (as of the last fetch)."""
        return any(self._lag(p, src) for p, src in self.sources.items())

    def _caught_up(self, p: int, src: _Source) -> bool:
        lag = self._lag(p, src)
        if lag is None:
            return False
        self.lag[p] = lag
        if self.metrics is not None:
            tp = self._tp(p)   # the main topic's partitions by number, as before
            label = str(p) if tp.topic == self.topic else f"{tp.topic}/{tp.partition}"
            self.metrics.consumer_lag.labels(partition=label).set(lag)
        return lag == 0

    async def _flush(self, now: float, final: bool = False) -> None:
        partials: list[Partial] = []
        hits: list[RuleHit] = []
        wms: dict[int, SourceMark] = {}
        max_ts = float("-inf")
        for p, src in list(self.sources.items()):   # an assignment may land during an await
            if src.next_offset is None:
                src.next_offset = await self._position(p)
        for p, src in self.sources.items():
            wm = src.stage1.wm
            if wm.max_ts != float("-inf"):  # no event yet: no watermark to drain by
                partials += src.stage1.drain()
                partials += src.stage1.flush()
            hits += src.hits
            src.hits = []
            idle = self._caught_up(p, src) and now - src.last_data >= self.idle_timeout
            wms[p] = wm.mark(idle)
            max_ts = max(max_ts, wm.max_ts)
        if len(self.sources) > 1:
            partials = combine(partials, self.config.alerting.evidence_trace_ids)
        hits.sort(key=lambda h: h.ts)  # a batch spans partitions: hand hits on in event time
        if partials or hits or wms != self._last_sent or now - self._sent_at >= self.heartbeat:
            # Stage 2 is split by the finest cohort (decision 0010): a finest cohort's partial
            # goes to its own partition, a coarser one to every partition (each keeps a
            # replica), and hits to every partition (each runs a replica of the lifecycle).
            by_q: list[tuple[list[Partial], list[RuleHit]]] = [([], hits) for _ in range(self.q)]
            for x in partials:
                for q in peers_of(x.level, x.cohort, self.fin, self.owner, self.q):
                    by_q[q][0].append(x)
            for q, (ps, hs) in enumerate(by_q):
                env = Envelope(wms, self.n_src or len(wms), ps, hs)
                self.pending.append(Outgoing(self.stage2_topic, q, encode_envelope(env), []))
            self._last_sent, self._sent_at = wms, now
            self._observe(partials, max_ts)
        await self._send_pending()
        offsets = {self._tp(p): s.next_offset
                   for p, s in self.sources.items() if s.next_offset is not None}
        if offsets:
            await self.consumer.commit(offsets)
        self._flushed_at = now
        self.stats["flushes"] += 1
        if now - self._log_at >= 10.0 or final:
            self._log_at = now
            log.info(orjson.dumps({"event": "stage1_progress", **self.stats,
                                   "consumer_lag": {str(p): n for p, n in self.lag.items()},
                                   "event_time_lag_s": round(time.time() - max_ts, 3)
                                   if max_ts > 0 else None}).decode())

    async def _send_pending(self) -> None:
        """Send everything queued, in order; on failure keep the rest for the next flush (and
        do not commit: the caller's commit only runs after this returns)."""
        futs = []
        for out in self.pending:
            futs.append(await self.producer.send(out.topic, out.value, partition=out.partition,
                                                 headers=out.headers or None))
        await asyncio.gather(*futs)
        self.pending.clear()

    def _observe(self, partials: list[Partial], max_ts: float) -> None:
        m = self.metrics
        if m is None:
            return
        fin = len(self.config.cohorts.levels) - 1
        for x in partials:
            if x.level == fin:
                m.observe_cohort("/".join(x.cohort), int(x.counts[EVENTS]))
        if max_ts > 0:
            m.last_event_time.set(max_ts)
            m.event_time_lag.set(time.time() - max_ts)
