"""Hard rules: events that are incidents on their own, checked per event in stage 1.

An unauthorized tool call, a write or external action whose approval was refused (or a call to
a sensitive tool nobody approved), or a leak-label safety hit fires at once, at the offending
event, without waiting for a window or a baseline.

>>> from detector.config import load_config
>>> from detector.core.events import decode
>>> rules = HardRules(load_config(None))
>>> ev = decode(b'{"ts": 5, "operation": "execute_tool", "app": "a", "tool_authorized": false,'
...             b' "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}')[0][0]
>>> [(h.signal, h.cohort, h.ts) for h in rules.check(ev)]
[('unauthorized_tool_call', ('unknown', 'a', 'production'), 5.0)]
"""

from __future__ import annotations

from operator import attrgetter
from typing import Final

from msgspec import UNSET, Struct

from detector.config import Config
from detector.core.events import TraceEvent
from detector.core.partials import (
    UNKNOWN,
    VERSION_FIELDS,
    Versions,
    legacy_versions,
    route_fields,
    route_key,
    versions_of,
)
from detector.core.wire import Wire

__all__ = ["HardRules", "LegacyHit", "RuleHit", "decode_hit", "encode_hit"]

_WRITE = frozenset({"write", "external"})


class RuleHit(Struct, array_like=True, frozen=True):
    """One offending event, at the finest cohort level."""

    signal: str
    cohort: tuple[str, ...]
    ts: float
    trace_id: str | None
    versions: Versions   # of the event
    route: str      # stage-2 partition key (see detector.core.partials.route_key)


class LegacyHit(RuleHit, frozen=True):
    """A hit as written before :class:`Versions` ("model\x1fprompt\x1fpolicy")."""

    versions: str  # type: ignore[assignment]  # the old wire form of the field

    def upgrade(self) -> RuleHit:
        return RuleHit(self.signal, self.cohort, self.ts, self.trace_id,
                       legacy_versions(self.versions), self.route)


_versions = attrgetter(*VERSION_FIELDS)
_WIRE: Final = Wire(RuleHit, LegacyHit)


def encode_hit(h: RuleHit) -> bytes:
    return _WIRE.encode(h)


def decode_hit(data: bytes) -> RuleHit:
    """A hit from msgpack; one written before :class:`Versions` is upgraded."""
    return _WIRE.decode(data)


class HardRules:
    def __init__(self, config: Config) -> None:
        r = config.rules
        self.unauthorized = r.unauthorized_tool_call
        self.unapproved = r.unapproved_side_effect
        self.leaks = frozenset(r.leak_labels)
        self.sensitive = frozenset(r.sensitive_tools)
        fields = config.cohorts.levels[-1]
        self._key = attrgetter(*fields)
        self._single = len(fields) == 1
        self._route = tuple(fields.index(f) for f in route_fields(config.cohorts.levels[0]))

    def check_many(self, evs: list[TraceEvent]) -> list[RuleHit]:
        """:meth:`check` over a batch, behind a cheap filter that lets most events pass
        with a few attribute tests (a superset of what can break a rule)."""
        out: list[RuleHit] = []
        leaks, sensitive = self.leaks, self.sensitive
        for ev in evs:
            if (ev.tool_authorized is False or ev.tool_approved is False
                    or (sensitive and ev.tool_name in sensitive) or (leaks and ev.safety_hits)):
                out += self.check(ev)
        return out

    def check(self, ev: TraceEvent) -> list[RuleHit]:
        """Every hard rule this event breaks (usually none: the common path is 4 tests)."""
        signals: list[str] = []
        if self.unauthorized and ev.tool_authorized is False:
            signals.append("unauthorized_tool_call")
        if self.unapproved and ev.tool_approved is not True and (
            (ev.tool_approved is False and ev.tool_side_effect in _WRITE)
            or (ev.tool_name in self.sensitive)
        ):
            signals.append("unapproved_side_effect")
        hits = ev.safety_hits
        if hits is not UNSET and hits and self.leaks:
            signals.extend(sorted(self.leaks.intersection(hits)))
        if not signals:
            return []
        key = (self._key(ev),) if self._single else self._key(ev)
        cohort = tuple(UNKNOWN if v is UNSET else v for v in key)
        versions = versions_of(_versions(ev))
        tid = None if ev.trace_id is UNSET else ev.trace_id
        route = route_key(tuple(cohort[i] for i in self._route))
        return [RuleHit(s, cohort, ev.ts, tid, versions, route)  # type: ignore[arg-type]  # ts: decode() made it epoch seconds
                for s in signals]
