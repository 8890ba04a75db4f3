"""Stage 1 and stage 2 in one process: what ``detector replay`` runs.

The Faust app runs the same two stages with a topic between them (:mod:`detector.stream`), so
both give the same alerts.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Final

from detector.config import Config
from detector.core.alert import Alert
from detector.core.events import Rejection
from detector.core.otlp import Decoder
from detector.core.shards import ShardedStage2
from detector.core.stage1 import Stage1
from detector.core.stage2 import Stage2

__all__ = ["Pipeline"]

_TS: Final = attrgetter("ts")


class Pipeline:
    """Stage 1 and stage 2 in one process: bytes in, alerts out."""

    def __init__(self, config: Config, decoder: Decoder | None = None, shards: int = 1) -> None:
        self.stage1 = Stage1(config, decoder=decoder)
        # More than one shard: stage 2 split by the finest cohort (the same alerts).
        self.stage2 = Stage2(config) if shards == 1 else ShardedStage2(config, shards)
        self.rejects: list[Rejection] = []
        self.decoded = 0
        self.skipped = 0
        self.late = 0
        self.messages = 0

    def feed(self, data: bytes) -> list[Alert]:
        return self.feed_many([data])

    def feed_many(self, messages: list[bytes]) -> list[Alert]:
        """Feed messages in order; returns the alert emissions they caused."""
        out = self.stage1.feed_many(messages)
        self.messages += len(messages)
        self.decoded += out.decoded
        self.late += out.late
        self.skipped += out.skipped
        if out.rejects:
            self.rejects.extend(out.rejects)
        wm = self.stage1.wm
        watermark = None
        # Cheap test first: a window can only close when the watermark passes its end.
        if wm.due():
            partials = self.stage1.drain()
            if partials:
                for p in partials:
                    self.stage2.add_partial(p)
                watermark = wm.closed
        return self.stage2.apply(sorted(out.hits, key=_TS), watermark)

    def finish(self) -> list[Alert]:
        """End of input: count what the event clock still held (or dead-letter it), then close
        every window input ran to the end of (:meth:`Aggregator.drain_complete`). The window
        it stopped in is not scored, as a stream never scores it before its end passes."""
        out = self.stage1.finish()
        self.decoded += out.decoded
        self.late += out.late
        self.rejects.extend(out.rejects)
        for p in self.stage1.agg.drain_complete():
            self.stage2.add_partial(p)
        return self.stage2.apply(sorted(out.hits, key=_TS), self.stage1.wm.closed)

    def take_rejects(self) -> list[Rejection]:
        out, self.rejects = self.rejects, []
        return out
