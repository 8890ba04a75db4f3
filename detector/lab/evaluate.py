"""Score the detector's alerts against the labels :mod:`detector.lab.simulate` wrote.

An alert is the set of records sharing one ``id``. Its detection time is the ``window.end`` of
its first ``firing`` record (``starts_at`` when that record has no window); its severity is
the most severe over all its records. It matches an incident when its signal is one of the
incident's signals (any signal for a benign change that names none), its cohort is compatible
(keys present in both agree, so an app-wide alert may match a tenant's incident and vice
versa) and it was detected within [start - 1 window, end + 3 windows]. Alerts matching no
incident, or only a benign one, are false alerts. Such an alert on a benign change is also a
violation when it is more severe than the label's ``max_severity`` (sev4 when absent: no
page) or fires longer than its ``max_firing_seconds``: from the end of its first firing
window to its ``ends_at`` (the end of the input when it never resolves).

Time to detect is reported twice: ``ttd_seconds`` from the incident's start, and
``ttd_windows`` (the "within 3 windows" criterion) from its ``drift_point`` when the label has
one: the centre of the signal's transition, where river's ``ConceptDriftStream`` puts a
gradual drift. For a step it is the start; a ramp or a lagging signal moves it later.

>>> labels = {"start": "2026-01-05T00:00:00Z", "end": "2026-01-05T02:00:00Z",
...           "window_hint_seconds": 60, "incidents": [
...     {"id": "inc-01", "scenario": "refusal_spike", "kind": "drift",
...      "signals": ["refusal_rate"], "cohort": {"tenant": "t01", "app": "a",
...      "environment": "production"}, "start": "2026-01-05T01:00:00Z",
...      "end": "2026-01-05T01:15:00Z", "expected_severity": "sev2", "suspected_change": None}]}
>>> alert = {"id": "x1", "status": "firing", "severity": "sev2", "signal": "refusal_rate",
...          "cohort": {"app": "a", "environment": "production"},
...          "starts_at": "2026-01-05T01:01:00Z",
...          "window": {"start": "2026-01-05T01:01:00Z", "end": "2026-01-05T01:02:00Z"}}
>>> r = evaluate(labels, [alert])
>>> r["incidents"][0]["ttd_seconds"], r["incidents"][0]["ttd_windows"], r["summary"]["recall"]
(120.0, 2, 1.0)
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from detector.core.timestamps import rfc3339

__all__ = ["add_arguments", "evaluate", "render", "run"]

SEVERITIES: Final = ("sev1", "sev2", "sev3", "sev4")
_RANK: Final = {s: n for n, s in enumerate(SEVERITIES)}  # lower is more severe
AT_EVENT_TOLERANCE_S: Final = 0.001  # epoch floats round-trip to within a millisecond
_INCIDENT_KEYS: Final = ("id", "kind", "signals", "cohort")


def _time(value: object) -> datetime:
    """An RFC 3339 string (or epoch seconds) as an aware datetime; naive means UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC)
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    ts = datetime.fromisoformat(value)
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass
class _Alert:
    id: str
    signal: str
    cohort: dict[str, str]
    detected: datetime
    severity: str
    suspected_change: dict[str, Any] | None
    ended: datetime | None = None  # when it resolved; None while still firing
    compared: dict[str, Any] | None = None  # a canary gap's signal and other cohort


def _ended(recs: list[dict[str, Any]]) -> datetime | None:
    """The last resolution of an alert: its ``ends_at`` (or window end) if it resolved."""
    ends = [r.get("ends_at") or (r.get("window") or {}).get("end") or r.get("starts_at")
            for r in recs if r.get("status") == "resolved"]
    return max(map(_time, ends)) if ends else None


