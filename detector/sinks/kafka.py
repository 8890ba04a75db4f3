"""Alerts to a Kafka topic: one JSON message per alert emission (shared/schema/alert.md),
key = alert id, so a compacted topic keeps each incident's latest state.

The sink shares the worker's aiokafka producer and event loop: ``emit`` only queues the send
(it never blocks the stream); failed sends are counted and retried on the next ``emit`` or
``drain``, up to ``max_queue`` alerts held (the oldest are dropped beyond that, counted)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from aiokafka import AIOKafkaProducer

from detector.core.alert import Alert, encode_alert
from detector.obs.metrics import Metrics

__all__ = ["KafkaSink"]


class KafkaSink:
    name = "kafka"

    def __init__(self, producer: AIOKafkaProducer | None, topic: str, *,
                 metrics: Metrics | None = None, max_queue: int = 10000) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.max_queue = max_queue
        self.retry: deque[Alert] = deque()
        self.inflight: set[asyncio.Future[Any]] = set()
        self.sent = 0
        if metrics is not None:
            metrics.sink_sends.labels(sink=self.name)
            metrics.sink_failures.labels(sink=self.name)

    def emit(self, alert: Alert) -> None:
        """Queue one alert for sending (must run on the producer's event loop)."""
        while self.retry:
            self._send(self.retry.popleft())
        self._send(alert)

    def _send(self, alert: Alert) -> None:
        value = encode_alert(alert)
        if self.producer is None:
            raise RuntimeError("KafkaSink has no producer yet")
        task = asyncio.ensure_future(
            self.producer.send_and_wait(self.topic, value, key=alert.id.encode()))
        self.inflight.add(task)
        task.add_done_callback(lambda t, a=alert: self._done(t, a))

    def _done(self, task: asyncio.Future[Any], alert: Alert) -> None:
        self.inflight.discard(task)
        if not task.cancelled() and task.exception() is None:
            self.sent += 1
            if self.metrics is not None:
                self.metrics.sink_sends.labels(sink=self.name).inc()
            return
        if self.metrics is not None:
            self.metrics.sink_failures.labels(sink=self.name).inc()
        self.retry.append(alert)
        while len(self.retry) > self.max_queue:
            dropped = self.retry.popleft()
            if self.metrics is not None:
                self.metrics.sink_dropped.labels(sink=self.name,
                                                 severity=dropped.severity).inc()

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far was delivered (or failed)."""
        if self.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*self.inflight, return_exceptions=True), timeout)
        return not self.inflight and not self.retry

    def flush(self, timeout: float = 0.0) -> bool:
        """Non-blocking on the loop: True when nothing is in flight or waiting for a retry."""
        return not self.inflight and not self.retry

    def close(self) -> None:
        for t in list(self.inflight):
            t.cancel()
