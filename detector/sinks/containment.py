"""Containment calls: the HTTP requests ``[[containment]]`` rules make, off the stream.

:meth:`ContainmentCaller.submit` puts a :class:`~detector.core.containment.Call` on a bounded
queue and returns at once (a full queue counts the call as ``dropped``; detection never
waits). One thread makes the calls in order, so an undo always follows its do call. Each
request is rendered from the rule's templates with :class:`string.Template` (values are the
alert's and its cohort's, never code): URL values percent-encoded, body values only inside JSON
strings (the body is built as data, then encoded), header values refused if they hold a line
break. It is signed with HMAC-SHA256 over ``<timestamp>.<body>`` (header ``t=<ts>,v1=<hex>``;
the secret is read at each call from its file or variable, so a rotated secret is used at
once) and carries ``Idempotency-Key: <alert id>:<action>[:undo]`` so a receiver can discard a
repeat. Connection errors, timeouts, 408/425/429 and 5xx are retried with capped exponential
backoff up to ``max_attempts``; other answers are final. Each outcome is logged, counted
(``detector_containment_calls_total{action,status}``) and handed to ``on_result`` so the
stream records it on the alert's state. HTTP is stdlib only (urllib).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any, Final, NamedTuple

import orjson

from detector.config import TEMPLATE_FIELDS, ContainmentRule
from detector.core.alert import Alert
from detector.core.containment import Call
from detector.core.lifecycle import change_text
from detector.core.timestamps import rfc3339
from detector.obs.metrics import Metrics

__all__ = ["ContainmentCaller", "Request", "Tuning", "render", "sign"]

log = logging.getLogger(__name__)

_RETRYABLE_4XX: Final = frozenset({408, 425, 429})
Result = Callable[[str, str, str, float], None]   # alert id, action, status, wall-clock time


class Tuning(NamedTuple):
    """The caller's knobs that are not configuration (tests shorten them)."""

    max_queue: int = 1000
    backoff_max_s: float = 30.0
    use_env_proxy: bool = False   # honour http(s)_proxy; off so loopback never goes via one


class Request(NamedTuple):
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def _values(alert: Alert, action: str) -> dict[str, str]:
    sus = alert.suspected_change
    v = {"id": alert.id, "status": alert.status, "severity": alert.severity,
         "signal": alert.signal, "starts_at": rfc3339(alert.starts_at), "action": action,
         "suspected_change": change_text(sus.field, sus.baseline, sus.now) if sus else ""}
    for k in TEMPLATE_FIELDS:
        v.setdefault(k, alert.cohort.get(k, ""))
    return v