def _collect(records: list[dict[str, Any]]) -> list[_Alert]:
    """One :class:`_Alert` per id, in order of first appearance."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise ValueError(f"alert record {n} is not an object")
        for key in ("id", "signal", "cohort", "severity"):
            if key not in rec:
                raise ValueError(f"alert record {n} has no {key!r}")
        if rec["severity"] not in _RANK or not isinstance(rec["cohort"], dict):
            raise ValueError(f"alert record {n}: bad severity or cohort")
        grouped.setdefault(str(rec["id"]), []).append(rec)
    alerts = []
    for aid, recs in grouped.items():
        first = next((r for r in recs if r.get("status", "firing") == "firing"), recs[0])
        window = first.get("window") or {}
        when = window.get("end") if isinstance(window, dict) else None
        if when is None:
            when = first.get("starts_at")
        if when is None:
            raise ValueError(f"alert {aid!r} has neither window.end nor starts_at")
        change = next((r["suspected_change"] for r in recs if r.get("suspected_change")), None)
        alerts.append(_Alert(aid, str(first["signal"]), first["cohort"], _time(when),
                             min((r["severity"] for r in recs), key=_RANK.__getitem__),
                             change, _ended(recs), first.get("compared")))
    return alerts


def _compatible(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def _matches(alert: _Alert, inc: dict[str, Any], window: float) -> bool:
    # A canary gap is found by the signal it compared, on either of its two cohorts.
    cmp = alert.compared if isinstance(alert.compared, dict) else None
    signal = str(cmp.get("signal")) if cmp and alert.signal == "canary_gap" else alert.signal
    cohorts = [alert.cohort] + ([cmp["cohort"]] if cmp and isinstance(cmp.get("cohort"), dict)
                                else [])
    if (inc["kind"] != "benign" or inc["signals"]) and signal not in inc["signals"]:
        return False
    if not any(_compatible(c, inc["cohort"]) for c in cohorts):
        return False
    lo = (inc["_start"] - alert.detected).total_seconds()
    hi = (alert.detected - inc["_end"]).total_seconds()
    return lo <= window and hi <= 3 * window


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def evaluate(labels: dict[str, Any], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Score ``alerts`` (alert records, any order of ids) against ``labels``; a pure function.

    Raises ValueError when either input lacks what scoring needs.
    """
    try:
        window = float(labels.get("window_hint_seconds", 60))
        hours = (_time(labels["end"]) - _time(labels["start"])).total_seconds() / 3600.0
        incidents = [dict(i, _start=_time(i["start"]), _end=_time(i["end"]))
                     for i in labels["incidents"]]
        for i in incidents:
            missing = [k for k in _INCIDENT_KEYS if k not in i]
            if missing:
                raise KeyError(f"{i.get('id', '?')}: {', '.join(missing)}")
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"labels lack a needed field: {e}") from None
    found = _collect(alerts)
    matched: dict[str, list[_Alert]] = {i["id"]: [] for i in incidents}
    true_ids: set[str] = set()
    benign_ids: set[str] = set()
    for a in found:
        for inc in incidents:
            if _matches(a, inc, window):
                matched[inc["id"]].append(a)
                (benign_ids if inc["kind"] == "benign" else true_ids).add(a.id)
    end = _time(labels["end"])
    rows = [_row(inc, matched[inc["id"]], window, true_ids, end) for inc in incidents]
    false = [a for a in found if a.id not in true_ids]
    violations = sorted({aid for r in rows for aid in r.get("violating_alert_ids", ())})
    scored = [r for r in rows if r["kind"] != "benign"]
    benign = [r for r in rows if r["kind"] == "benign"]
    drift = [r for r in scored if r["kind"] == "drift"]
    hard = [r for r in scored if r["kind"] == "hard_rule"]
    sev = [r for r in scored if r["severity_ok"] is not None]
    chg = [r for r in scored if r["suspected_change_ok"] is not None]
    detected = sum(r["detected"] for r in scored)
    return {
        "window_seconds": window,
        "hours": hours,
        "incidents": rows,
        "summary": {
            "incidents": len(scored),
            "detected": detected,
            "recall": _ratio(detected, len(scored)),
            "drift_incidents": len(drift),
            "drift_detected": sum(r["detected"] for r in drift),
            "drift_within_3_windows": sum(r["detected"] and r["ttd_windows"] <= 3 for r in drift),
            "severity_checked": len(sev),
            "severity_correct": sum(r["severity_ok"] for r in sev),
            "severity_accuracy": _ratio(sum(r["severity_ok"] for r in sev), len(sev)),
            "suspected_change_checked": len(chg),
            "suspected_change_correct": sum(r["suspected_change_ok"] for r in chg),
            "hard_rule_incidents": len(hard),
            "hard_rule_detected": sum(r["detected"] for r in hard),
            "hard_rule_at_event": sum(bool(r["at_event"]) for r in hard),
            "alerts": len(found),
            "false_alerts": len(false),
            "false_alerts_per_hour": len(false) / hours if hours > 0 else None,
            "false_alerts_by_severity": {s: sum(a.severity == s for a in false)
                                         for s in SEVERITIES},
            "false_alert_ids": [a.id for a in false],
            "benign_violations": violations,
            "benign_changes": len(benign),
            "benign_changes_ok": sum(not r["benign_violation"] for r in benign),
        },
    }


