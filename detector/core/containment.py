"""Containment claims: which ``[[containment]]`` rules an alert triggers, recorded in the
alert's stage-2 state before any call is made.

The claim lives on the :class:`~detector.core.lifecycle.Incident` (``containment``: action →
[status, wall-clock seconds]), which stage 2 writes to its changelog-backed table with the rest
of the alert state in the same step as the emission. A worker that takes the route key over
loads the claim and does not call again: once per alert id and action, across restarts. The
HTTP call itself is made by :mod:`detector.sinks.containment`; this module decides and records
and imports no network code.

Statuses (the alert's ``containment[].status``): ``dry_run`` (logged, nothing called),
``pending`` (queued), ``ok``, ``failed`` (after its bounded retries), ``dropped`` (the call
queue was full); on resolution the same with an ``undo_`` prefix for rules with an undo call.

>>> from detector.config import ContainmentRule
>>> r = ContainmentRule(name="x", url="http://flags", severities=["sev1"],
...                     environments=["production"], match={"tenant": "acme"})
>>> matches(r, "sev1", "unauthorized_tool_call", {"tenant": "acme", "environment": "production"})
True
>>> matches(r, "sev2", "unauthorized_tool_call", {"tenant": "acme", "environment": "production"})
False
>>> matches(r, "sev1", "unauthorized_tool_call", {"tenant": "other"})
False
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from detector.config import ContainmentRule
from detector.core.alert import Alert, ContainmentResult
from detector.core.lifecycle import Incident, Key, Lifecycle
from detector.core.signals import matches as signal_matches
from detector.core.timestamps import rfc3339

__all__ = ["STATUSES", "Call", "matches", "plan", "record"]

#: Every status an action can have (the metric's ``status`` label takes these only).
STATUSES = ("dry_run", "pending", "ok", "failed", "dropped")
STATUSES_ALL = STATUSES + tuple(f"undo_{s}" for s in STATUSES)
#: The do call went out (or may have): its undo is due at resolution.
_UNDO_AFTER = frozenset({"pending", "ok", "failed"})


class Call(NamedTuple):
    """One HTTP call to make (or, for a dry-run rule, to log): the rule, the alert as
    emitted, and whether it is the undo."""

    rule: ContainmentRule
    alert: Alert
    undo: bool


def matches(rule: ContainmentRule, severity: str, signal: str, cohort: dict[str, str]) -> bool:
    """Whether an alert of this severity, signal and cohort triggers ``rule`` (never sev4)."""
    env = cohort.get("environment", "production")
    return (severity != "sev4" and severity in rule.severities
            and signal_matches(signal, rule.signals)
            and ("*" in rule.environments or env in rule.environments)
            and all(cohort.get(k) == v for k, v in rule.match.items()))


def _incident(life: Lifecycle, alert_id: str) -> tuple[Key, Incident] | None:
    for key, inc in life.active.items():
        if inc.id == alert_id:
            return key, inc
    return None


def _results(entries: dict[str, list[object]]) -> list[ContainmentResult]:
    return [ContainmentResult(action=a, status=str(st), at=rfc3339(float(at)))  # type: ignore[arg-type]
            for a, (st, at) in entries.items()]


def plan(life: Lifecycle, alert: Alert, rules: list[ContainmentRule], now: float
         ) -> tuple[Alert, list[Call]]:
    """Claim the actions ``alert`` triggers and not yet claimed for its id; return the alert
    as it is to be emitted (with its ``containment``) and the calls to make.

    Firing: each matching rule is claimed once per alert id, as ``dry_run`` or ``pending``.
    Resolved (the incident has left the state; its claims came with the alert): each action
    that went out and has an ``undo_url`` gets its undo, once, since a resolution is emitted
    once."""
    if not rules:
        return alert, []
    by_name = {r.name: r for r in rules}
    calls: list[Call] = []
    if alert.status == "firing":
        found = _incident(life, alert.id)
        if found is None:
            return alert, []
        inc = found[1]
        for r in rules:
            if r.name in inc.containment or not matches(r, alert.severity, alert.signal,
                                                        alert.cohort):
                continue
            inc.containment[r.name] = ["dry_run" if r.dry_run else "pending", now]
            calls.append(Call(r, alert, False))
        if not inc.containment:
            return alert, []
        entries = inc.containment
    else:
        entries = {c.action: [c.status, _seconds(c.at)] for c in alert.containment}
        for name, entry in entries.items():
            rule = by_name.get(name)
            if rule is None or rule.undo_url is None:
                continue
            if entry[0] == "dry_run":
                entries[name] = ["undo_dry_run", now]
            elif entry[0] in _UNDO_AFTER:
                entries[name] = ["undo_pending", now]
            else:
                continue
            calls.append(Call(rule, alert, True))
        if not entries:
            return alert, []
    out = msgspec.structs.replace(alert, containment=_results(entries))
    return out, [c._replace(alert=out) for c in calls]


def record(life: Lifecycle, alert_id: str, action: str, status: str, at: float) -> Key | None:
    """A call's outcome onto its alert's state; the key of the incident it changed, or None
    when the alert has resolved meanwhile (the outcome is then in logs and metrics only)."""
    found = _incident(life, alert_id)
    if found is None or action not in found[1].containment:
        return None
    found[1].containment[action] = [status, at]
    return found[0]


def _seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()
