"""A feature-flag endpoint on loopback for ``detector demo --containment``: what a containment
hook would call in production (a flag service that turns a tenant's app to a safe mode).

It checks each request's HMAC-SHA256 signature the way a real receiver should (the header
:func:`detector.sinks.containment.sign` writes, at most ``max_age_s`` old), answers 204 to a
verified call and 401 to anything else, keeps the flags it was told to set, and hands every
request it saw to ``on_call`` so the demo can print it. It keeps no more than ``max_calls``
requests and reads no body over 64 KiB: a demo's helper, never exposed beyond 127.0.0.1.
"""

from __future__ import annotations

import hmac
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from detector.sinks.containment import sign

__all__ = ["FlagCall", "FlagServer", "verify"]

_MAX_BODY = 1 << 16


class FlagCall(NamedTuple):
    """One request the endpoint received."""

    method: str
    path: str
    alert_id: str     # from the Idempotency-Key (``<alert id>:<action>[:undo]``)
    action: str
    undo: bool
    body: dict[str, Any]
    verified: bool    # the signature matched the shared secret and was fresh


def verify(secret: bytes, header: str, body: bytes, now: float, max_age_s: float = 300.0
           ) -> bool:
    """Whether ``header`` (``t=<ts>,v1=<hex>``) signs ``body`` with ``secret``, made at most
    ``max_age_s`` before ``now``.

    >>> verify(b"k", sign(b"k", 1700000000, b"{}"), b"{}", now=1700000001)
    True
    >>> verify(b"other", sign(b"k", 1700000000, b"{}"), b"{}", now=1700000001)
    False
    """
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    fresh = abs(now - t) <= max_age_s
    return fresh and hmac.compare_digest(sign(secret, t, body), f"t={t},v1={parts.get('v1')}")


class FlagServer:
    """The endpoint, serving on a thread from :meth:`start` until :meth:`stop`."""

    def __init__(self, secret: bytes, *, on_call: Callable[[FlagCall], None] | None = None,
                 signature_header: str = "X-Detector-Signature", max_calls: int = 1000,
                 max_age_s: float = 300.0) -> None:
        self.secret = secret
        self.on_call = on_call
        self.calls: list[FlagCall] = []
        self.flags: dict[str, Any] = {}   # path -> the value last set there
        self.max_calls = max_calls
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n > _MAX_BODY:
                    self.send_response(413)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                raw = self.rfile.read(n)
                ok = verify(server.secret, self.headers.get(signature_header, ""), raw,
                            time.time(), max_age_s)
                try:
                    body = orjson.loads(raw) if raw else {}
                except orjson.JSONDecodeError:
                    body, ok = {}, False
                key = (self.headers.get("Idempotency-Key") or "").split(":")
                call = FlagCall(self.command, self.path, key[0], key[1] if len(key) > 1 else "",
                                key[-1] == "undo", body if isinstance(body, dict) else {}, ok)
                server._keep(call)
                self.send_response(204 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                return None   # the demo prints the calls its own way

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="flag-server",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FlagServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _keep(self, call: FlagCall) -> None:
        with self._lock:
            if len(self.calls) < self.max_calls:
                self.calls.append(call)
            if call.verified:
                self.flags[call.path] = call.body.get("enabled")
        if self.on_call is not None:
            self.on_call(call)