def _body(template: dict[str, Any], values: dict[str, str]) -> bytes:
    return orjson.dumps({k: Template(x).substitute(values) if isinstance(x, str) else x
                         for k, x in template.items()})


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``t=<unix seconds>,v1=<hex HMAC-SHA256>`` over
    ``<t>.<body>`` (the time inside the MAC, so a receiver can refuse an old replay).

    >>> sign(b"k", 1700000000, b"{}")[:16]
    't=1700000000,v1='
    """
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def render(rule: ContainmentRule, alert: Alert, *, undo: bool, secret: bytes | None,
           now: float) -> Request:
    """The request a rule makes for an alert (the undo when ``undo``). Templates were checked
    when the config loaded, so ``substitute`` finds every name. A header value that would
    carry a line break (from a cohort value) is a ``ValueError``."""
    values = _values(alert, rule.name)
    quoted = {k: urllib.parse.quote(v, safe="") for k, v in values.items()}
    url = Template(rule.undo_url if undo and rule.undo_url else rule.url).substitute(quoted)
    body = _body(rule.undo_body if undo else rule.body, values)
    headers = {"Content-Type": "application/json"}
    for k, t in rule.headers.items():
        v = Template(t).substitute(values)
        if "\r" in v or "\n" in v:
            raise ValueError(f"containment {rule.name}: header {k} would hold a line break")
        headers[k] = v
    headers["Idempotency-Key"] = f"{alert.id}:{rule.name}" + (":undo" if undo else "")
    if secret is not None:
        headers[rule.signature_header] = sign(secret, int(now), body)
    return Request(rule.undo_method if undo else rule.method, url, headers, body)


def _secret(rule: ContainmentRule) -> bytes | None:
    """The signing secret, read now (a mounted secret rotates); None when the rule has none.
    An unreadable or empty one is an ``OSError``/``ValueError`` naming where (not what)."""
    if rule.secret_file is not None:
        data = Path(rule.secret_file).read_bytes().strip()
        where = f"secret_file {rule.secret_file}"
    elif rule.secret_env is not None:
        data = os.environ.get(rule.secret_env, "").encode().strip()
        where = f"secret_env {rule.secret_env}"
    else:
        return None
    if not data:
        raise ValueError(f"containment {rule.name}: {where} is empty")
    return data


class ContainmentCaller:
    """A bounded queue and one thread making containment calls. ``submit`` never blocks."""

    def __init__(self, rules: list[ContainmentRule], *, metrics: Metrics | None = None,
                 on_result: Result | None = None, tuning: Tuning = Tuning(),  # noqa: B008
                 clock: Callable[[], float] = time.time) -> None:
        self.rules = {r.name: r for r in rules}
        self.metrics = metrics
        self.on_result = on_result
        self.tuning = tuning
        self._clock = clock
        self._queue: queue.Queue[Call] = queue.Queue(maxsize=tuning.max_queue)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        handlers: list[Any] = [] if tuning.use_env_proxy else [urllib.request.ProxyHandler({})]
        self._opener = urllib.request.build_opener(*handlers)
        self.calls = 0   # requests made (attempts), for tests and introspection
        if metrics is not None:   # series exist from the start
            for name in self.rules:
                metrics.containment_calls.labels(action=name, status="ok")
                metrics.containment_calls.labels(action=name, status="failed")
                metrics.containment_calls.labels(action=name, status="dropped")
        self._thread = threading.Thread(target=self._run, name="containment", daemon=True)
        self._thread.start()

    def count(self, action: str, status: str) -> None:
        if self.metrics is not None:
            self.metrics.containment_calls.labels(action=action, status=status).inc()

    def submit(self, call: Call) -> bool:
        """Queue a call; False (counted and reported as ``dropped``) if the queue is full.
        A dry-run rule's call is logged as it would be made (unsigned) and counted, never
        queued."""
        if call.rule.dry_run:
            try:
                req = render(call.rule, call.alert, undo=call.undo, secret=None,
                             now=self._clock())
            except ValueError as e:
                log.error(orjson.dumps({"event": "containment_failed", "action": call.rule.name,
                                        "alert_id": call.alert.id, "error": str(e)}).decode())
                return True
            log.warning(orjson.dumps({"event": "containment_dry_run", "action": call.rule.name,
                                      "alert_id": call.alert.id, "undo": call.undo,
                                      "method": req.method, "url": req.url,
                                      "body": req.body.decode()}).decode())
            self.count(call.rule.name, "undo_dry_run" if call.undo else "dry_run")
            return True
        with self._idle:
            try:
                self._queue.put_nowait(call)
            except queue.Full:
                status = "undo_dropped" if call.undo else "dropped"
                log.error(orjson.dumps({"event": "containment_dropped", "action": call.rule.name,
                                        "alert_id": call.alert.id, "undo": call.undo,
                                        "reason": "queue full"}).decode())
                self.count(call.rule.name, status)
                self._report(call, status)
                return False
            self._busy += 1
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every queued call is done; True if so."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self) -> None:
        """Stop after the call in progress (its retries cut short); calls still queued stay
        ``pending`` on their alerts and are logged."""
        self._stop.set()
        self._thread.join(timeout=max((r.timeout_seconds for r in self.rules.values()),
                                      default=1.0) + 1.0)
        left = self._queue.qsize()
        if left:
            log.warning(orjson.dumps({"event": "containment_not_sent", "calls": left}).decode())

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                call = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                status = self._call(call)
            except Exception as e:   # a bug here must not end the thread or hide the call
                log.error(orjson.dumps({"event": "containment_error", "action": call.rule.name,
                                        "error": repr(e)}).decode())
                status = "failed"
            status = f"undo_{status}" if call.undo else status
            self.count(call.rule.name, status)
            self._report(call, status)
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _report(self, call: Call, status: str) -> None:
        if self.on_result is not None:
            self.on_result(call.alert.id, call.rule.name, status, self._clock())

    def _call(self, call: Call) -> str:
        rule = call.rule
        fields = {"action": rule.name, "alert_id": call.alert.id, "undo": call.undo}
        delay = rule.backoff_seconds
        for attempt in range(1, rule.max_attempts + 1):
            try:
                req = render(rule, call.alert, undo=call.undo, secret=_secret(rule),
                             now=self._clock())
            except (OSError, ValueError) as e:   # not retried: nothing will change by waiting
                log.error(orjson.dumps({"event": "containment_failed", **fields,
                                        "error": str(e)}).decode())
                return "failed"
            code, retry, error = self._send(req, rule.timeout_seconds)
            self.calls += 1
            if code is not None and 200 <= code < 300:
                log.warning(orjson.dumps({"event": "containment_called", **fields,
                                          "method": req.method, "status_code": code,
                                          "attempt": attempt}).decode())
                return "ok"
            if not retry or attempt == rule.max_attempts:
                log.error(orjson.dumps({"event": "containment_failed", **fields,
                                        "status_code": code, "error": error,
                                        "attempts": attempt}).decode())
                return "failed"
            if self._stop.wait(delay):
                return "failed"
            delay = min(delay * 2, self.tuning.backoff_max_s)
        return "failed"   # not reached: the loop returns on its last attempt

    def _send(self, req: Request, timeout: float) -> tuple[int | None, bool, str | None]:
        """(status code or None, whether to retry, error text)."""
        r = urllib.request.Request(req.url, data=req.body, headers=req.headers,
                                   method=req.method)
        try:
            with self._opener.open(r, timeout=timeout) as resp:
                resp.read(1 << 16)
                return resp.status, False, None
        except urllib.error.HTTPError as e:
            e.close()
            return e.code, e.code >= 500 or e.code in _RETRYABLE_4XX, f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            return None, True, type(e).__name__
