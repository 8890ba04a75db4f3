"""detector.obs.metrics: names, types and labels; bounded cohort series; registry isolation;
the /metrics endpoint as the real Prometheus scrapes it."""

from __future__ import annotations

import random
import types
import urllib.parse
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from detector.core.events import REASONS
from detector.obs.metrics import COHORT_OTHER, Metrics, SpaceSaving, attach_faust_sensor, serve

try:  # tests/ is on sys.path under pytest's default import mode; else tests is a package
    import services as svc
except ImportError:  # pragma: no cover
    from tests import services as svc

# attribute, exposed family name, type, label names (the contract with the detection core)
EXPECTED = [
    ("events_consumed", "detector_events_consumed", "counter", ()),
    ("events_decoded", "detector_events_decoded", "counter", ()),
    ("events_rejected", "detector_events_rejected", "counter", ("reason",)),
    ("events_late", "detector_events_late", "counter", ()),
    ("corrupt_batches", "detector_kafka_corrupt_batches", "counter", ()),
    ("otlp_spans_skipped", "detector_otlp_spans_skipped", "counter", ()),
    ("windows_closed", "detector_windows_closed", "counter", ()),
    ("alerts_emitted", "detector_alerts_emitted", "counter", ("severity", "signal", "status")),
    ("alerts_active", "detector_alerts_active", "gauge", ("severity", "signal")),
    ("cohorts", "detector_cohorts", "gauge", ("state",)),
    ("consumer_lag", "detector_consumer_lag_messages", "gauge", ("partition",)),
    ("event_time_lag", "detector_event_time_lag_seconds", "gauge", ()),
    ("last_event_time", "detector_last_event_timestamp_seconds", "gauge", ()),
    ("last_consumed", "detector_last_consumed_timestamp_seconds", "gauge", ()),
    ("sink_sends", "detector_sink_sends", "counter", ("sink",)),
    ("sink_failures", "detector_sink_failures", "counter", ("sink",)),
    ("sink_dropped", "detector_sink_dropped", "counter", ("sink", "severity")),
    ("sink_queued", "detector_sink_queued_alerts", "gauge", ("sink",)),
    ("containment_calls", "detector_containment_calls", "counter", ("action", "status")),
    ("processing_seconds", "detector_processing_seconds", "histogram", ()),
    ("cohort_events", "detector_cohort_events", "counter", ("cohort",)),
    ("config_reloads", "detector_config_reloads", "counter", ("result",)),
]
#: Info metrics (one sample, labels that say what is in effect).
INFOS = {"config": "detector_config"}


def families(registry: CollectorRegistry) -> dict[str, str]:
    return {f.name: f.type for f in registry.collect()}


