"""Start Debian's real ``prometheus`` and ``prometheus-alertmanager`` for tests.

Each service runs on a free loopback port in its own temporary directory (config, storage,
log) and is stopped (terminate, then kill) when its context manager exits, or gets SIGTERM
when the test process dies. Nothing listens beyond 127.0.0.1 and Alertmanager runs
single-node (``--cluster.listen-address=``).

Binaries that are missing fail the test under ``CI=true`` (CI must install them with
``.ci/install-services.sh``) and skip it elsewhere, with the reason.

Use from a test module (``tests/`` is on ``sys.path`` under pytest's default import mode;
``from tests import services`` if tests/ becomes a package)::

    import services as svc

    @pytest.mark.integration
    def test_x():
        with svc.alertmanager() as am:          # default config: one null receiver
            svc.http_json(am.url + "/api/v2/status")
        with svc.prometheus(PROM_YML) as prom:  # PROM_YML may use {rules_dir}
            svc.wait_until(lambda: svc.http_json(prom.url + "/api/v1/targets"), timeout=20)

Also: :class:`RecordingServer` (a loopback HTTP receiver that records POSTs and can fail the
first N), :func:`sample_alert` (a contract-valid alert), :func:`require_binary`,
:func:`free_port`, :func:`http_json`, :func:`wait_until` (bounded polling).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from detector.core.alert import Alert
from detector.core.timestamps import rfc3339 as iso
from detector.lab.processes import die_with_parent

__all__ = [
    "COHORT",
    "DEFAULT_ALERTMANAGER_YML",
    "RecordingServer",
    "Service",
    "alertmanager",
    "free_port",
    "http_json",
    "in_ci",
    "iso",
    "prometheus",
    "require_binary",
    "sample_alert",
    "wait_until",
]

T = TypeVar("T")

#: A config that accepts alerts and notifies nobody (a receiver with no integrations).
DEFAULT_ALERTMANAGER_YML = """\
route:
  receiver: "null"
  group_by: ["alertname"]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
"""

START_TIMEOUT_S = 30.0  # first start after install can be slow on a loaded CI machine
STOP_TIMEOUT_S = 10.0
START_ATTEMPTS = 3  # a free port can be taken between probe and bind; retry a few times


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str) -> str:
    """Path of ``name`` on PATH; fail under CI, skip locally when it is missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed (run .ci/install-services.sh)"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``probe`` until it returns something truthy and return that; bounded by ``timeout``.
    OSError/ValueError from the probe (connection refused, HTTP error, bad JSON) count as
    not yet."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except (OSError, ValueError) as exc:  # connection refused, HTTP errors, bad JSON
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or probe}") from (
                last_exc
            )
        time.sleep(interval)


def http_json(url: str, *, data: Any = None, timeout: float = 5.0) -> Any:
    """GET (or POST ``data`` as JSON) and decode the JSON answer; empty body -> None."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    # No proxy: test traffic stays on loopback whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


@dataclass
class Service:
    """A running service: ``url`` is ``http://127.0.0.1:PORT``; ``workdir`` holds its files."""

    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)


def _ready(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=1.0) as resp:
                return bool(resp.status == 200)
        except urllib.error.URLError:
            return False

    return probe


