"""The Alertmanager sink against the real Debian ``prometheus-alertmanager``.

A tiny local HTTP server stands in only where the real thing cannot show the fault on demand
(fail N times then succeed, TLS with a throwaway CA) or to see exactly what was sent.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from detector.config import AlertmanagerConfig, ConfigError, parse_config
from detector.core.alert import encode_alert
from detector.obs.metrics import Metrics
from detector.sinks.alertmanager import AlertmanagerSink, Tuning, alertname, to_postable

try:  # tests/ is on sys.path under pytest's default import mode; else tests is a package
    import services as svc
except ImportError:  # pragma: no cover
    from tests import services as svc

SCHEMA = Path(__file__).resolve().parents[1].parent / "shared" / "schema" / "alert.schema.json"
LABEL_FIELDS = ("tenant", "app", "environment")
WAIT = 15.0  # bound for every wait on a real service


def ts(rfc3339: str) -> datetime:
    return datetime.fromisoformat(rfc3339)


def am_sink(urls: list[str], *, clock: Any = None, metrics: Metrics | None = None,
         **over: Any) -> AlertmanagerSink:
    """A sink with short test timings; keywords are [sinks.alertmanager] keys or Tuning's."""
    tune = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "poll_s": 0.05}
    tune.update({k: over.pop(k) for k in list(over) if k in Tuning._fields})
    config = AlertmanagerConfig(**{"urls": list(urls), "cohort_labels": list(LABEL_FIELDS),
                                   "timeout_seconds": 2.0, **over})
    extra = {"clock": clock} if clock is not None else {}
    return AlertmanagerSink(config, tuning=Tuning(**tune), metrics=metrics, **extra)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def am_alerts(url: str, **params: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return list(svc.http_json(f"{url}/api/v2/alerts" + (f"?{query}" if query else "")))


def find(alerts: list[dict[str, Any]], **labels: str) -> list[dict[str, Any]]:
    return [a for a in alerts if all(a["labels"].get(k) == v for k, v in labels.items())]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- mapping (no service) ----------------------------------------------------------------------


def test_fixture_alert_follows_the_contract() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.exists():
        if svc.in_ci():
            pytest.fail(f"{SCHEMA} missing")
        pytest.skip(f"{SCHEMA} missing")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(json.loads(encode_alert(svc.sample_alert())))
    validator.validate(json.loads(encode_alert(
        svc.sample_alert(status="resolved", ends_at=svc.iso(datetime.now(UTC))))))


@pytest.mark.parametrize(("signal", "name"), [
    ("unauthorized_tool_call", "ModelUnauthorizedToolCall"),
    ("safety_pii", "ModelSafetyPii"),
    ("refusal_rate", "ModelRefusalRate"),
    ("tool_call_rate", "ModelToolCallRate"),
])
def test_alertname_is_camel_case_with_model_prefix(signal: str, name: str) -> None:
    assert alertname(signal) == name


@pytest.mark.parametrize(("sev", "label"), [
    ("sev1", "critical"), ("sev2", "critical"), ("sev3", "warning"), ("sev4", "info")])
def test_labels_and_annotations(sev: str, label: str) -> None:
    labels, ann = to_postable(svc.sample_alert(severity=sev), LABEL_FIELDS)
    assert labels == {"alertname": "ModelUnauthorizedToolCall", "severity": label, "sev": sev,
                      "signal": "unauthorized_tool_call", "tenant": "acme",
                      "app": "support-agent", "environment": "production"}
    assert "region" not in labels  # cohort fields become labels only when configured
    assert ann["summary"] == "support-agent called a tool outside its allow-list"
    assert ann["runbook_url"] == "https://runbooks.example/unauthorized-tool-call"
    assert ann["trace_ids"] == ("0af7651916cd43dd8448eb211c80319c,"
                                "4bf92f3577b34da6a3ce929d0e0e4736")
    for part in ("observed 4", "expected 0", "score 12.5", "812 events",
                 "prompt_version v41 -> v42"):
        assert part in ann["description"]


@pytest.mark.parametrize(("table", "message"), [
    ({"urls": ["ftp://x"]}, "sinks.alertmanager.urls: 'ftp://x' is not an http(s) URL"),
    ({"cohort_labels": ["bad-name"]},
     "sinks.alertmanager.cohort_labels: 'bad-name' is not a free label name"),
    ({"cohort_labels": ["severity"]},
     "sinks.alertmanager.cohort_labels: 'severity' is not a free label name"),
    ({"basic_auth_user": "u", "bearer_token_file": "/t"},
     "sinks.alertmanager.basic_auth_user: basic auth and a bearer token are mutually exclusive"),
    ({"key_file": "/k.pem"}, "sinks.alertmanager.key_file: needs cert_file"),
    ({"nope": 1}, "sinks.alertmanager.nope: unknown key"),
    ({"timeout_seconds": 0}, "sinks.alertmanager.timeout_seconds: Expected `float` > 0.0"),
    ({"generator_url": 3}, "sinks.alertmanager.generator_url: Expected `str | null`, got `int`"),
])
def test_a_bad_setting_is_an_error_naming_its_dotted_key(table: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"severity": [{"severity": "sev4"}],
                      "sinks": {"alertmanager": table}})
    assert str(e.value) == message


