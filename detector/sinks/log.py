"""Alerts as structured log lines: the fields a person needs, never prompt or response text
(alerts carry none: only ids, cohort values, numbers and trace ids)."""

from __future__ import annotations

import logging
from typing import Final

import orjson

from detector.core.alert import Alert, alert_record

__all__ = ["LogSink"]

_FIELDS: Final = ("id", "status", "severity", "signal", "cohort", "starts_at", "ends_at",
                  "observed", "expected", "score", "suspected_change", "summary")


class LogSink:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("detector.core.lifecycle")

    def emit(self, alert: Alert) -> None:
        full = alert_record(alert)
        rec = {k: full[k] for k in _FIELDS}
        level = logging.WARNING if alert.severity in ("sev1", "sev2") else logging.INFO
        self.log.log(level, orjson.dumps({"event": "alert", **rec}).decode())

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    def close(self) -> None:
        return None
