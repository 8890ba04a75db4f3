"""The alert as a typed struct: the contract in ``shared/schema/alert.md`` (version 1).

Stage 2's lifecycle makes an :class:`Alert`; every sink, replay and the stream take it as
it is. :func:`encode_alert` writes the contract's JSON, field for field in the order the
detector has always written it (so replay output stays byte-identical): ``grouped_cohorts``
and ``resolution`` are omitted at their defaults, every other field is always written.
Times are aware datetimes here, so a consumer such as the Alertmanager sink reads them as
times, not by parsing strings; they are written by :func:`detector.core.timestamps.rfc3339`.
``containment`` is omitted when empty too (replay never acts, so its output is unchanged), and
``dashboard_url``/``generator_url`` when ``[links]`` has no template for them, and
``compared`` but on a canary gap.
The window's ``start``/``end`` stay strings: the incident keeps them so in its stored state.

>>> a = Alert(id="a-1", status="firing", severity="sev4", signal="volume",
...           cohort={"app": "chat"}, starts_at=utc(60.0), ends_at=None, observed=9.0,
...           expected=3.0, score=6.0, threshold=5.0,
...           window=Window(start=rfc3339(60.0), end=rfc3339(120.0), events=9),
...           suspected_change=None, evidence=Evidence(trace_ids=["t1"]), summary="s",
...           runbook_url=None, actions=[], persistence=1)
>>> encode_alert(a)[:96]
b'{"id":"a-1","status":"firing","severity":"sev4","signal":"volume","cohort":{"app":"chat"},"start'
>>> decode_alert(encode_alert(a)) == a
True
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

import msgspec
import orjson

from detector.core.timestamps import rfc3339, utc

__all__ = ["Alert", "Compared", "ContainmentResult", "Evidence", "SuspectedChange", "Window",
           "alert_record", "decode_alert", "encode_alert", "utc"]

Status = Literal["firing", "resolved"]
Severity = Literal["sev1", "sev2", "sev3", "sev4"]
Resolution = Literal["clean_windows", "baseline_adopted"]


class Window(msgspec.Struct, frozen=True):
    """The latest window that counted."""

    start: str   # RFC 3339
    end: str
    events: int


class SuspectedChange(msgspec.Struct, frozen=True, omit_defaults=True):
    """A version value whose events carry the anomaly: the first rollback candidate.
    ``baseline`` is the value it replaced (None when no older value was known). The evidence
    fields are set on windowed alerts (detector.core.attribution) and omitted on hard-rule
    alerts, which name the offending event's own new version as before."""

    field: str
    baseline: str | None
    now: str
    model: str | None = None               # field "model_version": the model it versions
    share_of_events: float | None = None   # of the cohort's events in the alert's window
    observed_with: float | None = None     # the signal among the value's events
    observed_without: float | None = None  # ...and among the rest of the cohort's
    score: float | None = None             # the evidence, in standard units
    #: "parent": this cohort's events alone were too few to name it; its parent's were.
    named_by: str | None = None


class Evidence(msgspec.Struct, frozen=True):
    trace_ids: list[str]   # up to 20


class Compared(msgspec.Struct, frozen=True):
    """What a canary_gap alert compared its cohort with: the signal whose windows differ and
    the other cohort (production's)."""

    signal: str
    cohort: dict[str, str]


class ContainmentResult(msgspec.Struct, frozen=True):
    """Where one containment action of this alert stands (docs/contracts.md lists the
    statuses): ``at`` is the wall-clock time it got there."""

    action: str   # the [[containment]] rule's name
    status: str
    at: str       # RFC 3339


class Alert(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One alert emission (firing, a severity change, or the resolution)."""

    id: str
    status: Status
    severity: Severity
    signal: str
    cohort: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    observed: float
    expected: float | None
    score: float
    threshold: float
    window: Window
    suspected_change: SuspectedChange | None
    evidence: Evidence
    summary: str
    runbook_url: str | None
    actions: list[str]
    # The detector's own fields beyond the contract (it allows additional properties):
    persistence: int
    grouped_cohorts: int = 0   # child cohorts this alert stands for; omitted when none
    resolution: Resolution | None = None   # why it resolved; omitted while firing
    #: Up to two more candidates, ranked, when their evidence also reaches the bar.
    also_suspected: list[SuspectedChange] = msgspec.field(default_factory=list)
    #: Why there is no suspected change on a windowed alert (omitted when there is one).
    suspected_change_reason: str | None = None
    containment: list[ContainmentResult] = []   # [[containment]] actions; omitted when none
    dashboard_url: str | None = None   # from [links]; omitted when not configured
    generator_url: str | None = None
    compared: Compared | None = None   # canary_gap only; omitted otherwise


_decoder: Final = msgspec.json.Decoder(Alert)


def alert_record(alert: Alert) -> dict[str, Any]:
    """The alert as the contract's JSON values (times as RFC 3339 text), in field order."""
    rec: dict[str, Any] = msgspec.to_builtins(alert, builtin_types=(datetime,))
    rec["starts_at"] = rfc3339(alert.starts_at)
    if alert.ends_at is not None:
        rec["ends_at"] = rfc3339(alert.ends_at)
    return rec


def encode_alert(alert: Alert) -> bytes:
    """The canonical JSON of an alert (no newline): same alert, same bytes. orjson writes the
    numbers, as it always has (msgspec would write ``1e+17`` as ``1e17``)."""
    return orjson.dumps(alert_record(alert))


def decode_alert(data: bytes | str) -> Alert:
    """An alert from its JSON (a ``msgspec.ValidationError`` names what is wrong)."""
    return _decoder.decode(data)
