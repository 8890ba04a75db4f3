"""Alertmanager sink settings and the mapping of an alert onto Alertmanager's API v2.

The mapping is the one in shared/schema/alert.md: ``alertname`` is the signal in CamelCase
prefixed ``Model``; ``severity`` is critical (sev1, sev2), warning (sev3) or info (sev4) with
the original kept as ``sev``; ``signal``; and the cohort fields configured as alert labels.
Annotations: ``summary``, ``description``, ``runbook_url``, ``trace_ids`` (comma-joined), plus
``alert_id`` and ``actions``. Times are added at send time by the sink.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final

from detector.alerts import change_text

__all__ = [
    "SEVERITY_LABEL",
    "AlertmanagerSettings",
    "alertname",
    "parse_time",
    "rfc3339",
    "to_postable",
]

SEVERITY_LABEL: Final = {"sev1": "critical", "sev2": "critical", "sev3": "warning", "sev4": "info"}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: detector.config's ``[sinks.alertmanager]`` keys -> AlertmanagerSettings fields.
_CONFIG_KEYS: Final = {
    "urls": "urls", "cohort_labels": "cohort_label_fields",
    "resend_interval_seconds": "resend_interval_s",
    "resolved_resend_seconds": "resolved_resend_s", "timeout_seconds": "timeout_s",
    "max_queue": "max_queue", "ca_file": "ca_file", "cert_file": "client_cert_file",
    "key_file": "client_key_file", "insecure_skip_verify": "insecure_skip_verify",
    "basic_auth_user": "username", "basic_auth_password": "password",
    "bearer_token": "bearer_token",
}


@dataclass(frozen=True)
class AlertmanagerSettings:
    """How to reach Alertmanager. :meth:`from_mapping` builds it from a config table."""

    urls: tuple[str, ...]
    cohort_label_fields: tuple[str, ...] = ()
    resend_interval_s: float = 60.0
    resolved_resend_s: float = 300.0
    timeout_s: float = 10.0
    max_queue: int = 10_000
    max_batch: int = 500
    ends_at_resends: int = 4  # firing endsAt = now + this many resend intervals
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    insecure_skip_verify: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    bearer_token: str | None = field(default=None, repr=False)
    bearer_token_file: str | None = None
    generator_url: str | None = None
    use_env_proxy: bool = False  # honour http(s)_proxy; off so loopback never goes via a proxy
    name: str = "alertmanager"  # the `sink` label of the sink metrics
    poll_s: float = 1.0  # longest sleep between looks at the (injectable) clock

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"alertmanager.{key}: {why}")

        if not self.urls:
            raise bad("urls", "at least one Alertmanager URL is required")
        for url in self.urls:
            if not re.match(r"^https?://[^/\s]+", url):
                raise bad("urls", f"{url!r} is not an http(s) URL")
        for name in self.cohort_label_fields:
            if not _LABEL_NAME.match(name) or name in {"alertname", "severity", "sev", "signal"}:
                raise bad("cohort_label_fields", f"{name!r} is not a free label name")
        for key in ("resend_interval_s", "timeout_s", "backoff_initial_s", "backoff_max_s",
                    "poll_s"):
            if not getattr(self, key) > 0:
                raise bad(key, "must be > 0")
        if not self.resolved_resend_s >= 0:  # 0: send a resolve once, never again
            raise bad("resolved_resend_s", "must be >= 0")
        for key in ("max_queue", "max_batch", "ends_at_resends"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if (self.username is not None) and (self.bearer_token or self.bearer_token_file):
            raise bad("username", "basic auth and bearer token are mutually exclusive")
        if self.client_key_file and not self.client_cert_file:
            raise bad("client_key_file", "needs client_cert_file")

    @classmethod
    def from_config(cls, cfg: Any, **extra: Any) -> AlertmanagerSettings:
        """From the detector config's ``[sinks.alertmanager]`` struct (its key names)."""
        kwargs = {ours: getattr(cfg, theirs) for theirs, ours in _CONFIG_KEYS.items()
                  if hasattr(cfg, theirs)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return cls(**{**kwargs, **extra})

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> AlertmanagerSettings:
        """From a config table (e.g. TOML ``[sinks.alertmanager]``); lists become tuples."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"alertmanager.{unknown[0]}: unknown key")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
        if isinstance(kwargs.get("urls"), str):
            kwargs["urls"] = (kwargs["urls"],)
        return cls(**kwargs)


# -- mapping ---------------------------------------------------------------------------------


def alertname(signal: str) -> str:
    """``unauthorized_tool_call`` -> ``ModelUnauthorizedToolCall``.

    >>> alertname("safety_pii"), alertname("refusal-rate")
    ('ModelSafetyPii', 'ModelRefusalRate')
    """
    parts = re.split(r"[^0-9A-Za-z]+", signal)
    return "Model" + "".join(p[:1].upper() + p[1:] for p in parts if p)


def parse_time(value: str) -> float:
    """RFC 3339 -> Unix seconds."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:  # the contract says RFC 3339; a naive time is read as UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def rfc3339(epoch: float) -> str:
    """Unix seconds -> RFC 3339 in UTC with milliseconds. Rounded first: isoformat truncates,
    and a float round trip of ``.420`` can come back as ``.41999…``.

    >>> rfc3339(parse_time("2026-01-02T03:04:05.420Z"))
    '2026-01-02T03:04:05.420Z'
    """
    return datetime.fromtimestamp(round(epoch, 3), UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _description(alert: Mapping[str, Any]) -> str:
    text = f"observed {_num(alert.get('observed'))}, expected {_num(alert.get('expected'))}, " \
           f"score {_num(alert.get('score'))}"
    if alert.get("threshold") is not None:
        text += f" (threshold {_num(alert['threshold'])})"
    window = alert.get("window") or {}
    if window:
        text += f"; window {window.get('start', '?')} to {window.get('end', '?')}"
        if window.get("events") is not None:
            text += f" ({window['events']} events)"
    change = alert.get("suspected_change")
    if change:
        text += "; suspected change: " + change_text(
            str(change.get("field")), change.get("baseline"), str(change.get("now")))
    return text


def to_postable(alert: Mapping[str, Any], cohort_label_fields: tuple[str, ...]) -> tuple[
        dict[str, str], dict[str, str]]:
    """Labels and annotations for one alert (times are added at send time)."""
    severity = str(alert["severity"])
    labels = {
        "alertname": alertname(str(alert["signal"])),
        "severity": SEVERITY_LABEL[severity],
        "sev": severity,
        "signal": str(alert["signal"]),
    }
    cohort = alert.get("cohort") or {}
    for name in cohort_label_fields:
        value = cohort.get(name)
        if value:  # Alertmanager drops empty labels anyway
            labels[name] = str(value)
    evidence = alert.get("evidence") or {}
    annotations = {
        "summary": str(alert.get("summary", "")),
        "description": _description(alert),
        "trace_ids": ",".join(evidence.get("trace_ids") or ()),
        "alert_id": str(alert["id"]),
    }
    if alert.get("runbook_url"):
        annotations["runbook_url"] = str(alert["runbook_url"])
    if alert.get("actions"):
        annotations["actions"] = "; ".join(alert["actions"])
    return labels, annotations
