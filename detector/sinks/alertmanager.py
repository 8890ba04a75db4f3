"""Alertmanager sink: alerts (shared/schema/alert.schema.json) to Alertmanager's API v2.

``POST {url}/api/v2/alerts`` to every configured URL (Alertmanager's HA model: each replica
gets every alert and they deduplicate among themselves). Firing alerts are re-sent every
``resend_interval_seconds`` with ``endsAt`` a few intervals ahead, so Alertmanager resolves them
by itself if the detector dies; resolved alerts are sent with ``endsAt`` = the alert's
``ends_at`` and re-sent for ``resolved_resend_seconds`` in case a replica missed one. The
settings are ``[sinks.alertmanager]`` (:class:`~detector.config.AlertmanagerConfig`);
:class:`Tuning` holds the sender's few knobs that are not configuration.

One thread per URL, so a dead or slow Alertmanager never delays another. :meth:`emit` only
updates a bounded store under a lock and never blocks on the network. When the store is full,
the lowest severity goes first (resolved before firing, oldest first): sev1 is dropped only
when everything held is sev1. Failed sends are retried with capped exponential backoff and
jitter. HTTP is stdlib only (urllib + ssl).
"""

from __future__ import annotations

import base64
import heapq
import http.client
import logging
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson

from detector.config import AlertmanagerConfig, check_alertmanager
from detector.core.alert import Alert
from detector.core.timestamps import rfc3339
from detector.obs.metrics import SEVERITIES, Metrics
from detector.sinks.alertmanager_mapping import alertname, to_postable

__all__ = ["AlertmanagerSink", "Tuning", "alertname", "to_postable"]

log = logging.getLogger(__name__)

_RETRYABLE_4XX: Final = frozenset({408, 425, 429})


class Tuning(NamedTuple):
    """The sender's knobs that are not configuration (tests and benchmarks shorten them)."""

    max_batch: int = 500
    ends_at_resends: int = 4   # firing endsAt = now + this many resend intervals
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    poll_s: float = 1.0   # longest sleep between looks at the (injectable) clock
    use_env_proxy: bool = False   # honour http(s)_proxy; off so loopback never goes via one
    name: str = "alertmanager"   # the `sink` label of the sink metrics


@dataclass(slots=True)
class _Entry:
    key: str  # fingerprint of the labels
    sev: str
    resolved: bool
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None
    expires_at: float | None = None  # resolved entries stop being re-sent then
    generator_url: str | None = None  # the alert's own back-link ([links]), else the sink's


@dataclass(slots=True)
class _Target:
    url: str
    ready: dict[str, dict[str, None]]  # severity -> keys due now (ordered set, oldest first)
    timers: list[tuple[float, str]] = field(default_factory=list)  # heap of (due, key)
    due: dict[str, float] = field(default_factory=dict)  # the valid timer of each key
    inflight: int = 0
    failures: int = 0
    retry_at: float = 0.0
    thread: threading.Thread | None = None

    def pending(self) -> bool:
        return self.inflight > 0 or any(self.ready.values())


def _endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/api/v2/alerts") else url + "/api/v2/alerts"


def _fingerprint(labels: Mapping[str, str]) -> str:
    return "\x1f".join(f"{k}={labels[k]}" for k in sorted(labels))


