"""Event time for one source of events: which timestamps to believe, and how far they move it.

A watermark that follows the newest timestamp lets one event decide what is late for
everyone: after one stamped a year ahead (or in milliseconds) every real event is late. So
:class:`EventClock` believes a timestamp only

- if it can be seconds since the epoch of a trace event at all (2000 to 2100, see
  :func:`implausible`: a number in milliseconds, microseconds or nanoseconds is named so),
- and if it is at most ``bound`` seconds ahead of event time (stage 1 passes a window, or the
  allowed lateness if longer: that far, one event can make late only events more than a
  window behind, and a sparse source, an event a minute, needs nobody's word for each one;
  ``tests/test_clock.py`` holds and refuses jumps of minutes to years). A timestamp further
  ahead is held until other
  messages corroborate the jump (at least :data:`QUORUM` messages held that outnumber the
  messages that came in on the old time meanwhile: traffic resuming after a silence does that;
  one wild event, one producer's batch, or a producer in the minority never does) and is
  dead-lettered otherwise.

A live stream also has a wall clock (``wall``): a timestamp within ``bound`` of it is
corroborated by it, so a quiet partition's events (a hard rule's offending event after a
silence) count at once, and one more than ``input.max_future_seconds`` ahead of it is never
believed. Recorded input has no "now" and relies on events alone; on normal traffic both
believe every event, so replay and stream close the same windows.

>>> from detector.core.events import decode
>>> ev = lambda ts: decode(b'{"ts": %r, "operation": "chat"}' % ts)[0][0]
>>> c = EventClock(bound=30)
>>> ok, bad = c.admit([ev(1767571200.0 + i) for i in range(3)] + [ev(1767571200.0 * 1000)])
>>> len(ok), c.time - 1767571200.0, [r.detail for r in bad]
(3, 2.0, ['looks like milliseconds since the epoch (1.767571200e+12), not seconds'])
>>> ok, bad = c.admit([ev(1799107206.0)])      # a year ahead: held, not believed yet
>>> ok, bad, c.time - 1767571200.0
([], [], 2.0)
>>> ok, bad = c.admit([ev(1767571204.0 + i) for i in range(3)])   # time goes on without it
>>> len(ok), len(bad), bad[0].reason
(3, 1, 'bad_timestamp')
>>> print(bad[0].detail)
31536000 s ahead of event time 2026-01-05T00:00:06Z: more than 30 s ahead, not corroborated
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import accumulate
from operator import attrgetter, sub
from typing import Final

import msgspec

from detector.core.events import Rejection, TraceEvent, sanitise

__all__ = ["MAX_TS", "MIN_TS", "QUORUM", "EventClock", "implausible"]

#: Plausible event times: no LLM trace predates 2000, and a seconds value past 2100 is a unit
#: mistake or a broken clock, not a recording from the future (1e9 s is 2001-09-09).
MIN_TS: Final = 946_684_800.0     # 2000-01-01T00:00:00Z
MAX_TS: Final = 4_102_444_800.0   # 2100-01-01T00:00:00Z
#: Held messages that corroborate a jump of event time (when they are also the majority).
#: Two could be one producer's two messages in a row; three after a silence cost little delay.
QUORUM: Final = 3

#: An event's time as decode() left it: epoch seconds (the field also admits a datetime).
_TS: Final[Callable[[TraceEvent], float]] = attrgetter("ts")
_UNITS: Final = ((1e3, "milliseconds"), (1e6, "microseconds"), (1e9, "nanoseconds"))


def implausible(ts: float) -> str | None:
    """Why ``ts`` cannot be the epoch seconds of a trace event, or None if it can.

    >>> implausible(1767571200.0) is None
    True
    >>> implausible(1767571200123456.0)
    'looks like microseconds since the epoch (1.767571200e+15), not seconds'
    >>> implausible(1.7976931348623157e308), implausible(86400.0)
    ('after 2100-01-01 (1.797693135e+308)', 'before 2000-01-01 (8.640000000e+04)')
    """
    if MIN_TS <= ts < MAX_TS:
        return None
    for scale, unit in _UNITS:
        if MIN_TS * scale <= ts < MAX_TS * scale:
            return f"looks like {unit} since the epoch ({ts:.9e}), not seconds"
    if ts < MIN_TS:
        return f"before 2000-01-01 ({ts:.9e})"
    return f"after 2100-01-01 ({ts:.9e})"   # and NaN, which no decoder lets through


def _bad(ev: TraceEvent, detail: str, message: int) -> Rejection:
    return Rejection("bad_timestamp", "ts", detail, sanitise(msgspec.to_builtins(ev)), message)


class EventClock:
    """Event time of one source: the newest believed timestamp (``time``), never moved more
    than ``bound`` seconds by events nobody corroborates (see the module doc).

    Corroboration counts messages, not events: a message is one producer's word at one time,
    so a batch of a hundred events from one broken producer is one vote, not a hundred.
    ``wall`` and ``max_future`` are for a live stream: a timestamp more than ``max_future``
    seconds ahead of the wall clock is never believed; one within ``bound`` of it needs no
    other events' word."""

    __slots__ = ("bound", "first", "held", "held_votes", "max_future", "passed", "quorum",
                 "seen", "time", "wall")

    def __init__(self, bound: float, *, quorum: int = QUORUM,
                 wall: Callable[[], float] | None = None,
                 max_future: float = math.inf) -> None:
        self.bound = bound
        self.quorum = quorum
        self.wall = wall
        self.max_future = max_future
        self.time = -math.inf   # nothing believed yet: the first events need a quorum too
        self.held: list[tuple[int, TraceEvent]] = []   # (message, event) ahead, in order
        self.held_votes = 0     # messages among the held events
        self.passed = 0         # messages believed since the oldest held one came
        self.seen = 0           # messages admitted so far (a message's number)
        self.first = 0          # the number of the current call's first message

    def admit(self, evs: list[TraceEvent], sizes: Callable[[], list[int]] | None = None
              ) -> tuple[list[TraceEvent], list[Rejection]]:
        """The events to count now (in arrival order, held ones once a jump is corroborated)
        and the ones dead-lettered for their timestamp. ``sizes()`` gives the events per
        message of ``evs`` (asked only when some timestamp is in doubt; without it every
        event counts as a message of its own)."""
        if not evs:
            return evs, []
        now = -math.inf if self.wall is None else self.wall()
        cap = math.inf if self.wall is None else now + self.max_future
        ts = list(map(_TS, evs))
        lo, hi = min(ts), max(ts)
        if not self.held and lo >= MIN_TS and hi < MAX_TS and hi <= cap and (
                hi <= self.time + self.bound   # the common case: none ahead at all
                # no step ahead of the newest before it by more than bound (in C) ...
                or max(map(sub, ts, accumulate(ts, max, initial=self.time))) <= self.bound
                # ... or all within bound of the wall clock
                or (now - self.bound <= lo and hi <= now + self.bound)):
            if hi > self.time:
                self.time = hi
            return evs, []
        return self._one_by_one(evs, now, cap, self._numbers(len(evs), sizes))

    def _numbers(self, n: int, sizes: Callable[[], list[int]] | None) -> list[int]:
        """Each event's message number."""
        counts = sizes() if sizes is not None else []
        if sum(counts) != n:
            counts = [1] * n
        first = self.first = self.seen
        self.seen += len(counts)
        return [first + i for i, c in enumerate(counts) for _ in range(c)]

    def _one_by_one(self, evs: list[TraceEvent], now: float, cap: float, msg: list[int]
                    ) -> tuple[list[TraceEvent], list[Rejection]]:
        ok: list[TraceEvent] = []
        bad: list[Rejection] = []
        last_passed = -1
        for m, ev in zip(msg, evs, strict=True):
            ts: float = ev.ts  # type: ignore[assignment]  # decode() made it epoch seconds
            why = implausible(ts)
            if why is None and ts > cap:
                why = f"more than {self.max_future:.0f} s ahead of the wall clock"
            if why is not None:
                bad.append(_bad(ev, why, m - self.first))
            elif ts <= self.time + self.bound or abs(ts - now) <= self.bound:
                ok.append(ev)
                if ts > self.time:
                    self.time = ts
                if self.held and m != last_passed:
                    last_passed = m
                    self.passed += 1
                    if self.passed >= self.quorum and self.passed >= self.held_votes:
                        bad += self._expire("")
            else:
                if not self.held or self.held[-1][0] != m:
                    self.held_votes += 1
                self.held.append((m, ev))
                if self.held_votes >= self.quorum and self.held_votes > self.passed:
                    ok += self._jump(self.quorum)
        return ok, bad

    def finish(self) -> tuple[list[TraceEvent], list[Rejection]]:
        """End of input: no more events will come to corroborate. If nothing was believed yet
        (fewer than QUORUM messages in all), the held ones are believed as far as they agree;
        otherwise they are dead-lettered (so are the last events after a silence)."""
        ok = self._jump(self.held_votes) if self.held and self.time == -math.inf else []
        return ok, self._expire(" (end of input)")

    def _jump(self, quorum: int) -> list[TraceEvent]:
        """Move event time to what the held messages agree on: the newest time that
        ``quorum`` of them reach (so fewer than that, however wild, are not believed), and
        release the held events it covers."""
        newest: dict[int, float] = {}
        for m, ev in self.held:
            newest[m] = max(newest.get(m, -math.inf), _TS(ev))
        self.time = max(self.time, sorted(newest.values())[-quorum])
        out: list[TraceEvent] = []
        while True:
            limit = self.time + self.bound
            now = [ev for _, ev in self.held if _TS(ev) <= limit]
            if not now:
                break
            self.held = [(m, ev) for m, ev in self.held if _TS(ev) > limit]
            self.time = max(self.time, max(map(_TS, now)))
            out += now
        self.held_votes = len({m for m, _ in self.held})
        self.passed = 0
        return out

    def _expire(self, why: str) -> list[Rejection]:
        at = (datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
              if self.time > -math.inf else "none yet")
        # The message index is the current call's (negative: a message of an earlier call).
        bad = [_bad(ev, f"{_TS(ev) - self.time:.0f} s ahead of event time {at}: more than "
                    f"{self.bound:g} s ahead, not corroborated{why}", m - self.first)
               for m, ev in self.held]
        self.held = []
        self.held_votes = 0
        self.passed = 0
        return bad
