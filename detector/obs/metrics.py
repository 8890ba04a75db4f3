"""Every Prometheus metric the detector exports, in one place.

Metrics live in a :class:`~prometheus_client.CollectorRegistry` that the caller passes in,
never the process-global ``REGISTRY``, so tests, replays and several workers in one process
do not share counters. Names follow Prometheus conventions: ``detector_`` prefix, base units
(seconds, messages), ``_total`` on counters (prometheus-client appends it).

Cardinality is bounded by construction: no label takes a value straight from input without a
bound. ``reason`` and ``state`` are closed sets; ``severity`` is the four-step ladder;
``signal`` comes from configuration and is capped at :data:`MAX_SIGNALS` distinct values;
``partition`` is bounded by the topic; ``sink`` by the configured sinks; and ``cohort`` holds
at most ``cohort_top_k`` named cohorts plus ``other`` (:meth:`Metrics.observe_cohort`).

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> m = Metrics(registry, cohort_top_k=2)
>>> m.events_consumed.inc(3)
>>> m.alert_transition("pii", "sev1", "firing", None)
>>> registry.get_sample_value("detector_alerts_active", {"severity": "sev1", "signal": "pii"})
1.0
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from detector.core.events import REASONS

__all__ = [
    "COHORT_OTHER",
    "MAX_SIGNALS",
    "RELOAD_RESULTS",
    "SEVERITIES",
    "Metrics",
    "SpaceSaving",
    "attach_faust_sensor",
    "serve",
]

SEVERITIES: Final = ("sev1", "sev2", "sev3", "sev4")
COHORT_OTHER: Final = "other"
SIGNAL_OTHER: Final = "other"
#: Distinct ``signal`` label values kept before new ones fold into ``other`` (signals come from
#: configuration, but a per-label signal such as ``safety_<label>`` could otherwise follow input).
MAX_SIGNALS: Final = 200

#: How a config reload ended: applied; unchanged (the same settings); refused (a key that
#: needs a restart changed; nothing applied); invalid (the file did not validate).
RELOAD_RESULTS: Final = ("applied", "unchanged", "refused", "invalid")

#: Per-batch processing time: batches run from ~100 µs (a few events) to seconds (backlog).
PROCESSING_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class SpaceSaving:
    """Space-Saving heavy hitters (Metwally et al. 2005) with a fixed number of slots.

    Every key whose true count exceeds ``total / slots`` is guaranteed to hold a slot;
    ``count - error`` is a lower bound of a key's true count. Memory is O(slots) whatever
    the number of distinct keys.

    >>> s = SpaceSaving(2)
    >>> for k in "aababcaa":
    ...     s.add(k)
    >>> s.lower_bound("a"), s.total
    (5, 8)
    """

    __slots__ = ("_counts", "_errors", "slots", "total")

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self.total = 0
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        self.total += n
        counts = self._counts
        if key in counts:
            counts[key] += n
        elif len(counts) < self.slots:
            counts[key] = n
            self._errors[key] = 0
        else:
            # Evict the smallest counter; the newcomer inherits its count as possible error.
            victim = min(counts, key=counts.__getitem__)
            floor = counts.pop(victim)
            del self._errors[victim]
            counts[key] = floor + n
            self._errors[key] = floor

    def kth_count(self, k: int) -> int:
        """The k-th largest (over-)estimated count held; 0 if fewer than k keys are held."""
        if len(self._counts) < k:
            return 0
        return heapq.nlargest(k, self._counts.values())[-1]

    def lower_bound(self, key: str) -> int:
        if key not in self._counts:
            return 0
        return self._counts[key] - self._errors[key]

    def __len__(self) -> int:
        return len(self._counts)


class Metrics:
    """The detector's metrics, registered in ``registry``.

    ``cohort_top_k`` bounds the ``cohort`` label of ``detector_cohort_events_total``: at most
    that many named cohorts plus ``other``. A cohort gets its own series once a Space-Saving
    sketch shows it is among the top K by volume; ``cohort_min_events`` is how many events
    must be seen in total before any is promoted, so the first few cohorts of a run do not
    take the slots for good. ``pinned_cohorts`` get a series at once (they count toward K).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        cohort_top_k: int = 20,
        cohort_min_events: int = 1000,
        pinned_cohorts: Iterable[str] = (),
    ) -> None:
        if cohort_top_k < 0:
            raise ValueError("cohort_top_k must be >= 0")
        self.registry = registry
        r = registry

        self.events_consumed = Counter(
            "detector_events_consumed", "Trace events consumed from the input (before decode).",
            registry=r)
        self.events_decoded = Counter(
            "detector_events_decoded", "Trace events decoded and accepted.", registry=r)
        self.events_rejected = Counter(
            "detector_events_rejected",
            "Input rejected to the dead-letter destination, by reason.", ["reason"], registry=r)
        self.events_late = Counter(
            "detector_events_late",
            "Events that arrived after their window closed (beyond allowed lateness).",
            registry=r)
        self.otlp_spans_skipped = Counter(
            "detector_otlp_spans_skipped",
            "OpenTelemetry spans skipped as not GenAI operations (no gen_ai.operation.name).",
            registry=r)
        self.corrupt_batches = Counter(
            "detector_kafka_corrupt_batches",
            "Corrupt Kafka record batches (CRC mismatch) skipped and dead-lettered.", registry=r)
        self.windows_closed = Counter(
            "detector_windows_closed", "Cohort windows closed by the watermark.", registry=r)
        self.alerts_emitted = Counter(
            "detector_alerts_emitted", "Alert emissions (firing, severity change, resolved).",
            ["severity", "signal", "status"], registry=r)
        self.alerts_active = Gauge(
            "detector_alerts_active", "Alerts currently firing.", ["severity", "signal"],
            registry=r)
        self.cohorts = Gauge(
            "detector_cohorts", "Cohorts with a baseline, by state.", ["state"], registry=r)
        self.consumer_lag = Gauge(
            "detector_consumer_lag_messages",
            "Messages between the consumer's position and the partition's high watermark.",
            ["partition"], registry=r)
        self.event_time_lag = Gauge(
            "detector_event_time_lag_seconds",
            "Wall clock minus the event time of the newest event processed.", registry=r)
        self.last_event_time = Gauge(
            "detector_last_event_timestamp_seconds",
            "Event time of the newest event processed (Unix seconds).", registry=r)
        self.last_consumed = Gauge(
            "detector_last_consumed_timestamp_seconds",
            "Wall-clock time input was last consumed (Unix seconds).", registry=r)
        self.sink_sends = Counter(
            "detector_sink_sends",
            "Successful deliveries to an alert destination (one request or write).", ["sink"],
            registry=r)
        self.sink_failures = Counter(
            "detector_sink_failures",
            "Failed delivery attempts to an alert destination (retried while queued).",
            ["sink"], registry=r)
        self.sink_dropped = Counter(
            "detector_sink_dropped",
            "Alerts dropped by a sink's bounded queue, by the dropped alert's severity.",
            ["sink", "severity"], registry=r)
        self.sink_queued = Gauge(
            "detector_sink_queued_alerts",
            "Alerts held by a sink for delivery or re-sending.", ["sink"], registry=r)
        self.containment_calls = Counter(
            "detector_containment_calls",
            "Containment actions by [[containment]] rule name and outcome (ok, failed, "
            "dropped, dry_run; undo_ before each for the undo call).", ["action", "status"],
            registry=r)
        self.processing_seconds = Histogram(
            "detector_processing_seconds", "Time to process one input batch.",
            buckets=PROCESSING_BUCKETS, registry=r)
        self.cohort_events = Counter(
            "detector_cohort_events",
            "Events per cohort for the top cohorts by volume; the rest under cohort=\"other\".",
            ["cohort"], registry=r)
        self.config_reloads = Counter(
            "detector_config_reloads",
            "Config reloads (SIGHUP or a changed file), by result: applied, unchanged, "
            "refused (needs a restart), invalid.", ["result"], registry=r)
        # One sample whose label is the config in effect (its hash): which config a worker
        # runs, comparable with `detector check-config`.
        self.config = Info("detector_config", "The config in effect.", registry=r)

        # Series that exist from the start, so rate() and absent() work before first use.
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result=result)
        for reason in REASONS:
            self.events_rejected.labels(reason=reason)
        for state in ("warming", "warm"):
            self.cohorts.labels(state=state)

        self._lock = threading.Lock()  # observe_cohort/alert_transition may run in threads
        self._top_k = cohort_top_k
        self._min_events = cohort_min_events
        # More slots than K: the sketch's error (at most total/slots) must stay below the
        # K-th cohort's share for the top-K test below to pass for real top-K cohorts.
        self._sketch = SpaceSaving(max(10 * cohort_top_k, 100))
        self._threshold = 0  # count of the (K+1)-th largest sketch entry, refreshed lazily
        self._until_refresh = 0
        self._named: dict[str, Any] = {}
        self._other = self.cohort_events.labels(cohort=COHORT_OTHER)
        for key in pinned_cohorts:
            if len(self._named) < cohort_top_k and key != COHORT_OTHER:
                self._named[key] = self.cohort_events.labels(cohort=key)
        self._signals: set[str] = set()
        self._active: dict[tuple[str, str], int] = {}

    # -- cohorts -------------------------------------------------------------------------

    def observe_cohort(self, cohort_key: str, n: int = 1) -> None:
        """Count ``n`` events for ``cohort_key``: its own series if it is (or becomes) one of
        the top-K by volume, else ``cohort="other"``. A promoted cohort keeps its series;
        past events counted under ``other`` stay there, so the sum over cohorts is exact."""
        if n <= 0:
            return
        with self._lock:
            child = self._named.get(cohort_key)
            if child is None:
                self._sketch.add(cohort_key, n)
                if self._promotable(cohort_key):
                    child = self._named[cohort_key] = self.cohort_events.labels(
                        cohort=cohort_key)
                else:
                    child = self._other
        child.inc(n)

    def _promotable(self, key: str) -> bool:
        sketch = self._sketch
        if len(self._named) >= self._top_k or key == COHORT_OTHER:
            return False
        if sketch.total < self._min_events:
            return False
        floor = sketch.lower_bound(key)
        # Either its guaranteed share is above 1/(K+1) (at most K cohorts can be there), or its
        # guaranteed count beats the (K+1)-th largest possible count: it is in the top K.
        if floor * (self._top_k + 1) > sketch.total:
            return True
        if self._until_refresh <= 0:  # an O(slots log K) look, once every 64 checks
            self._threshold = sketch.kth_count(self._top_k + 1)
            self._until_refresh = 64
        self._until_refresh -= 1
        return floor > self._threshold

    @property
    def named_cohorts(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._named)

    # -- alerts --------------------------------------------------------------------------

    def _signal_label(self, signal: str) -> str:
        if signal in self._signals:
            return signal
        if len(self._signals) >= MAX_SIGNALS:
            return SIGNAL_OTHER
        self._signals.add(signal)
        return signal

    def alert_transition(self, signal: str, severity: str, status: str,
                         previous_severity: str | None) -> None:
        """Record one alert emission (of :class:`~detector.core.alert.Alert`'s fields).

        ``previous_severity`` is the severity this alert id was firing at before this emission,
        or None if it was not firing. Firing: counts the emission and moves the active count
        from the previous severity (if any) to the new one. Resolved: counts it and releases
        the active count of ``previous_severity`` (or the alert's own severity if None).
        """
        with self._lock:
            signal = self._signal_label(signal)
            self.alerts_emitted.labels(severity=severity, signal=signal, status=status).inc()
            if status == "firing":
                if previous_severity == severity:
                    return  # a repeat of the same state: nothing moves
                if previous_severity is not None:
                    self._move_active(previous_severity, signal, -1)
                self._move_active(severity, signal, +1)
            elif status == "resolved":
                self._move_active(previous_severity or severity, signal, -1)

    def _move_active(self, severity: str, signal: str, delta: int) -> None:
        key = (severity, signal)
        # Never below zero: a resolve for an alert this process never saw fire (e.g. after a
        # restart that recovered state) must not leave a negative gauge.
        value = max(0, self._active.get(key, 0) + delta)
        self._active[key] = value
        self.alerts_active.labels(severity=severity, signal=signal).set(value)


def serve(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> tuple[Any, int]:
    """Serve ``registry`` on ``http://host:port/metrics`` in a daemon thread.

    ``port=0`` picks a free port. Returns ``(server, real_port)``; stop with
    ``server.shutdown(); server.server_close()``.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_address[1])


def attach_faust_sensor(app: Any, registry: CollectorRegistry, *, prefix: str = "faust") -> None:
    """Make Faust's own worker metrics (messages in/out, stream events, table operations,
    rebalances, commit latency, per-partition offsets) land in ``registry``.

    Uses faust-streaming's ``faust.sensors.prometheus``: its ``PrometheusMonitor`` replaces the
    app's monitor (call before the worker starts). Unlike ``setup_prometheus_sensors`` this adds
    no page to Faust's web server: ``registry`` is already served by :func:`serve`. The names
    keep Faust's own scheme (``faust_*``, latencies in milliseconds), not ``detector_*``;
    their labels (topic, partition, stream, table) are bounded by the app's topology.
    Imported lazily so only the Faust driver pays for (and depends on) faust.
    """
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, prefix))
