"""The mapping of an alert onto Alertmanager's API v2 (the sink's settings are
:class:`detector.config.AlertmanagerConfig`).

The mapping is the one in shared/schema/alert.md: ``alertname`` is the signal in CamelCase
prefixed ``Model``; ``severity`` is critical (sev1, sev2), warning (sev3) or info (sev4) with
the original kept as ``sev``; ``signal``; and the cohort fields configured as alert labels.
Annotations: ``summary``, ``description``, ``runbook_url``, ``trace_ids`` (comma-joined), plus
``alert_id``, ``actions`` and ``dashboard_url`` (the alert's, from ``[links]``). Times and the
``generatorURL`` back-link are added at send time by the sink.
"""

from __future__ import annotations

import re
from typing import Final

from detector.core.alert import Alert
from detector.core.lifecycle import change_text

__all__ = ["SEVERITY_LABEL", "alertname", "to_postable"]

SEVERITY_LABEL: Final = {"sev1": "critical", "sev2": "critical", "sev3": "warning", "sev4": "info"}


def alertname(signal: str) -> str:
    """``unauthorized_tool_call`` -> ``ModelUnauthorizedToolCall``.

    >>> alertname("safety_pii"), alertname("refusal-rate")
    ('ModelSafetyPii', 'ModelRefusalRate')
    """
    parts = re.split(r"[^0-9A-Za-z]+", signal)
    return "Model" + "".join(p[:1].upper() + p[1:] for p in parts if p)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _description(alert: Alert) -> str:
    text = f"observed {_num(alert.observed)}, expected {_num(alert.expected)}, " \
           f"score {_num(alert.score)} (threshold {_num(alert.threshold)})"
    w = alert.window
    text += f"; window {w.start} to {w.end} ({w.events} events)"
    change = alert.suspected_change
    if change:
        text += "; suspected change: " + change_text(change.field, change.baseline, change.now)
    return text


def to_postable(alert: Alert, cohort_labels: list[str] | tuple[str, ...]) -> tuple[
        dict[str, str], dict[str, str]]:
    """Labels and annotations for one alert (times are added at send time)."""
    labels = {
        "alertname": alertname(alert.signal),
        "severity": SEVERITY_LABEL[alert.severity],
        "sev": alert.severity,
        "signal": alert.signal,
    }
    for name in cohort_labels:
        value = alert.cohort.get(name)
        if value:  # Alertmanager drops empty labels anyway
            labels[name] = value
    annotations = {
        "summary": alert.summary,
        "description": _description(alert),
        "trace_ids": ",".join(alert.evidence.trace_ids),
        "alert_id": alert.id,
    }
    if alert.runbook_url:
        annotations["runbook_url"] = alert.runbook_url
    if alert.actions:
        annotations["actions"] = "; ".join(alert.actions)
    if alert.dashboard_url:
        annotations["dashboard_url"] = alert.dashboard_url
    return labels, annotations
