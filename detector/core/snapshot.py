"""Stage-2 state as bytes, per route key, for changelog-backed tables (msgpack, zlib).

A worker that takes over a partition loads the route keys' state instead of warming up again.
The document says its format version. v2 is plain msgpack throughout: baselines are written
by ``baselines.codec`` as numbers under registry tags, so state outlives module moves and river
upgrades. v1 (e45989b and before: baselines pickled inside) still loads and is upgraded in
memory; the next dump writes v2. A route's state is decoded and checked whole before any of it
is applied: bad bytes are a ``ValueError`` and leave ``s`` as it was.

>>> from detector.config import load_config
>>> from detector.core.stage2 import Stage2
>>> s = Stage2(load_config(None))
>>> s2 = Stage2(load_config(None)); load_route(s2, dump_route(s, "a\\x1fproduction"))
>>> s2.models == {}
True
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import Any

import msgspec

from baselines import codec, quantity, rate
from baselines.sequential import Cusum
from detector.core.attribution import Trail
from detector.core.lifecycle import Incident
from detector.core.partials import Partial, decode_partial, encode
from detector.core.scoring import CohortModel
from detector.core.stage2 import Stage2

__all__ = ["FORMAT", "dump_input", "dump_route", "load_input", "load_route", "routes"]

FORMAT = 2
_INCIDENT_FIELDS = Incident.__slots__
#: A changelog value is input like any other: refuse to inflate one past this.
MAX_STATE_BYTES = 64 << 20
_Num = int | float


class _Version(msgspec.Struct):
    v: Any = None


class _Model(msgspec.Struct, array_like=True):
    level: int
    cohort: list[str]
    windows: int
    persist: dict[str, int]
    versions: list[dict[str, list[_Num]]]
    recent: dict[str, list[tuple[int, _Num, _Num, _Num]]]
    baselines: dict[str, Any]      # v2: codec values; v1: pickled bytes
    # Added in format 2 (absent from format 1, which had none of them):
    seq: dict[str, list[float]] = {}            # per signal: the CUSUMs' statistics
    episodes: dict[str, list[float]] = {}       # per signal: the anomalous episode
    rebased: dict[str, int] = {}                # per signal: the last forced re-baseline
    # Added later in format 2 (absent: none yet, it fills again from the next windows):
    trail: list[Any] | None = None              # per-value counters (attribution.Trail)


class _Alert(msgspec.Struct, array_like=True):
    cohort: list[str]
    signal: str
    level: int
    fields: dict[str, Any]


class _Route(msgspec.Struct):
    v: int
    next_window: int | None
    models: list[_Model]
    pending: list[bytes]
    alerts: list[_Alert]


def routes(s: Stage2) -> set[str]:
    """Every route key this instance holds state for."""
    out = {s.route_of(*key) for key in s.models}
    out |= {p.route for slot in s.pending.values() for p in slot.values()}
    out |= {s.route_of(k[1], k[2]) for k in s.life.active}
    return out


def dump_route(s: Stage2, route: str, part: str = "all",
               windows: Iterable[int] | None = None) -> bytes:
    """One route key's state: ``part`` "models" (models and alerts: they change when a window
    is scored or a hit applied), "pending" (partials not yet scored: they change with every
    input; only those of ``windows`` when given), or "all". :func:`load_route` merges any of
    them."""
    if part not in ("all", "models", "pending"):
        raise ValueError(f"unknown part {part!r}")
    slots = sorted(s.pending) if windows is None else sorted(w for w in set(windows)
                                                             if w in s.pending)
    models = [] if part == "pending" else [
        [lvl, list(cohort), m.windows, m.persist, m.versions, m.recent,
         {name: codec.encode(b) for name, b in sorted(m.baselines.items())},
         {name: c.state() for name, c in sorted(m.seq.items())}, m.episodes, m.rebased,
         m.trail.state() if m.trail is not None else None]
        for (lvl, cohort), m in sorted(s.models.items()) if s.route_of(lvl, cohort) == route
    ]
    pending = [] if part == "models" else [
        encode(p) for w in slots for _, p in sorted(s.pending[w].items())
        if p.route == route]
    alerts = [] if part == "pending" else [
        [list(key[2]), key[0], key[1], {f: getattr(inc, f) for f in _INCIDENT_FIELDS}]
        for key, inc in sorted(s.life.active.items()) if s.route_of(key[1], key[2]) == route
    ]
    doc = msgspec.msgpack.encode({"v": FORMAT, "next_window": s.next_window, "models": models,
                                  "pending": pending, "alerts": alerts})
    # Baselines repeat their shape: level-1 zlib shrinks a busy route key several-fold for
    # little time (bench/state.py measures both), and this is rewritten on every change.
    return zlib.compress(doc, 1)


def dump_input(partials: list[bytes]) -> bytes:
    """Partials (encoded) as they came, in order: a route document with only its pending
    input (:func:`load_route` reads it too), for the stream's input records."""
    doc = msgspec.msgpack.encode({"v": FORMAT, "next_window": None, "models": [],
                                  "pending": partials, "alerts": []})
    return zlib.compress(doc, 1)