def _start(
    name: str, argv_for: Callable[[int], list[str]], workdir: Path, ready_path: str
) -> Service:
    """Start on a fresh free port; retry on a lost port race or an early exit."""
    last_log = ""
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        log_path = workdir / f"{name}.{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv_for(port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(),
            )
        svc = Service(name=name, port=port, workdir=workdir, proc=proc, log_path=log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        probe = _ready(svc.url + ready_path)
        while time.monotonic() < deadline and svc.alive():
            if probe():
                return svc
            time.sleep(0.05)
        last_log = svc.log()
        svc.stop()
    raise RuntimeError(f"{name} did not become ready; last log:\n{last_log[-4000:]}")


@contextlib.contextmanager
def alertmanager(
    config_yml: str = DEFAULT_ALERTMANAGER_YML, *, extra_args: tuple[str, ...] = ()
) -> Iterator[Service]:
    """A single-node Alertmanager on a free loopback port, config ``config_yml``."""
    binary = require_binary("prometheus-alertmanager")
    with tempfile.TemporaryDirectory(prefix="am-") as tmp:
        workdir = Path(tmp)
        config = workdir / "alertmanager.yml"
        config.write_text(config_yml)
        (workdir / "data").mkdir()

        def argv(port: int) -> list[str]:
            return [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # single node: no gossip port
                "--log.level=warn",
                *extra_args,
            ]

        svc = _start("alertmanager", argv, workdir, "/-/ready")
        try:
            yield svc
        finally:
            svc.stop()


@contextlib.contextmanager
def prometheus(
    config_yml: str,
    *,
    rule_files: Mapping[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Service]:
    """A Prometheus on a free loopback port. ``config_yml`` may contain ``{rules_dir}``,
    replaced by the directory where ``rule_files`` (name -> YAML text) are written."""
    binary = require_binary("prometheus")
    with tempfile.TemporaryDirectory(prefix="prom-") as tmp:
        workdir = Path(tmp)
        rules_dir = workdir / "rules"
        rules_dir.mkdir()
        for name, text in (rule_files or {}).items():
            (rules_dir / name).write_text(text)
        config = workdir / "prometheus.yml"
        config.write_text(config_yml.replace("{rules_dir}", str(rules_dir)))
        (workdir / "data").mkdir()

        def argv(port: int) -> list[str]:
            return [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
                *extra_args,
            ]

        svc = _start("prometheus", argv, workdir, "/-/ready")
        try:
            yield svc
        finally:
            svc.stop()


class RecordingServer:
    """A tiny HTTP server on a free loopback port that records POSTed JSON bodies.

    The first ``fail_first`` requests get ``fail_status`` (a fault the real services cannot
    be made to show on demand); later ones get 200. ``requests`` holds (path, body, headers)
    of every request, ``bodies`` the decoded JSON of the successful ones. Use as a context
    manager; it serves from a daemon thread.
    """

    def __init__(
        self, *, fail_first: int = 0, fail_status: int = 503,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []
        self.bodies: list[Any] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with outer.lock:
                    outer.requests.append((self.path, body, dict(self.headers)))
                    failing = len(outer.requests) <= outer.fail_first
                    if not failing:
                        outer.bodies.append(json.loads(body) if body else None)
                self.send_response(outer.fail_status if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if ssl_context is not None else "http"
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.bodies)


# -- a sample alert ---------------------------------------------------------------------------

COHORT: dict[str, str] = {"tenant": "acme", "app": "support-agent", "environment": "production",
                          "region": "eu-west-1"}


def sample_alert(**over: Any) -> Alert:
    """A firing sev1 alert per shared/schema/alert.schema.json; keywords replace fields (times
    as RFC 3339 text or datetimes)."""
    now = datetime.now(UTC)
    alert: dict[str, Any] = {
        "id": "a-1",
        "status": "firing",
        "severity": "sev1",
        "signal": "unauthorized_tool_call",
        "cohort": dict(COHORT),
        "starts_at": iso(now - timedelta(minutes=3)),
        "ends_at": None,
        "observed": 4.0,
        "expected": 0.0,
        "score": 12.5,
        "threshold": 1.0,
        "window": {"start": iso(now - timedelta(minutes=2)),
                   "end": iso(now - timedelta(minutes=1)), "events": 812},
        "suspected_change": {"field": "prompt_version", "baseline": "v41", "now": "v42"},
        "evidence": {"trace_ids": ["0af7651916cd43dd8448eb211c80319c",
                                   "4bf92f3577b34da6a3ce929d0e0e4736"]},
        "summary": "support-agent called a tool outside its allow-list",
        "runbook_url": "https://runbooks.example/unauthorized-tool-call",
        "actions": ["disable tool", "roll back prompt"],
        "persistence": 1,
    }
    alert.update(over)
    return msgspec.convert(alert, Alert)