def test_the_sink_refuses_settings_it_cannot_send_with() -> None:
    with pytest.raises(ConfigError, match=r"^sinks\.alertmanager\.urls: at least one"):
        AlertmanagerSink(AlertmanagerConfig())
    with pytest.raises(ConfigError, match=r"^sinks\.alertmanager\.urls: 'ftp://x'"):
        AlertmanagerSink(AlertmanagerConfig(urls=["ftp://x"]))
    secret = AlertmanagerConfig(urls=["http://127.0.0.1:1"], bearer_token="tok-XYZ",
                                basic_auth_password="pw-XYZ")
    assert "tok-XYZ" not in repr(secret) and "pw-XYZ" not in repr(secret)  # not in logs


# -- queue, resend, retry (local server or dead URL; no timing assertions) -----------------


def test_overflow_drops_lower_severities_before_sev1() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    dead = f"http://127.0.0.1:{svc.free_port()}"  # nothing listens: everything stays queued
    with am_sink([dead], max_queue=6, backoff_initial_s=30, backoff_max_s=30,
                 metrics=metrics) as sink:
        def emit(alert_id: str, sev: str) -> None:  # a distinct cohort: its own label set
            cohort = dict(svc.COHORT, tenant=alert_id)
            sink.emit(svc.sample_alert(id=alert_id, severity=sev, cohort=cohort))

        for i in range(4):
            emit(f"s1-{i}", "sev1")
        for i in range(5):
            emit(f"s4-{i}", "sev4")
        for i in range(5):
            emit(f"s3-{i}", "sev3")
        assert sink.held() == {"sev1": 4, "sev2": 0, "sev3": 2, "sev4": 0}
        assert sample(registry, "detector_sink_dropped_total", sink="alertmanager",
                      severity="sev4") == 5
        assert sample(registry, "detector_sink_dropped_total", sink="alertmanager",
                      severity="sev3") == 3
        # A full queue of sev1 takes a new sev1 by dropping the oldest sev1 only then.
        for i in range(4, 8):
            emit(f"s1-{i}", "sev1")
        assert sink.held() == {"sev1": 6, "sev2": 0, "sev3": 0, "sev4": 0}
        emit("late-sev2", "sev2")  # lower than everything held: dropped itself
        assert sink.held()["sev2"] == 0
        assert sample(registry, "detector_sink_dropped_total", sink="alertmanager",
                      severity="sev1") == 2
        assert sample(registry, "detector_sink_queued_alerts", sink="alertmanager") == 6


def test_retries_with_backoff_then_delivers() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    with svc.RecordingServer(fail_first=3) as server, am_sink(
            [server.url], backoff_initial_s=10.0, backoff_max_s=100.0,
            clock=clock, metrics=Metrics(registry)) as sink:
        sink.emit(svc.sample_alert())

        def attempts() -> int:
            return len(server.requests)

        svc.wait_until(lambda: attempts() == 1, timeout=WAIT, what="first attempt")
        # Backoff k waits between 0.5 and 1 times 10 * 2**(k-1) seconds of the sink's clock:
        # less than the lower bound never retries, the upper bound always does.
        for k, (short, full) in enumerate([(4.0, 10.0), (9.0, 20.0), (19.0, 40.0)], start=1):
            clock.advance(short)
            assert not sink.flush(0.3)  # the clock has not reached the retry time
            assert attempts() == k
            clock.advance(full - short)
            svc.wait_until(lambda k=k: attempts() == k + 1, timeout=WAIT, what=f"retry {k}")
        assert sink.flush(WAIT)
        assert len(server.snapshot()) == 1 and server.snapshot()[0][0]["labels"]["sev"] == "sev1"
        assert sample(registry, "detector_sink_failures_total", sink="alertmanager") == 3
        assert sample(registry, "detector_sink_sends_total", sink="alertmanager") == 1