def load_input(data: bytes) -> list[Partial]:
    """The partials of :func:`dump_input`'s bytes, in order."""
    raw = _inflate(data)
    try:
        return [decode_partial(p) for p in msgspec.msgpack.decode(raw, type=_Route).pending]
    except msgspec.DecodeError as e:
        raise ValueError(f"stage-2 input: {e}") from None


def _inflate(data: bytes) -> bytes:
    z = zlib.decompressobj()
    try:
        raw = z.decompress(data, MAX_STATE_BYTES)
    except zlib.error as e:
        raise ValueError(f"stage-2 state is not zlib data: {e}") from None
    if z.unconsumed_tail or not z.eof:
        raise ValueError(f"stage-2 state is larger than {MAX_STATE_BYTES} bytes or truncated")
    return raw


def load_route(s: Stage2, data: bytes) -> None:
    """Merge one route key's state into ``s`` (replacing what it held for those cohorts)."""
    raw = _inflate(data)
    try:
        v = msgspec.msgpack.decode(raw, type=_Version).v
        if v not in (1, FORMAT):
            raise ValueError(f"unknown stage-2 state version {v!r}")
        doc = msgspec.msgpack.decode(raw, type=_Route)
        models = {(m.level, tuple(m.cohort)): _model(m, v) for m in doc.models}
        pending = [decode_partial(p) for p in doc.pending]
        alerts = {(a.signal, a.level, tuple(a.cohort)): _incident(a) for a in doc.alerts}
    except RecursionError:
        raise ValueError("stage-2 state nests too deep") from None
    except msgspec.DecodeError as e:
        raise ValueError(f"stage-2 state: {e}") from None
    _apply(s, doc.next_window, models, pending, alerts)


def _model(m: _Model, version: int) -> CohortModel:
    out = CohortModel(m.level)
    out.windows = m.windows
    out.persist = m.persist
    out.recent = m.recent
    out.versions = m.versions
    where = f"model {m.level}/{'/'.join(m.cohort)}"
    if m.trail is not None:
        try:
            out.trail = Trail.from_state(m.trail)
        except ValueError as e:
            raise ValueError(f"stage-2 state {where}: {e}") from None
    for name, st in m.seq.items():
        try:
            out.seq[name] = Cusum.from_state(st)
        except ValueError as e:
            raise ValueError(f"stage-2 state {where}: sequential {name!r}: {e}") from None
    for name, ep in m.episodes.items():
        if len(ep) != 6 or not all(math.isfinite(x) for x in ep):
            raise ValueError(f"stage-2 state {where}: episode {name!r} is not 6 numbers")
    out.episodes = m.episodes
    out.rebased = m.rebased
    for name, b in m.baselines.items():
        if version == 1:
            if not isinstance(b, bytes):
                raise ValueError(f"stage-2 state {where}: baseline {name!r} is not bytes")
            obj = codec.loads_v1(b)
        else:
            obj = codec.decode(b)
        if not isinstance(obj, codec.CLASSES):
            raise ValueError(f"stage-2 state {where}: baseline {name!r} is not a baseline")
        # A rate's and a quantity's state is written as the reference's; it runs in the C
        # twin when built (checked above: a codec class).
        out.baselines[name] = quantity.as_twin(rate.as_twin(obj))
    return out


def _incident(a: _Alert) -> Incident:
    f = a.fields
    try:
        inc = Incident(a.signal, f["cohort"], f["starts_at"], f["rule"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"stage-2 state: alert {a.signal!r} lacks or garbles {e}") from None
    for name in _INCIDENT_FIELDS:   # a field added to Incident since keeps its fresh value
        if name in f:
            fresh = getattr(inc, name)
            v = f[name]
            if fresh is not None and v is not None and not _same_kind(v, fresh):
                raise ValueError(f"stage-2 state: alert {a.signal!r} field {name!r} is a "
                                 f"{type(v).__name__}, not a {type(fresh).__name__}")
            setattr(inc, name, v)
    return inc


def _same_kind(v: object, fresh: object) -> bool:
    num = (int, float)
    if isinstance(fresh, num) and not isinstance(fresh, bool):
        return isinstance(v, num) and not isinstance(v, bool)
    return type(v) is type(fresh)


def _apply(s: Stage2, nw: int | None, models: dict[tuple[int, tuple[str, ...]], CohortModel],
           pending: list[Partial], alerts: dict[tuple[str, int, tuple[str, ...]], Incident]
           ) -> None:
    if nw is not None and (s.next_window is None or nw > s.next_window):
        s.next_window = nw
    s.models.update(models)
    for p in pending:
        # (A state written before the route left the environment out holds the old key.)
        p.route = s.route_of(p.level, p.cohort)
        s.add_partial(p)
    s.life.active.update(alerts)
