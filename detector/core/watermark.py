"""Event-time watermarks: of one source (:class:`Watermark`) and over sources (:class:`Watermarks`).

Which timestamps to believe is :class:`~detector.core.clock.EventClock`'s business; what they
close is this module's. A source's watermark is its newest believed event time minus the
allowed lateness; a window closes once the watermark passes its end, and an event of a closed
window is late. Stage 2 hears each source's closed windows (a :class:`SourceMark`, sent with
the partials it covers) and closes a window once every busy source has closed it: a source
that is idle (read to its end, quiet for a while) does not hold the others back.

Windows of 60 s, 30 s of lateness:

>>> wm = Watermark(60.0, 30.0)
>>> wm.max_ts = 125.0             # counting moves it: the newest event time counted
>>> wm.time, wm.due(), wm.close(), wm.closed
(95.0, True, 1, 60.0)
>>> wm.close(), wm.due()          # window 1 ends at 120: not passed yet
(None, False)
>>> Watermark.build(60.0, 30.0, wm.snapshot()).closed
60.0

Two sources, one gone quiet:

>>> ws = Watermarks(idle_timeout=20.0, born=0.0)
>>> ws.report({0: SourceMark(120.0, False, 170.0)}, n_src=2)
>>> ws.watermark(now=5.0) is None     # source 1 has not spoken yet
True
>>> ws.report({1: SourceMark(60.0, False, 100.0)}, n_src=2)
>>> ws.watermark(now=5.0), ws.event_time(now=5.0)
(60.0, 100.0)
>>> ws.report({1: SourceMark(60.0, True, 100.0)}, n_src=2)
>>> ws.watermark(now=5.0)             # idle: no longer holds source 0 back
120.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from operator import attrgetter
from typing import Final

import msgspec

__all__ = ["END_GAPS", "SourceMark", "Watermark", "WatermarkState", "Watermarks",
           "WatermarksState"]

#: At end of input the last window counts as complete when event time stopped at most this
#: many mean gaps between its events short of its end: nothing more was due. (For Poisson
#: traffic a complete window is taken for a cut one with probability e**-5, under 1 %.)
END_GAPS: Final = 5
#: Windows below this index are closed before any event: none.
_NONE_CLOSED: Final = -(1 << 62)


class WatermarkState(msgspec.Struct, array_like=True, frozen=True):
    """What one source's watermark hands over: its newest counted event time and the first
    window still open."""

    max_ts: float
    closed_before: int


class SourceMark(msgspec.Struct, array_like=True, frozen=True):
    """One source's entry in the stage-1 → stage-2 envelope (a 3-array on the wire)."""

    watermark: float   # the end of its closed windows (every window ending by it is closed)
    idle: bool         # read to its end and quiet for the idle timeout
    max_ts: float      # its newest counted event time (hard-rule hits up to it are in order)


