"""Containment through a real worker: an unauthorized tool call in production makes worker A
call a flag endpoint on loopback (signed); A is SIGKILLed; worker B resumes stage 2 from the
changelog, does not call again, and calls the undo when the alert resolves."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import AlertReader, WorkerProc, produce_lines, wait_until, write_config

from detector.lab.broker import Tansu

pytestmark = pytest.mark.integration

ENV = {"DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"}
SECRET = b"integration-secret"
T0 = 1_767_571_200.0


def _server() -> tuple[http.server.ThreadingHTTPServer, list[tuple[str, dict[str, str], bytes]]]:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.path, dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, seen


def _chats(start_min: int, end_min: int) -> list[bytes]:
    return [orjson.dumps({"ts": T0 + m * 60 + i * 6.0, "operation": "chat", "tenant": "t1",
                          "app": "support-agent", "environment": "production"})
            for m in range(start_min, end_min) for i in range(10)]


def _signed(headers: dict[str, str], body: bytes) -> bool:
    t, v1 = (p.split("=", 1)[1] for p in headers["X-Detector-Signature"].split(","))
    want = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(v1, want)


def test_called_once_across_a_sigkill_and_undone_on_resolve(
        broker: Tansu, names: dict[str, str], tmp_path: Path) -> None:
    httpd, seen = _server()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    (tmp_path / "hmac").write_bytes(SECRET)
    cfg = write_config(tmp_path / "cfg.toml", brokers=broker.bootstrap, partitions=1,
                       idle_partition_timeout_seconds=20, **names)
    with cfg.open("a") as f:
        f.write(f'''
[[containment]]
name = "disable_tools"
environments = ["production"]
match = {{ tenant = "t1" }}
dry_run = false
method = "PUT"
url = "{url}/tenants/${{tenant}}/tools"
body = {{ enabled = false, alert = "${{id}}" }}
undo_url = "{url}/tenants/${{tenant}}/tools"
undo_method = "PUT"
undo_body = {{ enabled = true, alert = "${{id}}" }}
secret_file = "{tmp_path / 'hmac'}"
''')
    hit = orjson.dumps({"ts": T0 + 95.0, "operation": "execute_tool", "tenant": "t1",
                        "app": "support-agent", "environment": "production",
                        "trace_id": "ab" * 16, "tool_name": "send_email",
                        "tool_authorized": False, "tool_side_effect": "external"})
    reader = AlertReader(broker.bootstrap, names["alerts_topic"])
    a = WorkerProc(cfg, tmp_path / "a.log", ENV)
    b: WorkerProc | None = None
    try:
        wait_until(lambda: '"stage1_assigned"' in a.log(), 90, "worker A to join")
        produce_lines(broker.bootstrap, names["traces_topic"],
                      [*_chats(0, 1), hit, *_chats(2, 4)], partitions=1)
        wait_until(lambda: len(seen) >= 1, 60, "worker A's containment call")
        wait_until(lambda: any(x["status"] == "firing" for x in reader.poll()), 30,
                   "the sev1 alert")
        reader.poll(3.0)   # the claim and the outcome reach the table
        a.kill()
        b = WorkerProc(cfg, tmp_path / "b.log", ENV)
        wait_until(lambda: '"stage1_assigned"' in b.log(), 90, "worker B to take over")
        produce_lines(broker.bootstrap, names["traces_topic"], _chats(4, 14), partitions=1)
        wait_until(lambda: any(x["status"] == "resolved" for x in reader.poll()), 120,
                   "the resolution")
        wait_until(lambda: len(seen) >= 2, 30, "worker B's undo call")
        reader.poll(2.0)
        fired = [x for x in reader.alerts if x["signal"] == "unauthorized_tool_call"]
        alert_id = fired[0]["id"]
        assert len(seen) == 2, [s[0] for s in seen]   # one call, one undo: nothing repeated
        (p1, h1, b1), (p2, h2, b2) = seen
        assert p1 == p2 == "/tenants/t1/tools"
        assert orjson.loads(b1) == {"enabled": False, "alert": alert_id}
        assert orjson.loads(b2) == {"enabled": True, "alert": alert_id}
        assert h1["Idempotency-Key"] == f"{alert_id}:disable_tools"
        assert h2["Idempotency-Key"] == f"{alert_id}:disable_tools:undo"
        assert _signed(h1, b1) and _signed(h2, b2)
        resolved = next(x for x in fired if x["status"] == "resolved")
        # B had A's claim from the changelog: without it there would be no undo to make.
        assert [c["status"] for c in resolved["containment"]] == ["undo_pending"]
        assert b.events("containment_called") and not b.events("containment_failed")
        assert "Traceback" not in b.log()
    finally:
        reader.close()
        httpd.shutdown()
        httpd.server_close()
        for w in (a, b):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.stop()