def _firing_s(a: _Alert, end: datetime) -> float:
    return max(0.0, ((a.ended or end) - a.detected).total_seconds())


def _row(inc: dict[str, Any], hits: list[_Alert], window: float, true_ids: set[str],
         end: datetime) -> dict[str, Any]:
    """One incident's line of the report (``end``: of the input, for alerts still firing)."""
    first = min(hits, key=lambda a: a.detected, default=None)
    worst = min((a.severity for a in hits), key=_RANK.__getitem__, default=None)
    benign = inc["kind"] == "benign"
    ttd = (first.detected - inc["_start"]).total_seconds() if first else None
    # Windows count from the drift point (the centre of the signal's transition; the start
    # for a step): a ramp has no onset to be detected within three windows of.
    point = _time(inc["drift_point"]) if inc.get("drift_point") else inc["_start"]
    late = (first.detected - point).total_seconds() if first else None
    expected = inc.get("expected_severity")
    want = inc.get("suspected_change")
    change_ok = None
    named = [None if not a.suspected_change else
             f"{a.suspected_change.get('field')} {a.suspected_change.get('now')}" for a in hits]
    if want and hits and not benign:
        # Every alert of the incident, at every cohort level, must name the labelled value;
        # one that starts after the incident is over (a rollback's aftermath, when the value
        # is gone) is listed but not held to it.
        during = [n for a, n in zip(hits, named, strict=True)
                  if (a.detected - inc["_end"]).total_seconds() <= window] or named
        change_ok = all(n == f"{want['field']} {want['now']}" for n in during)
    extra: dict[str, Any] = {}
    if benign:  # alerts a real incident explains are not the benign change's
        own = [a for a in hits if a.id not in true_ids]
        cap, limit = inc.get("max_severity") or "sev4", inc.get("max_firing_seconds")
        bad = [a.id for a in own if _RANK[a.severity] < _RANK[cap]
               or (limit is not None and _firing_s(a, end) > limit)]
        extra = {"allowed_severity": cap, "allowed_firing_seconds": limit,
                 "longest_firing_seconds": max((_firing_s(a, end) for a in own), default=None),
                 "violating_alert_ids": bad}
    return {
        "id": inc["id"], "scenario": inc.get("scenario"), "kind": inc["kind"],
        "cohort": inc["cohort"], "signals": inc["signals"],
        "start": rfc3339(inc["_start"]), "end": rfc3339(inc["_end"]),
        "detected": bool(hits) and not benign,
        "alert_ids": [a.id for a in hits],
        "ttd_seconds": ttd,
        "drift_point": rfc3339(point),
        "ttd_windows": max(0, math.ceil(late / window)) if late is not None else None,
        "expected_severity": expected,
        "max_severity": worst,
        "severity_ok": (worst == expected) if hits and expected and not benign else None,
        "suspected_change_ok": change_ok,
        "suspected_changes_named": named,
        "at_event": (abs(ttd) <= AT_EVENT_TOLERANCE_S if ttd is not None else False)
        if inc["kind"] == "hard_rule" else None,
        "benign_violation": bool(extra.get("violating_alert_ids")),
        **extra,
    }