def cohort_series(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for family in registry.collect():
        if family.name == "detector_cohort_events":
            for s in family.samples:
                if s.name == "detector_cohort_events_total":
                    out[s.labels["cohort"]] = s.value
    return out


@pytest.mark.parametrize(("attr", "name", "kind", "labels"), EXPECTED)
def test_names_types_and_labels(attr: str, name: str, kind: str, labels: tuple[str, ...]) -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    metric = getattr(m, attr)
    assert families(registry)[name] == kind
    assert name.startswith("detector_")
    if labels:
        child = metric.labels(**dict.fromkeys(labels, "x"))  # wrong label names would raise
        with pytest.raises(ValueError):
            metric.labels(**dict.fromkeys((*labels, "extra"), "x"))
    else:
        child = metric
    {"counter": lambda: child.inc(2), "gauge": lambda: child.set(2),
     "histogram": lambda: child.observe(0.002)}[kind]()
    text = _exposition(registry)
    suffix = {"counter": "_total", "gauge": "", "histogram": "_count"}[kind]
    assert any(s.name == name + suffix for f in text_string_to_metric_families(text)
               for s in f.samples), f"{name}{suffix} not exposed"


def _exposition(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_every_metric_is_in_the_contract() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    assert set(families(registry)) == ({name for _a, name, _k, _l in EXPECTED}
                                       | set(INFOS.values()))


def test_config_info_holds_one_hash_and_reload_results_exist_at_zero() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    for result in ("applied", "unchanged", "refused", "invalid"):
        assert registry.get_sample_value("detector_config_reloads_total",
                                         {"result": result}) == 0.0
    m.config.info({"hash": "aaaa"})
    m.config.info({"hash": "bbbb"})   # a reload replaces the sample: one series, not two
    samples = [s for f in text_string_to_metric_families(_exposition(registry))
               for s in f.samples if s.name == "detector_config_info"]
    assert [(s.labels, s.value) for s in samples] == [({"hash": "bbbb"}, 1.0)]


def test_rejection_reasons_exist_at_zero() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for reason in REASONS:
        assert registry.get_sample_value("detector_events_rejected_total",
                                         {"reason": reason}) == 0.0


def test_registry_isolation() -> None:
    before = {f.name for f in REGISTRY.collect()}
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    m1, m2 = Metrics(r1), Metrics(r2)
    m1.events_consumed.inc(5)
    m2.events_consumed.inc(1)
    assert r1.get_sample_value("detector_events_consumed_total") == 5
    assert r2.get_sample_value("detector_events_consumed_total") == 1
    after = {f.name for f in REGISTRY.collect()}
    assert after == before and not any(n.startswith("detector_") for n in after)
    with pytest.raises(ValueError):  # one registry holds one set: a second is a wiring bug
        Metrics(r1)


def test_ten_thousand_distinct_cohorts_stay_within_k_plus_one_series() -> None:
    registry = CollectorRegistry()
    k = 5
    m = Metrics(registry, cohort_top_k=k, cohort_min_events=100)
    for i in range(10_000):
        m.observe_cohort(f"tenant-{i}/app/production", 1)
    series = cohort_series(registry)
    assert len(series) <= k + 1
    assert sum(series.values()) == 10_000  # nothing lost: the rest is under "other"
    assert series[COHORT_OTHER] >= 10_000 - k


def test_heavy_cohorts_get_their_own_series_and_keep_them() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, cohort_top_k=3, cohort_min_events=500)
    rng = random.Random(7)
    heavy = ["acme/support-agent/production", "globex/coder/production"]
    total = 0
    for i in range(20_000):
        if rng.random() < 0.5:
            key, n = rng.choice(heavy), rng.randint(1, 5)
        else:
            key, n = f"noise-{i}", 1
        m.observe_cohort(key, n)
        total += n
    series = cohort_series(registry)
    assert set(heavy) <= set(series), series.keys()
    assert len(series) <= 3 + 1
    assert sum(series.values()) == total
    # Once named, always named: a flood of new cohorts does not take the series away.
    for i in range(5_000):
        m.observe_cohort(f"flood-{i}", 50)
    series = cohort_series(registry)
    assert set(heavy) <= set(series) and len(series) <= 4
    assert set(m.named_cohorts) == set(series) - {COHORT_OTHER}


def test_named_cohorts_are_the_top_k_by_volume() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, cohort_top_k=10)
    rng = random.Random(3)
    weights = [1 / (rank + 1) for rank in range(500)]  # Zipf: a long tail of small cohorts
    for rank in rng.choices(range(500), weights=weights, k=100_000):
        m.observe_cohort(f"cohort-{rank}", 1)
    assert set(m.named_cohorts) == {f"cohort-{rank}" for rank in range(10)}
    assert len(cohort_series(registry)) == 11


def test_equal_cohorts_fill_k_series_when_there_are_more_than_k() -> None:
    m = Metrics(CollectorRegistry(), cohort_top_k=20, cohort_min_events=100)
    for i in range(30 * 200):
        m.observe_cohort(f"tenant-{i % 30}", 5)
    assert len(m.named_cohorts) == 20


def test_pinned_cohorts_count_toward_k() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, cohort_top_k=1, cohort_min_events=0,
                pinned_cohorts=["vip/app/production", "second/app/production"])
    m.observe_cohort("vip/app/production", 3)
    m.observe_cohort("second/app/production", 2)
    assert cohort_series(registry) == {"vip/app/production": 3.0, COHORT_OTHER: 2.0}


