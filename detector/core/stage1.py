"""Stage 1 of the detection core: runs wherever events land.

Decode, hard rules and per-cohort window partials for one source of events; the partials go to
stage 2 (:mod:`detector.core.stage2`), in one process (:mod:`detector.core.pipeline`) or over a
topic (:mod:`detector.stream`). No Kafka or Faust import here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from detector.config import Config
from detector.core.aggregator import Aggregator
from detector.core.clock import EventClock
from detector.core.events import Rejection, TraceEvent
from detector.core.otlp import Decoder, decoder_for
from detector.core.partials import Partial
from detector.core.rules import HardRules, RuleHit
from detector.core.watermark import Watermark

__all__ = ["Stage1", "Stage1Out"]


class Stage1Out(NamedTuple):
    hits: list[RuleHit]
    rejects: list[Rejection]
    decoded: int
    late: int
    skipped: int = 0   # spans that are not GenAI operations (OTLP input)


class Stage1:
    """Decode, hard rules and window partials for one source of events.

    Event time is believed as :class:`~detector.core.clock.EventClock` says (``event_clock``):
    one event stamped far ahead, or in the wrong unit, is dead-lettered instead of making all
    real traffic late. ``clock`` (epoch seconds) is the wall clock where there is a "now" to
    trust — a live stream, not a recording: events stamped more than
    ``input.max_future_seconds`` ahead of it are rejected, events close to it believed."""

    def __init__(self, config: Config, clock: Callable[[], float] | None = None,
                 decoder: Decoder | None = None) -> None:
        self.agg = Aggregator(config)
        # input.format's decoder unless the caller's source has its own (a trace topic's).
        self.decode = decoder or decoder_for(config.input.format, config.input.otlp)
        # One timestamp may move event time by a window (or the lateness, if longer): a
        # sparse source, one event a minute, is believed as it comes and its last events are
        # not left uncorroborated at the end; a wild clock (minutes, years, milliseconds)
        # is still held or refused.
        w = config.windows
        self.event_clock = EventClock(
            max(w.allowed_lateness_seconds, w.size_seconds), wall=clock,
            max_future=math.inf if clock is None else config.input.max_future_seconds)
        self.rules = HardRules(config)
        self.max_bytes = config.input.max_message_bytes

    @property
    def wm(self) -> Watermark:
        """This source's event-time watermark (moved by the counting)."""
        return self.agg.wm

    def feed(self, data: bytes) -> Stage1Out:
        return self.feed_many([data])

    def feed_many(self, messages: list[bytes]) -> Stage1Out:
        """Several messages at once (a consumer's fetch, a block of lines): one decode call
        for runs of single-event messages instead of one per message."""
        evs, rejects, skipped = self.decode(messages, self.max_bytes)
        evs, doubted = self.event_clock.admit(evs, lambda: self._sizes(messages))
        return self._count(evs, rejects + doubted if doubted else rejects)._replace(
            skipped=skipped)

    def _sizes(self, messages: list[bytes]) -> list[int]:
        """Events per message (decoded again: only asked for when a timestamp is in doubt)."""
        return [len(self.decode([m], self.max_bytes)[0]) for m in messages]

    def finish(self) -> Stage1Out:
        """End of input: the events the clock still holds, counted or dead-lettered."""
        return self._count(*self.event_clock.finish())

    def _count(self, evs: list[TraceEvent], rejects: list[Rejection]) -> Stage1Out:
        late0 = self.agg.late
        hits = self.rules.check_many(evs)
        self.agg.add_many(evs)
        return Stage1Out(hits, rejects, len(evs), self.agg.late - late0)

    def drain(self) -> list[Partial]:
        return self.agg.drain()

    def drain_all(self) -> list[Partial]:
        return self.agg.drain_all()

    def flush(self) -> list[Partial]:
        """Partials of open windows, which stay open (see Aggregator.flush_open)."""
        return self.agg.flush_open()
