"""`detector demo`: an embedded Tansu broker, one real worker, simulated traffic with incidents
streamed through Kafka in accelerated event time, alerts printed live, /metrics served by the
worker. Stops everything on Ctrl-C, SIGTERM or after ``--duration`` seconds, and removes its
temp folder on every exit; its children get SIGTERM if it is killed outright.

With ``--containment`` the demo also runs a feature-flag endpoint on loopback
(:mod:`detector.lab.flag_server`) and gives the worker a non-dry-run ``[[containment]]`` rule
for sev1 with a secret generated for the run: each signed call and its undo on resolution are
printed among the alerts, in event time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import math
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from detector.config import Config, Severity, load_config
from detector.core.severity import RANK
from detector.core.signals import Layout
from detector.lab.broker import BrokerError, Tansu, free_port
from detector.lab.flag_server import FlagCall, FlagServer
from detector.lab.processes import Terminated, die_with_parent, raise_on_sigterm

__all__ = ["InTimeOrder", "add_arguments", "call_line", "containment_recap", "recap",
           "row_lines", "run", "warmup_line"]

SCENARIOS = ["unauthorized_tool", "refusal_spike", "traffic_drop", "secret_leak"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=120.0,
                        help="stop after this many seconds (default 120)")
    parser.add_argument("--hours", type=float, default=2.0, help="event time to simulate")
    parser.add_argument("--rate", type=float, default=40.0,
                        help="simulated traffic, mean events per second (default 40; lower "
                             "for a slow machine)")
    parser.add_argument("--metrics-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--containment", action="store_true",
                        help="act on sev1: the worker calls a feature-flag endpoint the demo "
                             "runs on loopback (signed, not a dry run) and its undo on "
                             "resolution; the demo prints each call")


#: The demo's containment rule: a sev1 in production turns the tenant's app to safe mode (a
#: fallback model without tools) and the resolution turns it back.
CONTAINMENT_RULE = """
[[containment]]
name = "safe_mode"
severities = ["sev1"]
environments = ["production"]
dry_run = false
method = "PUT"
url = "$url/tenants/${tenant}/apps/${app}/flags/safe_mode"
body = { enabled = true, alert = "${id}", signal = "${signal}" }
undo_url = "$url/tenants/${tenant}/apps/${app}/flags/safe_mode"
undo_method = "PUT"
undo_body = { enabled = false, alert = "${id}" }
secret_file = "$secret_file"
max_attempts = 3
"""


def _config(path: Path, bootstrap: str, metrics_port: int,
            flags: tuple[str, Path] | None = None) -> Path:
    """The demo's config: the packaged one on the embedded broker, and with ``flags`` (the
    flag endpoint's URL, the secret's file) the containment rule calling it."""
    text = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")
    text = text.replace('brokers = "127.0.0.1:9092"', f'brokers = "{bootstrap}"')
    text = text.replace("idle_partition_timeout_seconds = 30",
                        "idle_partition_timeout_seconds = 3")
    text = text.replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
    text = text.replace("port = 9464", f"port = {metrics_port}")
    text = text.replace("log = true        #", "log = false       #")
    if flags is not None:
        # str.replace, not Template: the rule's own ${...} are for the worker to fill in.
        text += CONTAINMENT_RULE.replace("$url", flags[0]).replace("$secret_file",
                                                                     str(flags[1]))
    path.write_text(text, "utf-8")
    return path


SEVERITY_MEANS: dict[Severity, str] = {
    "sev1": "page now: contain, roll back, notify, preserve the traces",
    "sev2": "sustained misbehaviour in production: freeze the rollout, capture telemetry",
    "sev3": "the same before users see it (canary, staging, eval), or traffic falling away: "
            "gate the release and look",
    "sev4": "one anomalous window, unconfirmed: record and watch",
}
RULE_MEANS = {
    "unauthorized_tool_call": "an agent called a tool it is not authorized to use",
    "unapproved_side_effect": "a write or external action nobody approved",
}
TIME_COL = 21   # "2026-12-07 10:23:00  " — where a row's second line starts


def _clock(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def row_time(alert: Mapping[str, Any], clean_windows: int = 5, size: float = 60.0) -> str:
    """When, in event time, the detector knew what the row says: the offending event of a hard
    rule, the end of the latest window of a windowed alert, and for a resolution the end of
    the ``clean_windows``-th clean window after the one it ended in (at once on adoption).

    >>> row_time({"status": "resolved", "ends_at": "2026-12-07T10:02:10Z"})
    '2026-12-07T10:08:00Z'
    """
    if alert["status"] == "resolved":
        end = str(alert["ends_at"] or alert["starts_at"])
        if alert.get("resolution") == "baseline_adopted":
            return end
        t = (math.ceil(_ts(end) / size) + clean_windows) * size
        return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
    if alert.get("expected") is None or not alert.get("window"):
        return str(alert["starts_at"])
    return str(alert["window"]["end"])


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def row_lines(alert: Mapping[str, Any], width: int = 100, clean_windows: int = 5,
              size: float = 60.0) -> list[str]:
    """An alert as the demo prints it: what, where and since when on one line, then the whole
    summary wrapped at word boundaries (never cut).

    >>> a = {"status": "firing", "severity": "sev2", "signal": "refusal_rate",
    ...      "cohort": {"app": "support-agent", "environment": "production"},
    ...      "starts_at": "2026-12-07T10:20:00Z", "expected": 0.01,
    ...      "window": {"start": "2026-12-07T10:22:00Z", "end": "2026-12-07T10:23:00Z"},
    ...      "summary": "[sev2] refusal_rate above baseline in app=support-agent"}
    >>> print("\\n".join(row_lines(a, width=60)))
    2026-12-07 10:23:00  sev2   firing    refusal_rate  support-agent/production  since 10:20
                         [sev2] refusal_rate above baseline in
                         app=support-agent
    """
    when = row_time(alert, clean_windows, size)
    since = ""
    if alert["status"] == "firing" and alert["starts_at"] != when:
        since = f"  since {_clock(alert['starts_at'])[11:16]}"
    elif alert["status"] == "resolved":
        since = f"  ended {_clock(alert['ends_at'])[11:16]}"
    cohort = "/".join(alert["cohort"].values())
    head = (f"{_clock(when):19}  {alert['severity']:5}  {alert['status']:8}  "
            f"{alert['signal']}  {cohort}{since}")
    body = textwrap.wrap(str(alert["summary"]), width=width, initial_indent=" " * TIME_COL,
                         subsequent_indent=" " * TIME_COL, break_long_words=False,
                         break_on_hyphens=False)
    return [head, *body]


def warmup_line(event_time: str, windows: int, warmup: int) -> str:
    """What the demo is waiting for while the baselines learn.

    >>> warmup_line("2026-12-07T09:12:00Z", 12, 20)
    '2026-12-07 09:12:00  learning baselines: 12/20 windows (hard rules already fire)'
    >>> warmup_line("2026-12-07T09:20:00Z", 20, 20)
    '2026-12-07 09:20:00  baselines learned (20 windows): every window is scored from here'
    """
    if windows < warmup:
        return (f"{_clock(event_time)}  learning baselines: {windows}/{warmup} windows "
                "(hard rules already fire)")
    return f"{_clock(event_time)}  baselines learned ({warmup} windows): every window is scored " \
           "from here"


def call_line(event_time: str, call: FlagCall) -> str:
    """A call the flag endpoint received, as the demo prints it among the alerts.

    >>> c = FlagCall("PUT", "/tenants/t02/apps/payments-agent/flags/safe_mode", "a-274b12",
    ...              "safe_mode", False, {"enabled": True, "alert": "a-274b12"}, True)
    >>> print(call_line("2026-01-05T01:00:40Z", c))
    2026-01-05 01:00:40  contain  PUT /tenants/t02/apps/payments-agent/flags/safe_mode  signed: 204
                         {"enabled":true,"alert":"a-274b12"}
    """
    what = "undo   " if call.undo else "contain"
    answer = "signed: 204" if call.verified else "signature refused: 401"
    return (f"{_clock(event_time):19}  {what}  {call.method} {call.path}  {answer}\n"
            f"{' ' * TIME_COL}{orjson.dumps(call.body).decode()}")


def containment_recap(calls: Sequence[FlagCall], flags: Mapping[str, Any], url: str
                      ) -> list[str]:
    """The recap's lines on what the flag endpoint was asked to do.

    >>> c = FlagCall("PUT", "/f", "a-1", "safe_mode", False, {"enabled": True}, True)
    >>> u = c._replace(undo=True, body={"enabled": False})
    >>> print("\\n".join(containment_recap([c, u], {"/f": False}, "http://127.0.0.1:1")))
      containment: the flag endpoint http://127.0.0.1:1 got 1 call(s) and 1 undo(s), 2 signed
        flags left on: none
    """
    undos = sum(c.undo for c in calls)
    signed = sum(c.verified for c in calls)
    on = sorted(p for p, v in flags.items() if v)
    return [f"  containment: the flag endpoint {url} got {len(calls) - undos} call(s) and "
            f"{undos} undo(s), {signed} signed",
            f"    flags left on: {', '.join(on) or 'none'}"]


class InTimeOrder:
    """Rows held until event time has moved ``hold`` seconds past them, then given out in time
    order: alerts of a window come out after the window closes, hard-rule alerts at once.

    >>> rows = InTimeOrder(hold=60)
    >>> rows.add(100.0, "b"); rows.add(40.0, "a"); rows.add(150.0, "c")
    >>> rows.ready(now=165.0), rows.rest()
    (['a', 'b'], ['c'])
    """

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self._heap: list[tuple[float, int, Any]] = []
        self._n = 0

    def add(self, t: float, item: Any) -> None:
        heapq.heappush(self._heap, (t, self._n, item))
        self._n += 1

    def ready(self, now: float) -> list[Any]:
        out = []
        while self._heap and self._heap[0][0] <= now - self.hold:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def rest(self) -> list[Any]:
        return [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]


def _means(signal: str, safety_labels: tuple[str, ...]) -> str:
    if signal in RULE_MEANS:
        return RULE_MEANS[signal]
    described = {s.name: s.description for s in Layout(safety_labels).signals}
    if signal in described:
        return described[signal] + " off its baseline"
    return f"a {signal.replace('_', ' ')} hit (a leak: fires at once)"


def recap(alerts: Sequence[Mapping[str, Any]], planted: Sequence[Mapping[str, Any]],
          safety_labels: tuple[str, ...] = ()) -> list[str]:
    """What the demo showed: the incidents it planted and the alerts each drew, the alerts by
    severity, and what each kind of alert means.

    >>> planted = [{"scenario": "secret_leak", "signals": ["secret_leak"],
    ...             "cohort": {"app": "a", "environment": "production", "tenant": "t"},
    ...             "start": "2026-12-07T10:00:00Z"}]
    >>> alerts = [{"id": "x", "status": "firing", "severity": "sev1", "signal": "secret_leak",
    ...            "cohort": {"tenant": "t", "app": "a", "environment": "production"},
    ...            "starts_at": "2026-12-07T10:00:05Z", "expected": None}]
    >>> print("\\n".join(recap(alerts, planted)))
    What the demo showed
      planted incidents, and the first alert each drew:
        secret_leak           from 10:00:00  sev1 at 10:00:05 (secret_leak)
      alerts: 1 incident(s) (sev1 1), 1 message(s): 1 firing, 0 resolved
      what they mean:
        secret_leak                   a secret leak hit (a leak: fires at once)
        sev1  page now: contain, roll back, notify, preserve the traces
    """
    out = ["What the demo showed", "  planted incidents, and the first alert each drew:"]
    for inc in planted:
        cohort = inc["cohort"]
        drawn = sorted((row_time(a), i) for i, a in enumerate(alerts)
                       if a["status"] == "firing" and a["signal"] in inc["signals"]
                       and row_time(a) >= inc["start"][:17]
                       and all(cohort.get(k, v) == v for k, v in a["cohort"].items()))
        first = "no alert before the demo ended"
        if drawn:
            a = alerts[drawn[0][1]]
            first = f"{a['severity']} at {_clock(drawn[0][0])[11:]} ({a['signal']})"
        out.append(f"    {inc['scenario']:20}  from {_clock(inc['start'])[11:]}  {first}")
    worst: dict[str, Severity] = {}
    signals: dict[str, None] = {}
    for a in alerts:
        if a["id"] not in worst or RANK[a["severity"]] < RANK[worst[a["id"]]]:
            worst[a["id"]] = a["severity"]
        signals[a["signal"]] = None
    by_sev = {s: list(worst.values()).count(s) for s in SEVERITY_MEANS}
    firing = sum(a["status"] == "firing" for a in alerts)
    sevs = ", ".join(f"{s} {n}" for s, n in by_sev.items() if n)
    out.append(f"  alerts: {len(worst)} incident(s) ({sevs or 'none'}), {len(alerts)} message(s): "
               f"{firing} firing, {len(alerts) - firing} resolved")
    if alerts:
        out.append("  what they mean:")
        out += [f"    {s:28}  {_means(s, safety_labels)}" for s in signals]
        out += [f"    {s}  {SEVERITY_MEANS[s]}" for s, n in by_sev.items() if n]
    return out


class _Sent:
    """Event time the producer has sent up to (shared by the producer and the printer)."""

    first: float | None = None
    last: float | None = None


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _stream(bootstrap: str, lines: list[bytes], speedup: float, deadline: float,
                  sent_to: _Sent, stop: asyncio.Event) -> int:
    """Send lines in event-time order, ``speedup`` x faster than real time, until the
    deadline or ``stop``."""
    from aiokafka import AIOKafkaProducer

    from detector.core.events import decode

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await p.start()
    sent = 0
    try:
        wall0 = time.monotonic()
        for i, ln in enumerate(lines):
            evs, _ = decode(ln)
            if evs:
                ts = float(evs[0].ts)  # type: ignore[arg-type]  # decode() made it epoch seconds
                sent_to.first = ts if sent_to.first is None else sent_to.first
                ahead = (ts - sent_to.first) / speedup - (time.monotonic() - wall0)
                if ahead > 0.05:
                    await _pause(stop, ahead)
                sent_to.last = ts
            if time.monotonic() > deadline or stop.is_set():
                break
            await p.send("ai-traces", ln, partition=i % 4)
            sent += 1
    finally:
        await p.stop()
    return sent




async def _alerts(bootstrap: str, deadline: float, cfg: Config, sent: _Sent,
                  stop: asyncio.Event,
                  calls: queue.SimpleQueue[tuple[float, FlagCall]] | None = None
                  ) -> list[dict[str, Any]]:
    """Print the alerts in event-time order as they come, with the warm-up's progress and
    the calls the flag endpoint received (placed at the event time the traffic was at)."""
    from aiokafka import AIOKafkaConsumer

    size, warmup = cfg.windows.size_seconds, cfg.baselines.warmup_windows
    clean = cfg.alerting.resolve_after_clean_windows

    def show(item: str | Mapping[str, Any]) -> None:
        text = item if isinstance(item, str) else "\n".join(row_lines(item, 100, clean, size))
        print(text, flush=True)
    # A window's alerts come out once the watermark (lateness behind) has passed its end.
    rows = InTimeOrder(hold=2 * size + cfg.windows.allowed_lateness_seconds)
    c = AIOKafkaConsumer("ai-alerts", bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", metadata_max_age_ms=2000)
    await c.start()
    seen: list[dict[str, Any]] = []
    told = -1
    try:
        print(f"{'time (event time)':19}  {'sev':5}  {'status':8}  signal  cohort", flush=True)
        while time.monotonic() < deadline and not stop.is_set():
            for recs in (await c.getmany(timeout_ms=500)).values():
                for r in recs:
                    alert = orjson.loads(r.value)
                    seen.append(alert)
                    rows.add(_ts(row_time(alert, clean, size)), alert)
            while calls is not None and not calls.empty():
                t, call = calls.get_nowait()
                rows.add(t, call_line(datetime.fromtimestamp(t, UTC).isoformat(), call))
            if sent.first is None or sent.last is None:
                continue
            windows = int((sent.last - sent.first) // size)
            if windows > told and windows <= warmup and (windows % 5 == 0 or windows == warmup):
                t = sent.first + windows * size
                rows.add(t, warmup_line(datetime.fromtimestamp(t, UTC).isoformat(), windows,
                                        warmup))
                told = windows
            for item in rows.ready(sent.last):
                show(item)
        if not stop.is_set():
            for item in rows.rest():
                show(item)
    finally:
        await c.stop()
    return seen


async def _play(bootstrap: str, lines: list[bytes], speedup: float, deadline: float,
                cfg: Config, sent: _Sent, stop: asyncio.Event, wait: float,
                calls: queue.SimpleQueue[tuple[float, FlagCall]] | None = None
                ) -> list[dict[str, Any]]:
    """After ``wait`` s for the worker to join: stream the traffic and print the alerts
    until the deadline or ``stop``. The loops end at their next turn rather than being
    cancelled: an aiokafka client cancelled mid-request can leave a connection open, and the
    broker then waits out its shutdown grace period on it."""
    await _pause(stop, wait)
    if stop.is_set():
        return []
    _, seen = await asyncio.gather(_stream(bootstrap, lines, speedup, deadline, sent, stop),
                                   _alerts(bootstrap, deadline, cfg, sent, stop, calls))
    return seen


def run(args: argparse.Namespace) -> int:
    from detector.lab.simulate import simulate

    raise_on_sigterm()
    deadline = time.monotonic() + args.duration
    work = Path(tempfile.mkdtemp(prefix="detector-demo-"))
    broker = Tansu(log_dir=work)
    worker: subprocess.Popen[bytes] | None = None
    flag_server: FlagServer | None = None
    sent = _Sent()
    calls: queue.SimpleQueue[tuple[float, FlagCall]] = queue.SimpleQueue()
    try:
        broker.start()
        port = args.metrics_port or free_port()
        flags = None
        if getattr(args, "containment", False):
            secret = secrets.token_hex(32)
            (work / "flags-hmac").write_text(secret, "utf-8")
            (work / "flags-hmac").chmod(0o600)
            flag_server = FlagServer(
                secret.encode(), on_call=lambda c: calls.put((sent.last or 0.0, c))).start()
            flags = (flag_server.url, work / "flags-hmac")
            print(f"demo: containment on: sev1 in production calls the flag endpoint "
                  f"{flag_server.url} (signed with a secret made for this run)", file=sys.stderr)
        cfg = _config(work / "detector.toml", broker.bootstrap, port, flags)
        print(f"demo: broker {broker.bootstrap}; metrics http://127.0.0.1:{port}/metrics; "
              f"worker log {work / 'worker.log'}", file=sys.stderr)
        s = simulate(work / "sim", hours=args.hours, seed=7, scenarios=SCENARIOS,
                     rate=getattr(args, "rate", 40.0))
        planted = orjson.loads((work / "sim" / "labels.json").read_bytes())["incidents"]
        lines = [ln for ln in (work / "sim" / "traces.jsonl").read_bytes().split(b"\n") if ln]
        shutil.rmtree(work / "sim")   # in memory from here on: no second copy on disk
        with (work / "worker.log").open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "detector.stream.app", "--config", str(cfg)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(),
                env={**os.environ, "DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"})
        # Leave ~15 s for the worker to join; spread the event time over the rest.
        speedup = args.hours * 3600 / max(args.duration - 25.0, 10.0)
        print(f"demo: {s['events']} simulated events over {args.hours:g} h of event time, "
              f"{speedup:.0f}x faster than real time, with {len(planted)} incidents planted "
              f"({', '.join(SCENARIOS)})", file=sys.stderr)
        print(f"demo: waiting {min(12.0, args.duration / 4):.0f} s for the worker to join the "
              "broker", file=sys.stderr, flush=True)
        cfg_values = load_config(cfg, env=False)
        seen: list[dict[str, Any]] = []
        stopped_by: list[int] = []

        async def main() -> None:
            # SIGTERM and Ctrl-C end the loops (the Kafka clients then close as at the
            # deadline) and are raised once they have.
            stop, loop = asyncio.Event(), asyncio.get_running_loop()

            def on_signal(sig: int) -> None:
                stopped_by.append(sig)
                stop.set()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
            seen.extend(await _play(broker.bootstrap, lines, speedup, deadline, cfg_values,
                                    sent, stop, min(12.0, args.duration / 4),
                                    calls if flag_server is not None else None))
        asyncio.run(main())
        raise_on_sigterm()   # the closed loop left SIGTERM at its default (exit, no clean-up)
        if stopped_by:
            if stopped_by[0] == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated(signal.SIGTERM)
        labels = tuple(cfg_values.input.safety_labels)
        contained = [] if flag_server is None else containment_recap(
            flag_server.calls, flag_server.flags, flag_server.url)
        print("\n".join(["", *recap(seen, planted, labels), *contained,
                         f"  (alerts as JSON: the ai-alerts topic; /metrics was "
                         f"http://127.0.0.1:{port}/metrics)"]), flush=True)
        return 0
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 0   # `kill PID` is how a service manager stops the demo: a normal end
    except BrokerError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second kill must not cut this short
        if worker is not None and worker.poll() is None:
            worker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(20)
            if worker.poll() is None:
                worker.kill()
        broker.stop()
        if flag_server is not None:
            flag_server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m detector.lab.demo", description=__doc__)
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
