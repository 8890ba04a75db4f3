"""`detector incident ALERT_ID --alerts FILE | --kafka`: a first notification draft and a
postmortem skeleton, in Markdown, from one alert's emissions in a JSON Lines file of alerts or
in the alerts topic.

The notification follows the runbook's shape (what happened, who is affected, what we are
doing, when the next update comes); the postmortem lists the trigger, the severity and why,
the scope, a timeline from the emissions and containment results, the evidence trace ids, the
suspected change, a category to choose and follow-ups. Everything comes from the alerts
(ids, cohort values, numbers): no prompt or response text exists to include. The output
depends on the emissions only, so the same alerts give the same Markdown, from a file or
from Kafka.

``--kafka`` reads the config's ``kafka.alerts_topic`` (or ``--topic``) with
:mod:`detector.lab.kafka_range`: records stamped from ``--since`` (default: 30 days back) to
``--until`` (default: now), no consumer group joined, nothing committed, partitions merged
by record time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from detector.config import ConfigError, load_config
from detector.core.alert import Alert, decode_alert
from detector.core.lifecycle import change_text
from detector.core.timestamps import rfc3339
from detector.lab.kafka_range import KafkaRange, KafkaRangeError, parse_time, read_range

__all__ = ["add_arguments", "emissions", "emissions_in", "render", "run"]

#: When the next update is due after the first notification, by severity.
NEXT_UPDATE = {"sev1": "30 minutes", "sev2": "1 hour", "sev3": "4 hours",
               "sev4": "the next working day"}
MEANING = {"sev1": "a harmful or unauthorized action, or a data leak: contain, roll back, "
                   "notify, preserve logs",
           "sev2": "behaviour off its baseline for several windows where users are served: "
                   "freeze the rollout, disable risky tools, capture telemetry",
           "sev3": "the same before users see it (canary, staging, eval): gate the release",
           "sev4": "a single anomalous window, unconfirmed: record and watch"}
CATEGORY_OF = {"prompt_version": "prompt", "model_version": "model", "policy_version": "policy"}
CATEGORIES = ("prompt", "model", "tool", "policy", "data")


#: How far back ``--kafka`` reads the alerts topic without ``--since``.
KAFKA_LOOKBACK_S = 30 * 86400
#: An alert record larger than this in the topic is not one the detector wrote.
MAX_ALERT_BYTES = 1 << 20


def emissions_in(lines: Iterable[bytes | object], alert_id: str, where: str) -> list[Alert]:
    """The alert's emissions in the order given; lines of other alerts are not decoded, and
    anything not bytes (an oversized record read from Kafka) is passed over. A line that
    names the id but is not an alert is a ValueError naming ``where`` and its line number."""
    out = []
    needle = f'"id":"{alert_id}"'.encode()
    for n, line in enumerate(lines, 1):
        if not isinstance(line, bytes) or needle not in line.replace(b'": "', b'":"'):
            continue
        try:
            a = decode_alert(line)
        except msgspec.DecodeError as e:
            raise ValueError(f"{where}:{n}: not an alert ({e})") from None
        if a.id == alert_id:
            out.append(a)
    return out


def emissions(path: Path, alert_id: str) -> list[Alert]:
    """The alert's emissions in file order."""
    with path.open("rb") as f:
        return emissions_in(f, alert_id, str(path))


def _from_kafka(args: argparse.Namespace, alert_id: str) -> tuple[list[Alert], str]:
    """The alert's emissions in the alerts topic, and where they were looked for. Raises
    ValueError for a bad argument or config, KafkaRangeError when the topic cannot be read."""
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise ValueError(f"config error: {e}") from None
    until = parse_time(args.until) if args.until else int(time.time() * 1000)
    since = parse_time(args.since) if args.since else until - KAFKA_LOOKBACK_S * 1000
    if until <= since:
        raise ValueError(f"--until {args.until} is not after --since {args.since}")
    rng = KafkaRange(args.brokers or config.kafka.brokers,
                     args.topic or config.kafka.alerts_topic, since, until)
    where = f"topic {rng.topic} on {rng.brokers}"
    return emissions_in(read_range(rng, config, MAX_ALERT_BYTES), alert_id, where), where


