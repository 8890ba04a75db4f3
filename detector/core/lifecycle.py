"""Alerts: the contract in ``shared/schema/alert.md``, stable ids, and the lifecycle.

An alert is emitted when it starts firing, again when its severity changes, and once when it
resolves (after ``resolve_after_clean_windows`` clean windows; while firing, hysteresis in
scoring keeps a dip just under the threshold from resolving it, which suppresses flapping).
The id fingerprints (signal, cohort, start window), so replaying the same events yields the
same ids.

>>> c = {"app": "a", "environment": "production"}
>>> alert_id("refusal_rate", c, 0.0) == alert_id("refusal_rate", dict(reversed(c.items())), 0.0)
True
>>> alert_id("refusal_rate", c, 0.0) == alert_id("refusal_rate", c, 60.0)
False
"""

from __future__ import annotations

import hashlib
from typing import Any

from detector.config import Config, Severity
from detector.core.alert import (
    Alert,
    Compared,
    ContainmentResult,
    Evidence,
    SuspectedChange,
    Window,
)
from detector.core.links import dashboard_url, generator_url
from detector.core.scoring import Decision
from detector.core.severity import RANK, classify
from detector.core.timestamps import rfc3339, utc

__all__ = ["Incident", "Lifecycle", "alert_id", "change_text"]

Key = tuple[str, int, tuple[str, ...]]   # (signal, level, cohort values)


def change_text(field: str, baseline: str | None, now: str) -> str:
    """The suspected change as a person reads it.

    >>> change_text("prompt_version", "v4", "v5")
    'prompt_version v4 -> v5'
    >>> change_text("prompt_version", None, "v5")
    'prompt_version v5 (new)'
    """
    return f"{field} {now} (new)" if baseline is None else f"{field} {baseline} -> {now}"


def alert_id(signal: str, cohort: dict[str, str], start: float) -> str:
    text = "|".join([signal, *(f"{k}={cohort[k]}" for k in sorted(cohort)), rfc3339(start)])
    return "a-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def _r(x: float) -> float:
    return round(float(x), 6)


class Incident:
    """One active alert's state (what the changelog keeps of it)."""

    __slots__ = ("clean", "cohort", "compared", "containment", "detail", "evidence", "expected",
                 "grouped", "id", "last_end", "observed", "persistence", "rule", "score",
                 "severity", "signal", "starts_at", "suspected", "threshold", "window")

    def __init__(self, signal: str, cohort: dict[str, str], starts_at: float, rule: bool) -> None:
        self.id = alert_id(signal, cohort, starts_at)
        self.signal = signal
        self.cohort = cohort
        self.starts_at = starts_at
        self.rule = rule
        self.severity: Severity = "sev4"
        self.clean = 0
        self.evidence: list[str] = []
        self.last_end = starts_at
        self.observed = 0.0
        self.expected: float | None = None
        self.score = 0.0
        self.threshold = 0.0
        self.window: dict[str, Any] = {}
        self.persistence = 1
        self.grouped = 0
        self.suspected: dict[str, Any] | None = None
        # Containment claims: action -> [status, wall-clock seconds] (core/containment.py).
        self.containment: dict[str, list[Any]] = {}
        # What a leading indicator's summary says instead of "above baseline" (the compared
        # cohort, the prompt changes); "" for the others.
        self.detail = ""
        # A canary gap's signal and other cohort: {"signal": ..., "cohort": {...}}.
        self.compared: dict[str, Any] | None = None