def _cohort(c: dict[str, Any]) -> str:
    return "/".join(str(c.get(k, "*")) for k in ("tenant", "app", "environment"))


def _pct(num: int, den: int) -> str:
    return f"{num}/{den} ({100.0 * num / den:.0f}%)" if den else "0/0 (-)"


def render(report: dict[str, Any]) -> str:
    """The report as an aligned plain-text table and summary lines."""
    yes_no = {True: "yes", False: "no", None: "-"}
    head = ("id", "scenario", "cohort", "detected", "ttd_s", "win", "expected", "got", "change")
    lines = [head]
    for r in report["incidents"]:
        if r["kind"] == "benign":
            det = "VIOLATED" if r["benign_violation"] else "ok"
            if r["longest_firing_seconds"] is not None:
                det += f" (fired {r['longest_firing_seconds'] / 60:.0f} min)"
        else:
            det = "yes" if r["detected"] else "NO"
            if r["at_event"] is not None and r["detected"]:
                det += " (at event)" if r["at_event"] else " (late)"
        ttd = r["ttd_seconds"]
        lines.append((r["id"], str(r["scenario"]), _cohort(r["cohort"]), det,
                      "-" if ttd is None or r["kind"] == "benign" else f"{ttd:.0f}",
                      "-" if ttd is None or r["kind"] == "benign" else str(r["ttd_windows"]),
                      r["expected_severity"] or "-", r["max_severity"] or "-",
                      yes_no[r["suspected_change_ok"]]))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
           for row in lines]
    s = report["summary"]
    per_hour = s["false_alerts_per_hour"]
    by_sev = ", ".join(f"{k} {v}" for k, v in s["false_alerts_by_severity"].items())
    out += [
        "",
        "recall: " + _pct(s["detected"], s["incidents"]),
        "drift detected within 3 windows: "
        + _pct(s["drift_within_3_windows"], s["drift_incidents"]),
        "severity accuracy: " + _pct(s["severity_correct"], s["severity_checked"]),
        "suspected change named: "
        + _pct(s["suspected_change_correct"], s["suspected_change_checked"]),
        "hard rules alerted at the offending event: "
        + _pct(s["hard_rule_at_event"], s["hard_rule_incidents"]),
        f"false alerts: {s['false_alerts']} of {s['alerts']}"
        + (f" ({per_hour:.2f}/h)" if per_hour is not None else "") + f": {by_sev}",
        f"benign changes without a violation: {s['benign_changes_ok']}/{s['benign_changes']}",
        f"benign-change violations: {len(s['benign_violations'])}"
        + (f" ({', '.join(s['benign_violations'])})" if s["benign_violations"] else ""),
    ]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, required=True, help="labels.json from simulate")
    parser.add_argument("--alerts", type=Path, required=True,
                        help="JSON Lines of alert records (shared/schema/alert.schema.json)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _read_alerts(path: Path) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not JSON ({e})") from None
    return records


def run(args: argparse.Namespace) -> int:
    try:
        labels = orjson.loads(args.labels.read_bytes())
        if not isinstance(labels, dict):
            raise ValueError(f"{args.labels}: not a JSON object")
        report = evaluate(labels, _read_alerts(args.alerts))
    except orjson.JSONDecodeError as e:
        print(f"evaluate: {args.labels} is not JSON ({e})", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m detector.lab.evaluate", description=__doc__)
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