def test_firing_is_resent_with_ends_at_ahead_and_resolved_resent_for_a_while() -> None:
    clock = FakeClock()
    with svc.RecordingServer() as server, am_sink(
            [server.url], resend_interval_seconds=60, resolved_resend_seconds=300,
            ends_at_resends=4, clock=clock) as sink:
        sink.emit(svc.sample_alert())
        assert sink.flush(WAIT)
        for _ in range(2):
            sent_at = clock()
            clock.advance(60)
            n = len(server.snapshot())
            svc.wait_until(lambda n=n: len(server.snapshot()) == n + 1, timeout=WAIT, what="resend")
            last = server.snapshot()[-1][0]
            ends = datetime.fromisoformat(last["endsAt"]).timestamp()
            assert ends == pytest.approx(sent_at + 60 + 4 * 60, abs=1)
        ends_at = svc.iso(datetime.fromtimestamp(clock() - 30, UTC))
        sink.emit(svc.sample_alert(status="resolved", ends_at=ends_at))
        assert sink.flush(WAIT)
        assert server.snapshot()[-1][0]["endsAt"] == ends_at
        sends = len(server.snapshot())
        for _ in range(4):  # re-sent every 60 s while within resolved_resend_s
            clock.advance(60)
            svc.wait_until(lambda s=sends: len(server.snapshot()) == s + 1, timeout=WAIT,
                           what="resolved resend")
            sends += 1
            assert server.snapshot()[-1][0]["endsAt"] == ends_at
        clock.advance(61)  # past resolved_resend_s: forgotten
        svc.wait_until(lambda: sum(sink.held().values()) == 0, timeout=WAIT, what="expiry")


def test_ids_sharing_a_label_set_resolve_it_only_when_the_last_one_resolves() -> None:
    # region is not a label field: two cohorts that differ only there are one Alertmanager
    # alert, and resolving one of them must not end the other's page.
    eu, us = dict(svc.COHORT, region="eu-west-1"), dict(svc.COHORT, region="us-east-1")
    now = datetime.now(UTC)
    with svc.RecordingServer() as server, am_sink([server.url]) as sink:
        sink.emit(svc.sample_alert(id="eu", cohort=eu))
        sink.emit(svc.sample_alert(id="us", cohort=us))
        assert sink.flush(WAIT)
        assert sink.held()["sev1"] == 1  # one label set
        sink.emit(svc.sample_alert(id="eu", cohort=eu, status="resolved", ends_at=svc.iso(now)))
        assert sink.flush(WAIT)
        sent = [a for body in server.snapshot() for a in body]
        assert all(datetime.fromisoformat(a["endsAt"]) > now for a in sent)  # nothing ended
        sink.emit(svc.sample_alert(id="us", cohort=us, status="resolved", ends_at=svc.iso(now)))
        assert sink.flush(WAIT)
        assert server.snapshot()[-1][0]["endsAt"] == svc.iso(now)


def test_malformed_alert_is_dropped_and_counted() -> None:
    """A struct whose types a caller broke (the stream never makes one) is dropped and
    counted, and the next alert still goes out."""
    registry = CollectorRegistry()
    with svc.RecordingServer() as server, am_sink([server.url],
                                                  metrics=Metrics(registry)) as sink:
        bad = msgspec.structs.replace(svc.sample_alert(), starts_at="yesterday")
        sink.emit(bad)
        assert sink.flush(WAIT)
        assert server.requests == []
        sink.emit(svc.sample_alert(id="good", severity="sev2"))
        assert sink.flush(WAIT)
        assert [a["labels"]["sev"] for a in server.snapshot()[0]] == ["sev2"]
    assert sample(registry, "detector_sink_dropped_total", sink="alertmanager",
                  severity="sev1") == 1


