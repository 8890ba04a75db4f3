"""Containment hooks against a real HTTP server on loopback: the request is templated and
signed, dry-run calls nothing, calls are made once per alert id and action (also after a
restart from the changelog's state), retries are bounded, a full queue drops and counts, and
a resolution calls the undo."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from detector.config import Config, ConfigError, ContainmentRule, parse_config
from detector.core.alert import Alert
from detector.core.containment import Call, plan, record
from detector.core.snapshot import dump_route, load_route
from detector.core.stage2 import Stage2
from detector.obs.metrics import Metrics
from detector.sinks.containment import ContainmentCaller, Tuning, render
from detector.stream.stage2_partition import pack, unpack

FIN = ("acme corp", "eu-west-1", "support-agent", "production")
SECRET = b"s3cret-for-tests"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    url: str
    seen: list[Seen] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)   # answers in turn; then 200
    hold: threading.Event | None = None   # a request waits for this (bounded) before answering


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            state.seen.append(Seen(self.command, self.path, dict(self.headers), body))
            if state.hold is not None:
                state.hold.wait(10)
            code = state.codes.pop(0) if state.codes else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, *args: Any) -> None:
            return None

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield state
    if state.hold is not None:
        state.hold.set()
    httpd.shutdown()
    httpd.server_close()


def _config(rules: list[dict[str, Any]]) -> Config:
    import tomllib
    from importlib import resources

    data = tomllib.loads(resources.files("detector").joinpath("data/detector.toml")
                         .read_text("utf-8"))
    data["cohorts"]["levels"] = [["tenant", "region", "app", "environment"]]
    data["containment"] = rules
    return parse_config(data)


def _rule(server: Server, secret_file: Path, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "name": "disable_tools", "severities": ["sev1"], "environments": ["production"],
        "dry_run": False, "method": "PUT",
        "url": server.url + "/tenants/${tenant}/flags/tools",
        "headers": {"X-Team": "${app}"},
        "body": {"value": False, "alert": "${id}", "why": "${signal} in ${tenant}"},
        "undo_url": server.url + "/tenants/${tenant}/flags/tools/undo",
        "undo_method": "PUT", "undo_body": {"value": True, "alert": "${id}"},
        "secret_file": str(secret_file), "max_attempts": 3, "backoff_seconds": 0.01}
    r.update(kw)
    return r


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "hmac"
    p.write_bytes(SECRET + b"\n")
    return p


def _fire(s2: Stage2, ts: float = 600.25) -> Alert:
    a = s2.life.on_hit("unauthorized_tool_call", 0, FIN, ts, "a" * 32, None)
    assert a is not None and a.severity == "sev1"
    return a


def _resolve(s2: Stage2) -> Alert:
    out: list[Alert] = []
    for w in range(11, 30):
        out += s2.life.close_window(s2.life.touch_hits(w * 60.0))
    assert [a.status for a in out] == ["resolved"]
    return out[0]


def _verify(seen: Seen, header: str = "X-Detector-Signature") -> None:
    t, v1 = (p.split("=", 1)[1] for p in seen.headers[header].split(","))
    want = hmac.new(SECRET, t.encode() + b"." + seen.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(v1, want)


def _caller(cfg: Config, results: list[tuple[str, str, str]] | None = None,
            **tuning: Any) -> tuple[ContainmentCaller, Metrics]:
    m = Metrics(CollectorRegistry())

    def on_result(alert_id: str, action: str, status: str, at: float) -> None:
        if results is not None:
            results.append((alert_id, action, status))

    return ContainmentCaller(cfg.containment, metrics=m, on_result=on_result,
                             tuning=Tuning(**tuning)), m


def _count(m: Metrics, action: str, status: str) -> float:
    v = m.registry.get_sample_value("detector_containment_calls_total",
                                    {"action": action, "status": status})
    return v or 0.0


# -- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rule", "error"), [
    ({"severities": ["sev2", "sev4"]}, "containment[0].severities: sev4 never"),
    ({"url": "http://flags/${prompt}"}, "containment[0].url: unknown template field 'prompt'"),
    ({"body": {"x": "${response_text}"}}, "containment[0].body.x: unknown template field"),
    ({"dry_run": False}, "containment[0].dry_run: a rule that calls"),
    ({"url": "ftp://flags/x"}, "containment[0].url: 'ftp://flags/x' is not an http(s) URL"),
    ({"url": "http://${tenant}.flags/x"}, "is not an http(s) URL with a fixed host"),
    ({"match": {"prompt_version": "v1"}}, "containment[0].match.prompt_version: not a cohort"),
    ({"headers": {"X-A": "a\nb"}}, "containment[0].headers.X-A: not a valid header"),
    ({"signals": ["no_such_signal"]}, "containment[0].signals: unknown signal"),
])
def test_config_refuses_unsafe_rules(rule: dict[str, Any], error: str) -> None:
    base = {"name": "r", "url": "http://flags/x"}
    with pytest.raises(ConfigError, match=re.escape(error)):
        _config([{**base, **rule}])


def test_rules_are_dry_run_by_default_and_names_unique() -> None:
    cfg = _config([{"name": "r", "url": "http://flags/x"}])
    assert cfg.containment[0].dry_run is True
    with pytest.raises(ConfigError, match=r"containment\[1\].name: 'r' is used"):
        _config([{"name": "r", "url": "http://flags/x"}] * 2)


def test_the_packaged_example_rule_is_valid() -> None:
    """The commented [[containment]] example in detector.toml loads as written."""
    import re
    import tomllib
    from importlib import resources

    text = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")
    block = text[text.index("#   [[containment]]"):]
    lines = []
    for line in block.splitlines():
        if not line.startswith("#   "):
            break
        lines.append(line[4:])
    doc = tomllib.loads("\n".join(lines))
    assert re.match(r"^https://", doc["containment"][0]["url"])
    cfg = _config(doc["containment"])
    assert cfg.containment[0].name == "disable_tools" and not cfg.containment[0].dry_run


# -- the request -------------------------------------------------------------------------------
def test_request_is_templated_safely_and_signed(server: Server, secret_file: Path) -> None:
    cfg = _config([_rule(server, secret_file)])
    s2 = Stage2(cfg)
    alert = _fire(s2)
    req = render(cfg.containment[0], alert, undo=False, secret=SECRET, now=1700000000.0)
    # A cohort value with a space, a quote or a slash cannot change the URL's path or the
    # body's structure: percent-encoded in the URL, a JSON string value in the body.
    assert req.url.endswith("/tenants/acme%20corp/flags/tools")
    assert json.loads(req.body) == {"value": False, "alert": alert.id,
                                    "why": "unauthorized_tool_call in acme corp"}
    evil = msgspec.structs.replace(alert, cohort={**alert.cohort,
                                                  "tenant": 'x"/../admin", "value": true'})
    evil_req = render(cfg.containment[0], evil, undo=False, secret=SECRET, now=1.0)
    assert json.loads(evil_req.body)["value"] is False
    assert "/../" not in evil_req.url and evil_req.url.count("/") == req.url.count("/")
    assert req.headers["Idempotency-Key"] == f"{alert.id}:disable_tools"
    assert req.headers["X-Team"] == "support-agent"
    assert req.headers["X-Detector-Signature"].startswith("t=1700000000,v1=")


def test_a_call_reaches_the_server_signed_once_per_alert(server: Server,
                                                         secret_file: Path) -> None:
    cfg = _config([_rule(server, secret_file)])
    s2 = Stage2(cfg)
    alert, calls = plan(s2.life, _fire(s2), cfg.containment, 1000.0)
    assert [(c.status, c.action) for c in alert.containment] == [("pending", "disable_tools")]
    results: list[tuple[str, str, str]] = []
    caller, m = _caller(cfg, results)
    try:
        for c in calls:
            assert caller.submit(c)
        assert caller.flush(10)
    finally:
        caller.close()
    assert len(server.seen) == 1
    seen = server.seen[0]
    assert (seen.method, seen.path) == ("PUT", "/tenants/acme%20corp/flags/tools")
    _verify(seen)
    assert results == [(alert.id, "disable_tools", "ok")]
    assert _count(m, "disable_tools", "ok") == 1
    # The same alert again (an escalation's re-emission, a redelivery): nothing new to call.
    again, more = plan(s2.life, alert, cfg.containment, 1001.0)
    assert more == [] and again.containment == alert.containment


def test_once_per_alert_across_a_restart_from_the_changelog(server: Server,
                                                            secret_file: Path) -> None:
    """The claim is in the route key's table value: a worker that loads it does not call
    again; one without it would (so the claim, not luck, is what stops the second call)."""
    cfg = _config([_rule(server, secret_file)])
    s2 = Stage2(cfg)
    alert, calls = plan(s2.life, _fire(s2), cfg.containment, 1000.0)
    assert len(calls) == 1
    record(s2.life, alert.id, "disable_tools", "ok", 1002.0)
    route = s2.route_of(0, FIN)
    table_value = pack(dump_route(s2, route), [], 41)   # what the changelog holds

    successor = Stage2(cfg)
    state, _, offset = unpack(table_value)
    load_route(successor, state)
    assert offset == 41
    replayed, calls_after = plan(successor.life, alert, cfg.containment, 2000.0)
    assert calls_after == []
    assert [(c.action, c.status) for c in replayed.containment] == [("disable_tools", "ok")]

    amnesiac = Stage2(cfg)
    _fire(amnesiac)
    assert len(plan(amnesiac.life, alert, cfg.containment, 2000.0)[1]) == 1


def test_dry_run_calls_nothing_and_records_it(server: Server, secret_file: Path) -> None:
    cfg = _config([_rule(server, secret_file, dry_run=True)])
    s2 = Stage2(cfg)
    alert, calls = plan(s2.life, _fire(s2), cfg.containment, 1000.0)
    assert [c.status for c in alert.containment] == ["dry_run"]
    caller, m = _caller(cfg)
    try:
        for c in calls:
            caller.submit(c)
        resolved, undo = plan(s2.life, _resolve(s2), cfg.containment, 3000.0)
        for c in undo:
            caller.submit(c)
        assert caller.flush(5)
    finally:
        caller.close()
    assert server.seen == [] and caller.calls == 0
    assert [c.status for c in resolved.containment] == ["undo_dry_run"]
    assert _count(m, "disable_tools", "dry_run") == 1
    assert _count(m, "disable_tools", "undo_dry_run") == 1


def test_never_on_sev4_nor_an_unmatched_cohort(secret_file: Path, server: Server) -> None:
    cfg = _config([_rule(server, secret_file, severities=["sev1", "sev2", "sev3"],
                         match={"tenant": "someone-else"})])
    s2 = Stage2(cfg)
    alert, calls = plan(s2.life, _fire(s2), cfg.containment, 1000.0)
    assert calls == [] and alert.containment == []
    sev4 = msgspec.structs.replace(alert, severity="sev4",
                                   cohort={**alert.cohort, "tenant": "someone-else"})
    assert plan(s2.life, sev4, cfg.containment, 1000.0)[1] == []


def test_resolution_calls_the_undo(server: Server, secret_file: Path) -> None:
    cfg = _config([_rule(server, secret_file)])
    s2 = Stage2(cfg)
    results: list[tuple[str, str, str]] = []
    caller, m = _caller(cfg, results)
    try:
        alert, calls = plan(s2.life, _fire(s2), cfg.containment, 1000.0)
        for c in calls:
            caller.submit(c)
        assert caller.flush(10)
        record(s2.life, *results[0][:3], 1001.0)
        resolved, undo = plan(s2.life, _resolve(s2), cfg.containment, 3000.0)
        assert [(c.action, c.status) for c in resolved.containment] == [
            ("disable_tools", "undo_pending")]
        assert len(undo) == 1 and undo[0].undo
        for c in undo:
            caller.submit(c)
        assert caller.flush(10)
    finally:
        caller.close()
    assert [s.path for s in server.seen] == ["/tenants/acme%20corp/flags/tools",
                                             "/tenants/acme%20corp/flags/tools/undo"]
    _verify(server.seen[1])
    assert json.loads(server.seen[1].body) == {"value": True, "alert": alert.id}
    assert server.seen[1].headers["Idempotency-Key"] == f"{alert.id}:disable_tools:undo"
    assert [r[2] for r in results] == ["ok", "undo_ok"]
    assert _count(m, "disable_tools", "undo_ok") == 1


@pytest.mark.parametrize(("codes", "attempts", "status"), [
    ([503] * 10, 3, "failed"),       # retried, bounded by max_attempts
    ([429, 500], 3, "ok"),           # retried until it goes through
    ([400], 1, "failed"),            # a refusal is final
])
def test_retries_are_bounded(server: Server, secret_file: Path, codes: list[int],
                             attempts: int, status: str) -> None:
    cfg = _config([_rule(server, secret_file, max_attempts=3)])
    server.codes = list(codes)
    s2 = Stage2(cfg)
    results: list[tuple[str, str, str]] = []
    caller, m = _caller(cfg, results)
    try:
        _, calls = plan(s2.life, _fire(s2), cfg.containment, 1000.0)
        caller.submit(calls[0])
        assert caller.flush(10)
    finally:
        caller.close()
    assert len(server.seen) == attempts
    assert [r[2] for r in results] == [status]
    assert _count(m, "disable_tools", status) == 1


def test_a_full_queue_drops_and_counts_without_blocking(server: Server,
                                                        secret_file: Path) -> None:
    cfg = _config([_rule(server, secret_file)])
    server.hold = threading.Event()
    results: list[tuple[str, str, str]] = []
    caller, m = _caller(cfg, results, max_queue=1)
    try:
        calls: list[Call] = []
        for i in range(4):   # four alerts (one Stage2 each: the same cohort would extend one)
            s2 = Stage2(cfg)
            calls += plan(s2.life, _fire(s2, 600.25 + 600 * i), cfg.containment, 1000.0)[1]
        assert len(calls) == 4
        assert caller.submit(calls[0])
        deadline = time.monotonic() + 10
        while not server.seen and time.monotonic() < deadline:   # the first is in flight
            time.sleep(0.01)
        accepted = [caller.submit(c) for c in calls[1:]]
        assert accepted == [True, False, False]
        assert _count(m, "disable_tools", "dropped") == 2
        server.hold.set()
        assert caller.flush(10)
    finally:
        server.hold.set()
        caller.close()
    assert sorted(r[2] for r in results) == ["dropped", "dropped", "ok", "ok"]


def test_an_unreadable_secret_fails_the_call_without_sending(server: Server,
                                                             tmp_path: Path) -> None:
    cfg = _config([_rule(server, tmp_path / "absent")])
    s2 = Stage2(cfg)
    results: list[tuple[str, str, str]] = []
    caller, _ = _caller(cfg, results)
    try:
        caller.submit(plan(s2.life, _fire(s2), cfg.containment, 1000.0)[1][0])
        assert caller.flush(10)
    finally:
        caller.close()
    assert server.seen == [] and [r[2] for r in results] == ["failed"]


def test_rules_match_by_signal_environment_and_cohort() -> None:
    from detector.core.containment import matches

    r = ContainmentRule(name="r", url="http://f", severities=["sev1", "sev2"],
                        signals=["safety_*"], environments=["production"],
                        match={"app": "support-agent"})
    prod = {"app": "support-agent", "environment": "production"}
    assert matches(r, "sev2", "safety_pii", prod)
    assert not matches(r, "sev2", "refusal_rate", prod)
    assert not matches(r, "sev3", "safety_pii", prod)
    assert not matches(r, "sev1", "safety_pii", {**prod, "environment": "canary"})
    assert not matches(r, "sev1", "safety_pii", {**prod, "app": "other"})
    assert matches(r, "sev1", "safety_pii", {"app": "support-agent"})   # production by default