class Watermark:
    """The event-time watermark of one source and the windows it has closed.

    ``max_ts`` is moved by the counting (:mod:`detector.core.counting`, in C on the hot path);
    the rest is read once per batch."""

    __slots__ = ("closed_before", "lateness", "max_ts", "size")

    def __init__(self, size: float, lateness: float) -> None:
        self.size = size
        self.lateness = lateness
        self.max_ts = -math.inf          # no event counted yet
        self.closed_before = _NONE_CLOSED   # windows below this index are closed

    def at(self, ts: float) -> float:
        """The watermark once event time reaches ``ts``.

        >>> Watermark(60.0, 30.0).at(100.0)
        70.0
        """
        return ts - self.lateness

    @property
    def time(self) -> float:
        """The watermark now: -inf before any event."""
        return self.at(self.max_ts)

    def upto(self, t: float) -> int:
        """The windows a watermark at ``t`` closes: every index below this (they end by ``t``).

        >>> Watermark(60.0, 30.0).upto(120.0), Watermark(60.0, 30.0).upto(119.9)
        (2, 1)
        """
        return int(t // self.size)

    def due(self) -> bool:
        """Whether the watermark has passed the end of the first open window: a cheap test
        before :meth:`close` (True before the first close, which closes the empty past)."""
        return self.time >= (self.closed_before + 1) * self.size

    def close(self, t: float | None = None) -> int | None:
        """Close the windows a watermark at ``t`` (default: now) closes; the new first open
        window, or None when none closes."""
        t = self.time if t is None else t
        if t == -math.inf:
            return None   # no event yet
        upto = self.upto(t)
        if upto <= self.closed_before:
            return None
        self.closed_before = upto
        return upto

    @property
    def closed(self) -> float:
        """The end of the closed windows: what this source tells stage 2."""
        return float(self.closed_before * self.size)

    def mark(self, idle: bool) -> SourceMark:
        return SourceMark(self.closed, idle, self.max_ts)

    def at_end(self, last: int, events: int) -> float:
        """End of input: the watermark that closes every window event time has passed, and
        the one it stopped in (``last``, holding ``events``) only if input ran to its end
        (see END_GAPS). A window cut short must not be scored as a drop in volume.

        >>> wm = Watermark(60.0, 30.0)
        >>> wm.max_ts = 88.0                 # an event every 2 s, cut at 88 s
        >>> wm.at_end(1, 15)
        60.0
        >>> wm.max_ts = 119.5
        >>> wm.at_end(1, 30)                 # ran to its end
        120.0
        """
        start = last * self.size
        ran_to_end = start + self.size - self.max_ts <= END_GAPS * (self.max_ts - start) / events
        return (last + ran_to_end) * self.size

    def snapshot(self) -> WatermarkState:
        return WatermarkState(self.max_ts, self.closed_before)

    @classmethod
    def build(cls, size: float, lateness: float, state: WatermarkState | None) -> Watermark:
        """A watermark that goes on from ``state`` (None: from nothing)."""
        wm = cls(size, lateness)
        if state is not None:
            wm.max_ts, wm.closed_before = state.max_ts, state.closed_before
        return wm


class WatermarksState(msgspec.Struct, array_like=True, frozen=True):
    """What the watermark over sources hands over: the sources' last marks, and how many
    sources there are."""

    n_src: int
    sources: dict[int, SourceMark]


_WATERMARK: Final = attrgetter("watermark")
_MAX_TS: Final = attrgetter("max_ts")


class Watermarks:
    """The watermark over sources, as their marks report it: the minimum over busy sources;
    None while some have not reported yet (until ``idle_timeout`` seconds after ``born``);
    the maximum when all are idle (everything read and flushed). A source's mark never goes
    back: a new owner of a source starts from nothing."""

    __slots__ = ("born", "idle_timeout", "n_src", "sources")

    def __init__(self, idle_timeout: float, born: float) -> None:
        self.idle_timeout = idle_timeout
        self.born = born
        self.n_src = 0
        self.sources: dict[int, SourceMark] = {}

    def report(self, marks: Mapping[int, SourceMark], n_src: int) -> None:
        self.n_src = max(self.n_src, n_src)
        for p, m in marks.items():
            old = self.sources.get(p)
            self.sources[p] = m if old is None else SourceMark(
                max(m.watermark, old.watermark), m.idle, max(m.max_ts, old.max_ts))

    def watermark(self, now: float) -> float | None:
        """Where windows close: every window ending by it is closed at every busy source."""
        return self._bound(now, _WATERMARK)

    def event_time(self, now: float) -> float | None:
        """The event time every busy source has counted up to (hard-rule hits up to it can go
        in event-time order)."""
        return self._bound(now, _MAX_TS)

    def _bound(self, now: float, of: attrgetter[float]) -> float | None:
        if len(self.sources) < self.n_src and now - self.born < self.idle_timeout:
            return None
        busy = [of(m) for m in self.sources.values() if not m.idle]
        if busy:
            return min(busy)
        return max(map(of, self.sources.values()), default=None)

    def snapshot(self) -> WatermarksState:
        return WatermarksState(self.n_src, dict(self.sources))

    @classmethod
    def build(cls, idle_timeout: float, born: float, state: WatermarksState | None
              ) -> Watermarks:
        """A watermark over sources that goes on from ``state`` (None: from nothing)."""
        ws = cls(idle_timeout, born)
        if state is not None:
            ws.n_src, ws.sources = state.n_src, dict(state.sources)
        return ws