def test_space_saving_guarantees() -> None:
    s = SpaceSaving(4)
    rng = random.Random(1)
    truth: dict[str, int] = {}
    for _ in range(5_000):
        key = "hot" if rng.random() < 0.3 else f"k{rng.randint(0, 500)}"
        s.add(key)
        truth[key] = truth.get(key, 0) + 1
    assert len(s) <= 4
    assert s.lower_bound("hot") <= truth["hot"]  # a lower bound...
    assert s.lower_bound("hot") > s.total / 4 - s.total * 0.1  # ...that finds the heavy one


def test_alert_transitions_keep_active_consistent() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)

    def active(sev: str) -> float:
        return registry.get_sample_value("detector_alerts_active",
                                         {"severity": sev, "signal": "refusal_rate"}) or 0.0

    def emitted(sev: str, status: str) -> float:
        return registry.get_sample_value(
            "detector_alerts_emitted_total",
            {"severity": sev, "signal": "refusal_rate", "status": status}) or 0.0

    sig = "refusal_rate"
    m.alert_transition(sig, "sev3", "firing", None)   # x
    m.alert_transition(sig, "sev3", "firing", None)   # y
    assert active("sev3") == 2
    m.alert_transition(sig, "sev2", "firing", "sev3")  # x escalates
    assert (active("sev3"), active("sev2")) == (1, 1)
    m.alert_transition(sig, "sev2", "resolved", "sev2")
    m.alert_transition(sig, "sev3", "resolved", "sev3")
    assert (active("sev3"), active("sev2")) == (0, 0)
    m.alert_transition(sig, "sev3", "resolved", None)  # never seen firing
    assert active("sev3") == 0  # not negative
    assert emitted("sev3", "firing") == 2 and emitted("sev2", "firing") == 1
    assert emitted("sev2", "resolved") == 1 and emitted("sev3", "resolved") == 2


def test_signal_label_values_are_capped() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    for i in range(1_000):
        m.alert_transition(f"safety_label_{i}", "sev4", "firing", None)
    signals = {s.labels["signal"] for f in registry.collect() if f.name == "detector_alerts_active"
               for s in f.samples}
    assert len(signals) <= 201 and "other" in signals


def test_serve_picks_a_free_port_and_serves_the_registry() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.events_consumed.inc(42)
    server, port = serve(registry, port=0)
    try:
        assert port > 0
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert "detector_events_consumed_total 42.0" in body
    finally:
        server.shutdown()
        server.server_close()


def test_faust_sensor_lands_in_our_registry() -> None:
    faust = pytest.importorskip("faust")
    from faust.types import TP

    registry = CollectorRegistry()
    Metrics(registry)
    app = faust.App("metrics-test", broker="kafka://127.0.0.1:1", store="memory://")
    attach_faust_sensor(app, registry)
    app.monitor.on_message_in(TP("ai-traces", 3), 17, types.SimpleNamespace())
    assert registry.get_sample_value("faust_messages_received_total") == 1
    assert registry.get_sample_value("faust_messages_received_per_topics_partition",
                                     {"topic": "ai-traces", "partition": "3"}) == 17
    assert not any(f.name.startswith("faust_") for f in REGISTRY.collect())


PROM_SCRAPE = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: detector
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.mark.integration
def test_real_prometheus_scrapes_the_endpoint() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, cohort_top_k=2, cohort_min_events=0)
    m.events_consumed.inc(7)
    m.events_rejected.labels(reason="not_json").inc(2)
    m.observe_cohort("acme/support-agent/production", 9)
    m.processing_seconds.observe(0.003)
    server, port = serve(registry)
    try:
        with svc.prometheus(PROM_SCRAPE.replace("{port}", str(port))) as prom:
            def query(q: str) -> list[dict[str, object]]:
                url = f"{prom.url}/api/v1/query?query={urllib.parse.quote(q)}"
                return list(svc.http_json(url)["data"]["result"])

            got = svc.wait_until(lambda: query("detector_events_consumed_total"), timeout=30,
                                 what="first scrape")
            assert got[0]["value"][1] == "7"
            assert query('detector_events_rejected_total{reason="not_json"}')[0]["value"][1] == "2"
            cohorts = query("detector_cohort_events_total")
            assert {r["metric"]["cohort"] for r in cohorts} == {"acme/support-agent/production",
                                                               "other"}
            assert query("detector_processing_seconds_count")[0]["value"][1] == "1"
    finally:
        server.shutdown()
        server.server_close()
