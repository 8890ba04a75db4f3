"""Stage 2's state for one stage-2 partition on this worker, without Faust: its
:class:`~detector.core.shards.Peer` (the finest cohorts hashed to this partition, a replica of
every coarser one and of the lifecycle; decision 0010), the source partitions' watermarks as
the envelopes report them, the hard-rule hits held until every busy source has passed them,
and the table's keys and value format (:func:`table_key`, :func:`pack` / :func:`unpack`)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from functools import lru_cache

import msgspec

from detector.config import Config
from detector.core.partials import route_key
from detector.core.rules import RuleHit, decode_hit, encode_hit
from detector.core.shards import Peer
from detector.core.watermark import SourceMark, Watermarks
from detector.stream.kafka_io import partition_for

__all__ = ["EXCHANGE", "INPUT", "MODELS", "PENDING", "Stage2Partition", "key_name", "legacy",
           "owner", "pack", "pending_key", "pending_window", "table_key", "unpack"]

#: The first byte of a partition's exchange-state key (route keys never start with it).
EXCHANGE = b"\x1d"
#: Then a number (the partition's offset when written): input as it came between two saves.
INPUT = b"\x1dI"
#: After a route key: its models and alerts' record, and its pending input's records (the
#: route key's held hits; and one per window, the window's number after it).
MODELS = b"\x1cM"
PENDING = b"\x1cP"


def owner(partitions: int) -> Callable[[tuple[str, ...]], int]:
    """The stage-2 partition that owns a finest cohort: the Kafka partitioner on its route
    key, so a table key's changelog partition matches (stage 1 sends by it, peers hold by it)."""
    return lambda c: partition_for(route_key(c).encode(), partitions)


@lru_cache(maxsize=65536)
def table_key(name: bytes, q: int, partitions: int) -> bytes:
    """The table key of ``name`` (a route key, or :data:`EXCHANGE`) on stage-2 partition
    ``q``: every partition keeps its own copy of a route key's coarser cohorts, and the
    changelog partition of a key is the one its hash picks (``use_partitioner``), so the key
    carries the first suffix that hashes to ``q``."""
    for salt in range(1 << 20):
        key = b"%s\x1e%d" % (name, salt)
        if partition_for(key, partitions) == q:
            return key
    raise ValueError(f"no table key for partition {q} of {partitions}")


def legacy(key: bytes) -> bool:
    """Whether a table key is a record written before the split: a plain route key."""
    return b"\x1e" not in key


def key_name(key: bytes) -> bytes:
    return key.rpartition(b"\x1e")[0]


def pending_key(route: str, window: int, q: int, partitions: int) -> bytes:
    """The table key of a route key's pending input of one window on partition ``q``."""
    return table_key(b"%s%s%d" % (route.encode(), PENDING, window), q, partitions)


def pending_window(name: bytes) -> tuple[str, int | None] | None:
    """(route key, window) of a pending-input record's name; window None: the route key's
    record of held hits (before per-window records, its pending input too); None: not a
    pending-input record."""
    route, sep, tail = name.rpartition(PENDING)
    if not sep:
        return None
    return route.decode(), int(tail) if tail else None


def pack(state: bytes, hits: list[RuleHit], offset: int) -> bytes:
    """Table value: the route key's stage-2 state, its hits not yet released, and the offset
    of the last stage-2 message applied (a successor skips what the state already holds)."""
    return msgspec.msgpack.encode([state, [encode_hit(h) for h in hits], offset])


def unpack(value: bytes) -> tuple[bytes, list[RuleHit], int]:
    state, hits, offset = msgspec.msgpack.decode(value)
    return state, [decode_hit(h) for h in hits], offset


class Stage2Partition:
    """This worker's share of one stage-2 partition: one Stage2 for its route keys (their
    state is written per route key), and the watermark of every source partition as the
    envelopes report it."""

    def __init__(self, q: int, cfg: Config, idle_timeout: float, partitions: int) -> None:
        self.q = q
        self.cfg = cfg
        self.marks = Watermarks(idle_timeout, born=time.monotonic())
        # Where stage 1 sends a finest cohort's partials (Stage1Runner._flush) is its owner.
        self.stage2 = Peer(cfg, q, partitions, owner=owner(partitions))
        self.resent_at = time.monotonic()
        self.applied = float("-inf")
        self.offset = -1   # last stage-2 message applied to this state
        self.held: list[tuple[float, int, RuleHit]] = []   # heap of hits not yet released
        self._seq = 0
        # The table keys of pending-input records of (route key, window) as written before
        # INPUT records (and for a route key restored from one older still): deleted once
        # the window is scored.
        self.windows: dict[tuple[str, int], bytes] = {}
        # Input since the last save, as it came: (route key, window, encoded partial).
        self.fresh: list[tuple[str, int, bytes]] = []
        # The table keys of input records (INPUT) and the windows each holds input of: one
        # record a save, deleted once none of its windows is pending.
        self.inputs: dict[bytes, set[int]] = {}

    def hold(self, h: RuleHit) -> None:
        self._seq += 1
        heapq.heappush(self.held, (h.ts, self._seq, h))

    def release(self, now: float) -> list[RuleHit]:
        """Hits whose event time every busy source partition has reached, in event time:
        partitions consumed at different speeds must not reorder an incident's hits (its
        id is its first hit). Live, that is one flush interval; in a backlog, it orders."""
        bound = self.marks.event_time(now)
        out = []
        while self.held and bound is not None and self.held[0][0] <= bound:
            out.append(heapq.heappop(self.held)[2])
        return out

    def held_for(self, route: str) -> list[RuleHit]:
        return [h for _, _, h in self.held if h.route == route]

    def report(self, sources: dict[int, SourceMark], n_src: int) -> None:
        self.marks.report(sources, n_src)

    def watermark(self, now: float) -> float | None:
        """Where this partition's windows close (see :class:`Watermarks`)."""
        return self.marks.watermark(now)