def test_the_sink_reads_every_setting_from_the_detector_config(tmp_path: Path) -> None:
    """The config's table is the sink's one schema: the new file, generator and timeout keys
    reach the requests it sends."""
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    cfg = parse_config({"severity": [{"severity": "sev4"}], "sinks": {"alertmanager": {
        "urls": ["http://127.0.0.1:1"], "basic_auth_user": "am",
        "basic_auth_password_file": str(pw), "generator_url": "https://grafana.example/d/x",
        "timeout_seconds": 7.5}}}).sinks.alertmanager
    assert (cfg.basic_auth_password_file, cfg.generator_url, cfg.timeout_seconds) == (
        str(pw), "https://grafana.example/d/x", 7.5)
    with svc.RecordingServer() as server:
        cfg = msgspec.structs.replace(cfg, urls=[server.url])
        with AlertmanagerSink(cfg, tuning=Tuning(poll_s=0.05)) as sink:
            assert sink.config is cfg
            sink.emit(svc.sample_alert())
            assert sink.flush(WAIT)
            assert server.snapshot()[0][0]["generatorURL"] == "https://grafana.example/d/x"
        token = tmp_path / "token"
        token.write_text("tok-from-file\n")
        bearer = msgspec.structs.replace(cfg, basic_auth_user=None,
                                         basic_auth_password_file=None,
                                         bearer_token_file=str(token))
        with AlertmanagerSink(bearer, tuning=Tuning(poll_s=0.05)) as sink:
            sink.emit(svc.sample_alert())
            assert sink.flush(WAIT)
    auth = [headers.get("Authorization") for _p, _b, headers in server.requests]
    assert auth == ["Basic " + base64.b64encode(b"am:from-file").decode(),
                    "Bearer tok-from-file"]


def test_one_default_per_setting() -> None:
    """The packaged config and the schema agree, and the sink keeps no defaults of its own
    for a key of [sinks.alertmanager]."""
    from detector.config import load_config

    assert load_config(None, env=False).sinks.alertmanager == AlertmanagerConfig()
    assert AlertmanagerConfig().timeout_seconds == 5.0
    assert not set(Tuning._fields) & set(AlertmanagerConfig.__struct_fields__)