class AlertmanagerSink:
    """Thread-based Alertmanager sender. ``emit`` never blocks; ``flush`` waits (bounded) until
    every URL has taken every pending alert; ``close`` stops the threads."""

    def __init__(
        self,
        config: AlertmanagerConfig,
        *,
        tuning: Tuning = Tuning(),  # noqa: B008 (immutable)
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        check_alertmanager(config)
        for key in ("backoff_initial_s", "backoff_max_s", "poll_s"):
            if not getattr(tuning, key) > 0:
                raise ValueError(f"alertmanager tuning {key}: must be > 0")
        if tuning.max_batch < 1 or tuning.ends_at_resends < 1:
            raise ValueError("alertmanager tuning max_batch, ends_at_resends: must be >= 1")
        self.config = s = config
        self.tuning = tuning
        self._clock = clock
        self._metrics = metrics
        self._opener = self._build_opener(s, tuning.use_env_proxy)
        self._cond = threading.Condition()
        self._closed = False
        self._entries: dict[str, _Entry] = {}
        # Eviction order: (sev4, resolved), (sev4, firing), ..., (sev1, firing) last.
        self._buckets: dict[tuple[str, bool], dict[str, None]] = {
            (sev, res): {} for sev in reversed(SEVERITIES) for res in (True, False)}
        # The store is keyed by label fingerprint (Alertmanager's identity of an alert); these
        # map the detector's alert ids onto it.
        self._fp_of: dict[str, str] = {}  # firing alert id -> fingerprint of its labels
        self._firing: dict[str, set[str]] = {}  # fingerprint -> alert ids firing with it
        self._expiry: list[tuple[float, str]] = []
        self._rng = random.Random()
        self._targets = [_Target(_endpoint(u), {sev: {} for sev in SEVERITIES}) for u in s.urls]
        if metrics is not None:  # make the series exist at zero
            metrics.sink_sends.labels(sink=tuning.name)
            metrics.sink_failures.labels(sink=tuning.name)
            metrics.sink_queued.labels(sink=tuning.name).set(0)
        for i, target in enumerate(self._targets):
            target.thread = threading.Thread(
                target=self._run, args=(target,), name=f"alertmanager-{i}", daemon=True)
            target.thread.start()

    # -- public API ---------------------------------------------------------------------

    def emit(self, alert: Alert) -> None:
        """Queue ``alert`` (firing or resolved) for every URL; returns at once."""
        try:
            labels, annotations = to_postable(alert, self.config.cohort_labels)
            alert_id, sev = alert.id, alert.severity
            resolved = alert.status == "resolved"
            starts_at = alert.starts_at.timestamp()
            ends_at = alert.ends_at.timestamp() if alert.ends_at is not None else None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # Only a caller that broke the struct's types gets here: drop it, keep the rest.
            log.warning("alertmanager sink: dropping malformed alert: %r", exc)
            self._count_drop(str(getattr(alert, "severity", "")))
            return
        with self._cond:
            if self._closed:
                return
            now = self._clock()
            fp = _fingerprint(labels)
            old_fp = self._fp_of.pop(alert_id, None)
            if old_fp is not None:
                self._release(alert_id, old_fp)
                old = self._entries.get(old_fp)
                if old_fp != fp and old is not None and not old.resolved \
                        and not self._firing.get(old_fp):
                    # Severity changed: the old label set is another Alertmanager alert. End it.
                    self._put(_Entry(old_fp, old.sev, True, old.labels, old.annotations,
                                     old.starts_at, now, generator_url=old.generator_url), now)
            if resolved and self._firing.get(fp):
                # Another alert id still fires with these exact labels (cohort fields that are
                # not labels differ): a resolve would end that one too. Only forget this id.
                self._cond.notify_all()
                return
            if not resolved:
                self._fp_of[alert_id] = fp
                self._firing.setdefault(fp, set()).add(alert_id)
            # One entry per label set, as Alertmanager sees it: a firing alert replaces a
            # resolved one still being re-sent for the same labels, and vice versa.
            self._put(_Entry(fp, sev, resolved, labels, annotations, starts_at,
                             (ends_at if ends_at is not None else now) if resolved else None,
                             generator_url=alert.generator_url), now)
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s (real time) until every URL has been sent everything due;
        True if so. Re-sends scheduled for later do not count."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while any(t.pending() for t in self._targets):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._cond.wait(min(remaining, self.tuning.poll_s))
            return True

    def close(self) -> None:
        """Stop the sender threads (an in-flight request finishes or times out first)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for target in self._targets:
            if target.thread is not None:
                target.thread.join(timeout=self.config.timeout_seconds + 1.0)

    def __enter__(self) -> AlertmanagerSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def held(self) -> dict[str, int]:
        """How many alerts the store holds, by severity (for tests and introspection)."""
        with self._cond:
            out = dict.fromkeys(SEVERITIES, 0)
            for entry in self._entries.values():
                out[entry.sev] = out.get(entry.sev, 0) + 1
            return out

    # -- store (all under self._cond) ---------------------------------------------------

    def _release(self, alert_id: str, fp: str) -> None:
        ids = self._firing.get(fp)
        if ids is not None:
            ids.discard(alert_id)
            if not ids:
                del self._firing[fp]

    def _put(self, entry: _Entry, now: float) -> None:
        self._remove(entry.key)
        if entry.resolved:
            entry.expires_at = now + self.config.resolved_resend_seconds
            heapq.heappush(self._expiry, (entry.expires_at, entry.key))
        self._entries[entry.key] = entry
        self._buckets[(entry.sev, entry.resolved)][entry.key] = None
        for target in self._targets:
            target.due.pop(entry.key, None)
            target.ready[entry.sev][entry.key] = None
        while len(self._entries) > self.config.max_queue:
            victim = next(next(iter(b)) for b in self._buckets.values() if b)
            self._count_drop(self._entries[victim].sev)
            # A dropped firing alert: Alertmanager's copy expires at the endsAt last sent.
            for alert_id in self._firing.pop(victim, ()):
                self._fp_of.pop(alert_id, None)
            self._remove(victim)
        self._update_gauge()

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._buckets[(entry.sev, entry.resolved)].pop(key, None)
        for target in self._targets:
            target.ready[entry.sev].pop(key, None)
            target.due.pop(key, None)

    def _sweep(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, key = heapq.heappop(self._expiry)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at == expires_at:
                self._remove(key)
                self._update_gauge()

    def _update_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.sink_queued.labels(sink=self.tuning.name).set(len(self._entries))

    def _count_drop(self, sev: str) -> None:
        if self._metrics is not None:
            label = sev if sev in SEVERITIES else "invalid"
            self._metrics.sink_dropped.labels(sink=self.tuning.name, severity=label).inc()

    # -- sender thread ------------------------------------------------------------------

    def _run(self, t: _Target) -> None:
        s = self.tuning
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = self._clock()
                    self._sweep(now)
                    while t.timers and t.timers[0][0] <= now:
                        due, key = heapq.heappop(t.timers)
                        entry = self._entries.get(key)
                        if entry is not None and t.due.get(key) == due:
                            del t.due[key]
                            t.ready[entry.sev][key] = None
                    has_ready = any(t.ready.values())
                    if has_ready and t.retry_at <= now:
                        break
                    wake = t.timers[0][0] if t.timers else now + s.poll_s
                    if has_ready:
                        wake = min(wake, t.retry_at)
                    if self._expiry:
                        wake = min(wake, self._expiry[0][0])
                    self._cond.wait(min(max(wake - now, 0.001), s.poll_s))
                batch = self._take_batch(t)
                t.inflight += 1
            # Payloads are built outside the lock (entries are never mutated once stored), so
            # emit() does not wait while a large batch is serialised.
            try:
                ok, retry = self._post(t, [self._payload(e, now) for _k, _s, e in batch])
            except Exception:  # a bug must not kill this URL's sender for good
                log.exception("alertmanager %s: unexpected error while sending", t.url)
                ok, retry = False, True
            with self._cond:
                # Resends and retries count from the attempt's start (``now`` above), so a slow
                # request does not push the schedule back.
                t.inflight -= 1
                if ok or not retry:
                    t.failures, t.retry_at = 0, 0.0
                    for key, _sev, _p in batch:
                        self._schedule(t, key, now)
                else:
                    t.failures += 1
                    backoff = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (t.failures - 1))
                    t.retry_at = now + backoff * self._rng.uniform(0.5, 1.0)
                    self._requeue(t, [key for key, _s, _p in batch])
                self._cond.notify_all()

    def _take_batch(self, t: _Target) -> list[tuple[str, str, _Entry]]:
        batch: list[tuple[str, str, _Entry]] = []
        for sev in SEVERITIES:  # sev1 first
            ready = t.ready[sev]
            while ready and len(batch) < self.tuning.max_batch:
                key = next(iter(ready))
                del ready[key]
                batch.append((key, sev, self._entries[key]))
        return batch

    def _payload(self, e: _Entry, now: float) -> dict[str, Any]:
        # Clamp to the wall clock: event time may run ahead of it (producer skew), and
        # Alertmanager rejects startsAt > endsAt and keeps a future endsAt firing.
        starts = min(e.starts_at, now)
        if e.resolved:
            ends = max(starts, min(e.ends_at if e.ends_at is not None else now, now))
        else:
            ends = now + self.tuning.ends_at_resends * self.config.resend_interval_seconds
        payload = {"labels": e.labels, "annotations": e.annotations,
                   "startsAt": rfc3339(starts), "endsAt": rfc3339(ends)}
        generator = e.generator_url or self.config.generator_url
        if generator:
            payload["generatorURL"] = generator
        return payload

    def _requeue(self, t: _Target, keys: list[str]) -> None:
        """Put a failed batch back at the head of the line (unless gone or re-emitted)."""
        back: dict[str, list[str]] = {sev: [] for sev in SEVERITIES}
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and key not in t.due and key not in t.ready[entry.sev]:
                back[entry.sev].append(key)
        for sev, head in back.items():
            if head:
                t.ready[sev] = {**dict.fromkeys(head), **t.ready[sev]}

    def _schedule(self, t: _Target, key: str, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None or key in t.ready[entry.sev]:
            return  # gone, or re-emitted while in flight (already due again)
        due = now + self.config.resend_interval_seconds
        if entry.resolved and entry.expires_at is not None and due > entry.expires_at:
            return
        t.due[key] = due
        heapq.heappush(t.timers, (due, key))

    # -- HTTP ---------------------------------------------------------------------------

    @staticmethod
    def _build_opener(s: AlertmanagerConfig, use_env_proxy: bool
                      ) -> urllib.request.OpenerDirector:
        ctx = ssl.create_default_context(cafile=s.ca_file)
        if s.cert_file:
            ctx.load_cert_chain(s.cert_file, s.key_file)
        if s.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=ctx)]
        if not use_env_proxy:
            handlers.append(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener(*handlers)

    def _auth_header(self) -> str | None:
        s = self.config
        if s.bearer_token_file:  # re-read: mounted tokens rotate
            with open(s.bearer_token_file, encoding="utf-8") as f:
                return "Bearer " + f.read().strip()
        if s.bearer_token:
            return "Bearer " + s.bearer_token
        if s.basic_auth_user is not None:
            password = s.basic_auth_password or ""
            if s.basic_auth_password_file:
                with open(s.basic_auth_password_file, encoding="utf-8") as f:
                    password = f.read().strip()
            user = s.basic_auth_user
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return None

    def _post(self, t: _Target, alerts: list[dict[str, Any]]) -> tuple[bool, bool]:
        """POST one batch. Returns (delivered, worth retrying)."""
        name = self.tuning.name
        try:
            req = urllib.request.Request(t.url, data=orjson.dumps(alerts), method="POST")
            req.add_header("Content-Type", "application/json")
            auth = self._auth_header()
            if auth:
                req.add_header("Authorization", auth)
            with self._opener.open(req, timeout=self.config.timeout_seconds) as resp:
                resp.read()
            ok, retry, why = True, False, ""
        except urllib.error.HTTPError as exc:
            # A 4xx other than throttling means Alertmanager rejected the content (it still
            # stores the valid alerts of a batch): resending the same payload cannot help.
            ok, retry = False, exc.code >= 500 or exc.code in _RETRYABLE_4XX
            why = f"HTTP {exc.code}: {exc.read(512)!r}"
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # refused, reset, timeout, TLS, DNS, unreadable token file, broken response
            ok, retry, why = False, True, repr(exc)
        if self._metrics is not None:
            (self._metrics.sink_sends if ok else self._metrics.sink_failures).labels(
                sink=name).inc()
        if not ok and t.failures == 0:  # log the first failure of a run, not every retry
            log.warning("alertmanager %s: send failed (%s); retrying with backoff", t.url, why)
        elif ok and t.failures:
            log.info("alertmanager %s: delivering again after %d failures", t.url, t.failures)
        return ok, retry