def _cohort(a: Alert) -> str:
    return ", ".join(f"{k}={v}" for k, v in a.cohort.items()) or "(all traffic)"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _timeline(es: list[Alert]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [(rfc3339(es[0].starts_at), "anomalous behaviour begins")]
    prev: str | None = None
    for a in es:
        if a.status == "resolved":
            why = {"baseline_adopted": "the baseline adopted the new level"}.get(
                a.resolution or "", "clean windows")
            rows.append((rfc3339(a.ends_at or a.starts_at), f"resolved ({why})"))
        elif prev is None:
            rows.append((a.window.end, f"alert fires at {a.severity} ({a.persistence} "
                                       "anomalous window(s))"))
        else:
            rows.append((a.window.end, f"escalated from {prev} to {a.severity}"))
        prev = a.severity
    seen: set[tuple[str, str]] = set()
    for a in es:
        for c in a.containment:
            if (c.action, c.status) not in seen:
                seen.add((c.action, c.status))
                rows.append((c.at, f"containment `{c.action}`: {c.status} (wall clock)"))
    return rows


def render(es: list[Alert]) -> str:
    """The Markdown for one alert's emissions (oldest first)."""
    first, last = es[0], es[-1]
    firing = [a for a in es if a.status == "firing"]
    top = firing[-1] if firing else last
    sev = top.severity
    sus = last.suspected_change
    change = change_text(sus.field, sus.baseline, sus.now) if sus else None
    resolved = last.status == "resolved"
    state = "resolved" if resolved else "ongoing"
    lines = [f"# Incident {first.id}: {first.signal} in {_cohort(first)}", "",
             f"{sev}, {state}. Drafts from the detector's alerts: check every line before "
             "it goes out.", "",
             "## First notification (draft)", "",
             f"**What happened.** Since {rfc3339(first.starts_at)}, `{top.signal}` in "
             f"{_cohort(top)} is {_num(top.observed)} against {_num(top.expected)} expected "
             f"(score {top.score:+.1f}, threshold {_num(top.threshold)})"
             + (f"; it resolved at {rfc3339(last.ends_at)}." if resolved and last.ends_at
                else "."),
             "",
             f"**Who is affected.** Traffic of {_cohort(top)}"
             + (f" and {top.grouped_cohorts} cohorts below it" if top.grouped_cohorts else "")
             + ". Customers and users in that scope: to be confirmed.", "",
             "**What we are doing.** "
             + ("; ".join(top.actions) if top.actions else "Investigating")
             + (f". First rollback candidate: {change}" if change else "") + "."]
    acts = {c.action: c.status for c in last.containment}
    if acts:
        lines.append("Containment: " + ", ".join(f"`{k}` {v}" for k, v in acts.items()) + ".")
    lines += ["", f"**Next update.** Within {NEXT_UPDATE[sev]}.", "",
              "## Postmortem (skeleton)", "",
              "### Trigger", "",
              f"`{top.signal}`: {top.summary}", "",
              "### Severity and why", "",
              f"{sev}: {MEANING[sev]}. Persistence {top.persistence} window(s), score "
              f"{top.score:+.1f} against threshold {_num(top.threshold)}.", "",
              "### Scope", "",
              f"- {_cohort(top)}"
              + (f" ({top.grouped_cohorts} child cohorts)" if top.grouped_cohorts else ""), "",
              "### Timeline (UTC, event time unless noted)", "",
              "| time | what |", "| --- | --- |"]
    lines += [f"| {t} | {what} |" for t, what in _timeline(es)]
    lines += ["", "### Evidence", ""]
    ids = list(dict.fromkeys(t for a in es for t in a.evidence.trace_ids))
    lines += [f"- `{t}`" for t in ids] or ["- (no trace ids)"]
    links = [(what, url) for what, url in (("dashboard", last.dashboard_url),
                                           ("source", last.generator_url)) if url]
    lines += [f"- {what}: <{url}>" for what, url in links]
    lines += ["", "### Suspected change", "", change or "None named by the detector.", "",
              "### Category", ""]
    hint = CATEGORY_OF.get(sus.field) if sus else None
    lines += [f"- [ ] {c}-driven" + (" (the suspected change points here)" if c == hint
                                      else "") for c in CATEGORIES]
    lines += ["", "### Follow-ups", "", "- [ ] root cause confirmed and fixed",
              "- [ ] rollback or fix verified in the affected cohorts",
              "- [ ] detection: threshold, severity rule or hard rule to revisit",
              "- [ ] containment: kill switch or hook to add or adjust", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("alert_id", help="the alert's id (a-…)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--alerts", type=Path,
                     help="JSON Lines file of alerts (replay --alerts-out, sinks.jsonl)")
    src.add_argument("--kafka", action="store_true",
                     help="read the alerts topic instead (no consumer group, no commits)")
    g = parser.add_argument_group("with --kafka")
    g.add_argument("--config", help="config file for kafka.* (default: the packaged one; "
                   "DETECTOR_KAFKA_* apply)")
    g.add_argument("--brokers", help="bootstrap servers (default: the config's kafka.brokers)")
    g.add_argument("--topic", help="topic (default: the config's kafka.alerts_topic)")
    g.add_argument("--since", help="ISO 8601, by record time (default: 30 days back)")
    g.add_argument("--until", help="ISO 8601, exclusive (default: now)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.kafka:
            es, where = _from_kafka(args, args.alert_id)
        else:
            es, where = emissions(args.alerts, args.alert_id), str(args.alerts)
    except (OSError, ValueError, KafkaRangeError) as e:
        print(f"detector incident: {e}", file=sys.stderr)
        return 2
    if not es:
        print(f"detector incident: no alert {args.alert_id} in {where}", file=sys.stderr)
        return 1
    sys.stdout.write(render(es))
    return 0