class Lifecycle:
    """Active alerts, keyed by (signal, level, cohort); emits an :class:`Alert` on each
    transition."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rules = config.severity
        self.resolve_after = config.alerting.resolve_after_clean_windows
        self.k = config.alerting.evidence_trace_ids
        self.levels = config.cohorts.levels
        self.active: dict[Key, Incident] = {}

    def reconfigure(self, config: Config) -> None:
        """Classify and render from now on by ``config``'s severity rules, runbook URLs and
        actions. Active incidents keep their ids and severities (a new rule can escalate
        them at their next anomalous window, as any rule does)."""
        self.config = config
        self.rules = config.severity

    def firing(self) -> list[Alert]:
        """Every active alert as it would be sent now (firing), in key order: what a new
        sink is told so it knows the incidents that began before it."""
        return [self._render(self.active[k], "firing") for k in sorted(self.active)]

    def _cohort(self, level: int, cohort: tuple[str, ...]) -> dict[str, str]:
        return dict(zip(self.levels[level], cohort, strict=True))

    def _severity(self, signal: str, cohort: dict[str, str], persistence: int,
                  score: float, confirmed: bool = False) -> Severity | None:
        env = cohort.get("environment", "production")
        return classify(self.rules, signal, env, persistence, score, confirmed)

    def _add_evidence(self, inc: Incident, ids: list[str]) -> None:
        for t in ids:
            if len(inc.evidence) >= self.k:
                break
            if t not in inc.evidence:
                inc.evidence.append(t)

    def on_anomaly(self, level: int, cohort: tuple[str, ...], d: Decision, persistence: int,
                   window: tuple[float, float], evidence: list[str],
                   suspected: dict[str, Any] | None, grouped: int, detail: str = "",
                   compared: dict[str, Any] | None = None) -> Alert | None:
        """An anomalous window of a (cohort, signal) that represents its incident (``detail``:
        a leading indicator's own account of it, for the summary)."""
        key = (d.signal, level, cohort)
        inc = self.active.get(key)
        cdict = self._cohort(level, cohort) if inc is None else inc.cohort
        sev = self._severity(d.signal, cdict, persistence, d.score, d.confirmed)
        if inc is None and sev is None:
            return None
        start, end = window
        new = inc is None
        if inc is None:
            first = start - (persistence - 1) * (end - start)
            inc = self.active[key] = Incident(d.signal, cdict, first, rule=False)
            inc.suspected = suspected
        elif suspected and "field" in suspected and not (inc.suspected or {}).get("field"):
            # Named once there is evidence (a canary's events accumulate); then kept, so
            # the alert does not change its mind as the windows before the change fade.
            inc.suspected = suspected
        inc.clean = 0
        inc.last_end = end
        inc.observed, inc.expected, inc.score, inc.threshold = (
            d.observed, d.expected, d.score, d.threshold)
        inc.window = {"start": rfc3339(start), "end": rfc3339(end), "events": d.events}
        inc.persistence = persistence
        inc.detail = detail
        inc.compared = compared
        inc.grouped = max(inc.grouped, grouped)
        self._add_evidence(inc, evidence)
        if sev is not None and (new or RANK[sev] < RANK[inc.severity]):
            inc.severity = sev
            return self._render(inc, "firing")
        return None

    def on_hit(self, signal: str, level: int, cohort: tuple[str, ...], ts: float,
               trace_id: str | None, suspected: dict[str, Any] | None) -> Alert | None:
        """A hard-rule hit: fires at the offending event; later hits extend the incident."""
        key = (signal, level, cohort)
        inc = self.active.get(key)
        ids = [trace_id] if trace_id else []
        if inc is not None:
            if ts > inc.last_end:   # the clean windows counted so far came before this hit
                inc.clean = 0
                inc.last_end = ts
            inc.observed += 1
            inc.score = inc.observed
            inc.window["events"] = int(inc.observed)
            self._add_evidence(inc, ids)
            return None
        cdict = self._cohort(level, cohort)
        sev = self._severity(signal, cdict, 1, 0.0)
        if sev is None:
            return None
        inc = self.active[key] = Incident(signal, cdict, ts, rule=True)
        inc.severity = sev
        # Rule-only: no baseline; the score is the count of offending events, the rule value 1.
        inc.observed = inc.score = inc.threshold = 1.0
        inc.window = {"start": rfc3339(ts), "end": rfc3339(ts), "events": 1}
        inc.suspected = suspected
        self._add_evidence(inc, ids)
        return self._render(inc, "firing")

    def close_window(self, touched: set[Key]) -> list[Alert]:
        """After a window: every active alert not touched in it had a clean window."""
        out = []
        for key in sorted(self.active):
            if key in touched:
                continue
            inc = self.active[key]
            inc.clean += 1
            if inc.clean >= self.resolve_after:
                del self.active[key]
                out.append(self._render(inc, "resolved"))
        return out

    def adopted(self, key: Key, window_end: float) -> Alert | None:
        """The baseline of this (signal, level, cohort) adopted the new level: its alert
        resolves now, saying so, rather than after clean windows that may never come."""
        inc = self.active.get(key)
        if inc is None or inc.rule:
            return None
        del self.active[key]
        inc.last_end = max(inc.last_end, window_end)
        return self._render(inc, "resolved", adopted=True)

    def touch_hits(self, window_start: float) -> set[Key]:
        """Hard-rule incidents for which the window starting at ``window_start`` is not
        clean: it holds their last hit, or comes before it. In event time, so it does not
        matter whether a hit reached stage 2 before or after the earlier windows closed."""
        return {k for k, inc in self.active.items()
                if inc.rule and window_start <= inc.last_end}

    def _render(self, inc: Incident, status: str, adopted: bool = False) -> Alert:
        sc = self.config.signal(inc.signal)
        sus = inc.suspected
        cohort_txt = " ".join(f"{k}={v}" for k, v in inc.cohort.items())
        if inc.rule:
            what = f"{inc.signal}: {int(inc.observed)} offending event(s)"
        elif inc.detail:
            what = inc.detail
        else:
            arrow = "above" if inc.expected is None or inc.observed >= inc.expected else "below"
            what = (f"{inc.signal} {arrow} baseline: {inc.observed:.4g} vs "
                    f"{(inc.expected or 0):.4g} expected, score {inc.score:+.1f} "
                    f"for {inc.persistence} window(s)")
        summary = f"[{inc.severity}] {what} in {cohort_txt}"
        if inc.grouped:
            summary += f" ({inc.grouped} child cohorts)"
        named = bool(sus and "field" in sus)
        if sus and named:
            change = change_text(sus["field"], sus["baseline"], sus["now"])
            summary += f"; suspected change {change}"
        if status == "resolved":
            summary = "RESOLVED " + summary
            if adopted:
                summary += "; the baseline adopted the new level"
        resolved = status == "resolved"
        w = inc.window
        return Alert(
            id=inc.id,
            status="resolved" if resolved else "firing",
            severity=inc.severity,
            signal=inc.signal,
            cohort=dict(inc.cohort),
            starts_at=utc(inc.starts_at),
            ends_at=utc(inc.last_end) if resolved else None,
            observed=_r(inc.observed),
            expected=None if inc.expected is None else _r(inc.expected),
            score=_r(inc.score),
            threshold=_r(inc.threshold),
            window=Window(start=w["start"], end=w["end"], events=w["events"]),
            suspected_change=_change(sus) if sus and named else None,
            evidence=Evidence(trace_ids=list(inc.evidence)),
            summary=summary,
            runbook_url=sc.runbook_url,
            actions=list(sc.actions.get(inc.severity, [])),
            persistence=inc.persistence,
            grouped_cohorts=inc.grouped,
            resolution=(("baseline_adopted" if adopted else "clean_windows") if resolved
                        else None),
            also_suspected=[_change(c) for c in sus.get("also", ())] if sus and named else [],
            suspected_change_reason=sus.get("reason") if sus and not named else None,
            containment=[ContainmentResult(action=a, status=str(st), at=rfc3339(at))
                         for a, (st, at) in inc.containment.items()],
            **self._links(inc, status),
            compared=(Compared(signal=inc.compared["signal"], cohort=dict(inc.compared["cohort"]))
                      if inc.compared else None),
        )

    def _links(self, inc: Incident, status: str) -> dict[str, str]:
        links = self.config.links
        if links.dashboard_url is None and links.generator_url is None:
            return {}
        fields = {"id": inc.id, "status": "resolved" if status == "resolved" else "firing",
                  "severity": inc.severity, "signal": inc.signal, **inc.cohort}
        out = {"dashboard_url": dashboard_url(links, fields, inc.starts_at, inc.last_end),
               "generator_url": generator_url(links, fields, inc.starts_at, inc.last_end)}
        return {k: v for k, v in out.items() if v is not None}


def _change(c: dict[str, Any]) -> SuspectedChange:
    return SuspectedChange(field=c["field"], baseline=c["baseline"], now=c["now"],
                           model=c.get("model"), share_of_events=c.get("share_of_events"),
                           observed_with=c.get("observed_with"),
                           observed_without=c.get("observed_without"), score=c.get("score"),
                           named_by=c.get("named_by"))
