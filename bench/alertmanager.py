"""Benchmark: the Alertmanager sink against a real local Alertmanager.

Measures
  1. throughput: alerts/s from the first emit() until flush() reports every alert delivered
     (and the Alertmanager API lists them all);
  2. delay: from emit() to the alert showing in Alertmanager's GET /api/v2/alerts, one alert
     at a time, median and p99 over >= 200 distinct alerts;
  3. the whole path: from an offending event produced to Kafka, through `detector run`, to
     Alertmanager's API, over ``--incidents`` incidents (bench/paging.py).

Starts Debian's prometheus-alertmanager on a free loopback port (tests/services.py) unless
--url names a running one. Every loop is bounded in count and in time.

    python bench/alertmanager.py [--alerts 5000] [--latency-alerts 300] [--url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import msgspec  # noqa: E402
from services import alertmanager, http_json  # noqa: E402

from detector.config import AlertmanagerConfig  # noqa: E402
from detector.core.alert import Alert  # noqa: E402
from detector.core.timestamps import rfc3339 as iso  # noqa: E402
from detector.sinks.alertmanager import AlertmanagerSink, Tuning  # noqa: E402

POLL_S = 0.0005  # between GETs while waiting for one alert to show
PER_ALERT_TIMEOUT_S = 10.0
TOTAL_TIMEOUT_S = 300.0


def make_alert(i: int, signal: str, severity: str = "sev2") -> Alert:
    now = datetime.now(UTC)
    return msgspec.convert({
        "id": f"bench-{signal}-{i}", "status": "firing", "severity": severity, "signal": signal,
        "cohort": {"tenant": f"t{i}", "app": "bench", "environment": "production"},
        "starts_at": iso(now - timedelta(minutes=1)), "ends_at": None,
        "observed": 0.4, "expected": 0.05, "score": 7.0, "threshold": 5.0,
        "window": {"start": iso(now - timedelta(minutes=1)), "end": iso(now), "events": 500},
        "suspected_change": None, "evidence": {"trace_ids": ["0af7651916cd43dd8448eb211c80319c"]},
        "summary": "benchmark alert", "runbook_url": None, "actions": [], "persistence": 1,
    }, Alert)


@contextlib.contextmanager
def target(url: str | None) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    if shutil.which("prometheus-alertmanager") is None:
        sys.exit("prometheus-alertmanager not installed: run .ci/install-services.sh")
    with alertmanager() as am:
        yield am.url


def count_alerts(url: str, alertname: str) -> int:
    query = urllib.parse.quote(f'alertname="{alertname}"')
    return len(http_json(f"{url}/api/v2/alerts?filter={query}", timeout=30))


def throughput(url: str, n: int, batch: int) -> tuple[float, float]:
    config = AlertmanagerConfig(urls=[url], cohort_labels=["tenant", "app"],
                                max_queue=max(n, 1), timeout_seconds=30)
    with AlertmanagerSink(config, tuning=Tuning(max_batch=batch)) as sink:
        t0 = time.perf_counter()
        for i in range(n):
            sink.emit(make_alert(i, "bench_throughput"))
        t_emit = time.perf_counter() - t0
        if not sink.flush(TOTAL_TIMEOUT_S):
            raise SystemExit("flush timed out")
        elapsed = time.perf_counter() - t0
    listed = count_alerts(url, "ModelBenchThroughput")
    if listed != n:
        raise SystemExit(f"Alertmanager lists {listed} of {n} alerts")
    return n / elapsed, t_emit / n * 1e6


def latency(url: str, n: int) -> list[float]:
    config = AlertmanagerConfig(urls=[url], cohort_labels=["tenant"], timeout_seconds=10)
    delays: list[float] = []
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    with AlertmanagerSink(config) as sink:
        for i in range(n):
            signal = f"bench_latency_{i}"  # a distinct alertname per alert: a cheap API filter
            query = urllib.parse.quote(f'alertname="ModelBenchLatency{i}"')
            t0 = time.perf_counter()
            sink.emit(make_alert(i, signal))
            give_up = time.perf_counter() + PER_ALERT_TIMEOUT_S
            while True:
                if http_json(f"{url}/api/v2/alerts?filter={query}", timeout=10):
                    delays.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() > give_up or time.monotonic() > deadline:
                    raise SystemExit(f"alert {i} never showed")
                time.sleep(POLL_S)
    return delays


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", type=int, default=5000, help="alerts for the throughput run")
    ap.add_argument("--batch", type=int, default=500, help="sink max_batch")
    ap.add_argument("--latency-alerts", type=int, default=300, help=">= 200 distinct alerts")
    ap.add_argument("--url", help="a running Alertmanager (default: start one on loopback)")
    ap.add_argument("--incidents", type=int, default=200,
                    help="offending events sent through Kafka and the worker (0: skip)")
    args = ap.parse_args(argv)
    if args.latency_alerts < 200:
        ap.error("--latency-alerts must be >= 200")
    # A fresh Alertmanager per phase: the delay phase must not poll a store that already
    # holds the throughput phase's thousands of alerts (every GET walks the whole store).
    with target(args.url) as url:
        rate, emit_us = throughput(url, args.alerts, args.batch)
        print(f"throughput: {args.alerts} alerts delivered at {rate:,.0f} alerts/s "
              f"(max_batch {args.batch}); emit() {emit_us:.1f} us/alert")
    with target(args.url) as url:
        delays = sorted(latency(url, args.latency_alerts))
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print(f"emit -> visible in GET /api/v2/alerts over {len(delays)} alerts: "
              f"median {statistics.median(delays) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
              f"max {delays[-1] * 1e3:.2f} ms")
    if args.incidents:
        # The whole path, as an SRE sees it: offending event -> Kafka -> worker -> sink ->
        # Alertmanager's API (bench/paging.py, also runnable on its own).
        import paging

        paging.report(paging.measure(args.incidents))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
