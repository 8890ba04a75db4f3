"""Evidence records: what an alert at sev1/sev2 (``[evidence] severities``) rested on,
preserved when it fires or escalates, to a Kafka topic and/or a JSON Lines file.

A record holds the alert as emitted, the totals of its latest window's cohort (every counter
of the layout by name, as stage 1 counts them: quantities as fixed-point sums of
log1p(value) × 1024; null for a hard-rule alert, which fires at the offending event before its
window closes), the version combinations counted in that window, the evidence trace ids, the
config's SHA-256 and the detector's version. Ids, cohort values, counts and version values
only: no prompt or response text ever reaches stage 2 to be written here.

:class:`WindowTotals` takes each closed window from :attr:`Stage2.on_closed` and keeps only
what the alerts of that window need, until the stream hands them to :class:`EvidenceSink`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Collection
from importlib import metadata
from typing import IO, Any

import msgspec
import orjson

from detector.config import Config
from detector.core.alert import Alert, alert_record
from detector.core.partials import VERSION_FIELDS, Partial
from detector.core.timestamps import rfc3339
from detector.obs.metrics import Metrics

__all__ = ["EvidenceSink", "WindowTotals", "config_hash", "detector_version",
           "evidence_record"]

Behind = tuple[dict[str, int], list[dict[str, Any]]]   # (totals by counter, versions)


def config_hash(cfg: Config) -> str:
    """SHA-256 of the effective config (after defaults and environment overrides)."""
    return hashlib.sha256(msgspec.json.encode(cfg)).hexdigest()


def detector_version() -> str:
    try:
        return metadata.version("ai-misbehaviour-detector")
    except metadata.PackageNotFoundError:   # run from a tree that was never installed
        return "unknown"


class WindowTotals:
    """The partial behind each alert a window emitted, by alert id, for severities kept."""

    def __init__(self, names: tuple[str, ...], severities: Collection[str],
                 levels: list[list[str]]) -> None:
        self.names = names
        self.severities = frozenset(severities)
        self.level_of = {len(fields): i for i, fields in enumerate(levels)}
        self.behind: dict[str, Behind] = {}

    def __call__(self, w: int, parts: dict[tuple[int, tuple[str, ...]], Partial],
                 alerts: list[Alert]) -> None:
        for a in alerts:
            if a.status != "firing" or a.severity not in self.severities:
                continue
            # An alert's cohort holds its level's fields in order (levels differ in size).
            level = self.level_of.get(len(a.cohort), -1)
            p = parts.get((level, tuple(a.cohort.values())))
            if p is not None:
                self.behind[a.id] = (
                    dict(zip(self.names, p.counts, strict=True)),
                    [{**dict(zip(VERSION_FIELDS, combo, strict=True)), "events": n}
                     for combo, n in sorted(p.versions.items())])

    def take(self, alert_id: str) -> Behind | None:
        return self.behind.pop(alert_id, None)

    def clear(self) -> None:
        self.behind.clear()


def evidence_record(alert: Alert, behind: Behind | None, *, config_sha256: str,
                    version: str, now: float) -> dict[str, Any]:
    totals, versions = behind if behind is not None else (None, [])
    return {"kind": "evidence", "alert_id": alert.id, "recorded_at": rfc3339(now),
            "alert": alert_record(alert), "window_totals": totals, "versions": versions,
            "trace_ids": list(alert.evidence.trace_ids), "config_sha256": config_sha256,
            "detector_version": version}


class EvidenceSink:
    """Writes evidence records: a JSON Lines file (flushed per record) and/or a Kafka topic
    (key = alert id) through the worker's producer. Kafka sends never block the stream;
    failed ones are retried at the next record, up to ``max_queue`` held (then the oldest
    is dropped, counted under ``sink="evidence"``)."""

    name = "evidence"

    def __init__(self, cfg: Config, *, metrics: Metrics | None = None,
                 out: IO[bytes] | None = None, max_queue: int = 1000) -> None:
        self.severities = frozenset(cfg.evidence.severities)
        self.topic = cfg.evidence.kafka_topic
        self.out = out
        self.producer: Any = None   # the worker's aiokafka producer, once started
        self.metrics = metrics
        self.max_queue = max_queue
        self.retry: deque[tuple[bytes, bytes, str]] = deque()
        self.inflight: set[asyncio.Future[Any]] = set()
        self.config_sha256 = config_hash(cfg)
        self.version = detector_version()
        self.written = 0
        if metrics is not None:
            metrics.sink_sends.labels(sink=self.name)
            metrics.sink_failures.labels(sink=self.name)

    def wants(self, alert: Alert) -> bool:
        return alert.status == "firing" and alert.severity in self.severities

    def emit(self, alert: Alert, behind: Behind | None, now: float) -> None:
        if not self.wants(alert):
            return
        rec = orjson.dumps(evidence_record(alert, behind, config_sha256=self.config_sha256,
                                           version=self.version, now=now))
        if self.out is not None:
            self.out.write(rec + b"\n")
            self.out.flush()
            self.written += 1
            if self.metrics is not None:
                self.metrics.sink_sends.labels(sink=self.name).inc()
        if self.topic is not None:
            while self.retry:
                self._send(*self.retry.popleft())
            self._send(alert.id.encode(), rec, alert.severity)

    def _send(self, key: bytes, value: bytes, severity: str) -> None:
        if self.producer is None:
            self._failed(key, value, severity)
            return
        task = asyncio.ensure_future(self.producer.send_and_wait(self.topic, value, key=key))
        self.inflight.add(task)
        task.add_done_callback(lambda t: self._done(t, key, value, severity))

    def _done(self, task: asyncio.Future[Any], key: bytes, value: bytes, severity: str) -> None:
        self.inflight.discard(task)
        if not task.cancelled() and task.exception() is None:
            if self.metrics is not None:
                self.metrics.sink_sends.labels(sink=self.name).inc()
            return
        self._failed(key, value, severity)

    def _failed(self, key: bytes, value: bytes, severity: str) -> None:
        if self.metrics is not None:
            self.metrics.sink_failures.labels(sink=self.name).inc()
        self.retry.append((key, value, severity))
        while len(self.retry) > self.max_queue:
            dropped = self.retry.popleft()
            if self.metrics is not None:
                self.metrics.sink_dropped.labels(sink=self.name, severity=dropped[2]).inc()

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