def test_basic_auth_and_bearer_token_headers(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with svc.RecordingServer() as server:
        with am_sink([server.url], bearer_token_file=str(token)) as sink:
            sink.emit(svc.sample_alert())
            assert sink.flush(WAIT)
        with am_sink([server.url], basic_auth_user="am", basic_auth_password="pw") as sink:
            sink.emit(svc.sample_alert())
            assert sink.flush(WAIT)
        auth = [headers.get("Authorization") for _p, _b, headers in server.requests]
        assert auth == ["Bearer s3cret-token", "Basic YW06cHc="]
        assert {path for path, _b, _h in server.requests} == {"/api/v2/alerts"}


def test_tls_verifies_against_the_configured_ca(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed (needed to make a throwaway certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with svc.RecordingServer(ssl_context=ctx) as server:
        with am_sink([server.url], backoff_initial_s=30) as sink:
            sink.emit(svc.sample_alert())  # unknown CA: the handshake fails, nothing delivered
            assert not sink.flush(1.0)
        assert server.snapshot() == []
        with am_sink([server.url], ca_file=str(cert)) as sink:
            sink.emit(svc.sample_alert())
            assert sink.flush(WAIT)
        with am_sink([server.url], insecure_skip_verify=True) as sink:
            sink.emit(svc.sample_alert(id="a-2"))
            assert sink.flush(WAIT)
        assert [b[0]["annotations"]["alert_id"] for b in server.snapshot()] == ["a-1", "a-2"]


# -- against the real Alertmanager -------------------------------------------------------------


@pytest.mark.integration
def test_alert_appears_in_alertmanager_with_labels_and_annotations() -> None:
    alert = svc.sample_alert()
    with svc.alertmanager() as am, am_sink([am.url]) as sink:
        sink.emit(alert)
        assert sink.flush(WAIT)
        got = svc.wait_until(lambda: find(am_alerts(am.url), sev="sev1"), timeout=WAIT,
                             what="alert in Alertmanager")
    assert len(got) == 1
    a = got[0]
    assert a["labels"] == {"alertname": "ModelUnauthorizedToolCall", "severity": "critical",
                           "sev": "sev1", "signal": "unauthorized_tool_call", "tenant": "acme",
                           "app": "support-agent", "environment": "production"}
    assert a["annotations"]["summary"] == alert.summary
    assert a["annotations"]["runbook_url"] == alert.runbook_url
    assert a["annotations"]["trace_ids"].split(",") == alert.evidence.trace_ids
    assert "score 12.5" in a["annotations"]["description"]
    assert a["status"]["state"] == "active"
    assert ts(a["startsAt"]) == alert.starts_at  # Go drops trailing zeros: compare times
    assert datetime.fromisoformat(a["endsAt"]) > datetime.now(UTC)


@pytest.mark.integration
def test_severity_change_ends_the_old_label_set() -> None:
    def only(am_url: str, sev: str) -> list[dict[str, Any]]:
        return svc.wait_until(lambda: [a["labels"]["sev"] for a in am_alerts(am_url)] == [sev],
                              timeout=WAIT, what=f"only {sev} active")

    with svc.alertmanager() as am, am_sink([am.url]) as sink:
        sink.emit(svc.sample_alert(severity="sev3"))
        assert sink.flush(WAIT)
        only(am.url, "sev3")
        sink.emit(svc.sample_alert(severity="sev1"))  # escalation: the sev3 label set ends
        assert sink.flush(WAIT)
        only(am.url, "sev1")
        sink.emit(svc.sample_alert(severity="sev3"))  # and back: sev3 fires again, sev1 ends
        assert sink.flush(WAIT)
        only(am.url, "sev3")
        assert sink.held() == {"sev1": 1, "sev2": 0, "sev3": 1, "sev4": 0}


@pytest.mark.integration
def test_dead_alertmanager_does_not_block_the_live_one() -> None:
    registry = CollectorRegistry()
    # The worst dead URL: it accepts the connection and never answers. A sender that served
    # the URLs one after another would sit here for timeout_s (longer than WAIT).
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        dead = f"http://127.0.0.1:{hung.getsockname()[1]}"
        with svc.alertmanager() as am, am_sink([dead, am.url], timeout_seconds=WAIT * 2,
                                                metrics=Metrics(registry)) as sink:
            for i in range(3):
                sink.emit(svc.sample_alert(id=f"a-{i}", signal=f"signal_{i}"))
            got = svc.wait_until(lambda: len(a := am_alerts(am.url)) == 3 and a, timeout=WAIT,
                                 what="three alerts in the live Alertmanager")
            assert not sink.flush(0.5)  # the hung one still holds them
            assert sample(registry, "detector_sink_sends_total", sink="alertmanager") >= 1
            hung.close()  # resets the hung connection so close() does not wait for the timeout
    assert sorted(a["labels"]["signal"] for a in got) == ["signal_0", "signal_1", "signal_2"]


WEBHOOK_AM = """\
route:
  receiver: hook
  group_by: ["alertname", "tenant", "app", "environment"]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: "{url}/hook"
        send_resolved: true
"""


@pytest.mark.integration
def test_notification_reaches_webhook_and_resolve_ends_it() -> None:
    alert = svc.sample_alert()
    ends_at = svc.iso(datetime.now(UTC) - timedelta(seconds=5))
    with svc.RecordingServer() as hook, svc.alertmanager(WEBHOOK_AM.format(url=hook.url)) as am, \
            am_sink([am.url]) as sink:
        sink.emit(alert)
        assert sink.flush(WAIT)
        firing = svc.wait_until(lambda: [b for b in hook.snapshot() if b["status"] == "firing"],
                                timeout=WAIT, what="firing notification")
        sink.emit(msgspec.structs.replace(alert, status="resolved", ends_at=ts(ends_at)))
        assert sink.flush(WAIT)
        svc.wait_until(lambda: not am_alerts(am.url), timeout=WAIT, what="no active alert")
        resolved = svc.wait_until(lambda: [b for b in hook.snapshot() if b["status"] == "resolved"],
                                  timeout=WAIT, what="resolved notification")
    note = firing[0]["alerts"][0]
    assert note["labels"]["alertname"] == "ModelUnauthorizedToolCall"
    assert note["labels"]["sev"] == "sev1"
    assert note["annotations"]["summary"] == alert.summary
    done = resolved[0]["alerts"][0]
    assert done["status"] == "resolved"
    assert ts(done["endsAt"]) == ts(ends_at) and ts(done["startsAt"]) == alert.starts_at
