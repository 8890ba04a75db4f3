"""Stage-2 state as bytes, per route key, for changelog-backed tables (msgpack, zlib).

A worker that takes over a partition loads the route keys' state instead of warming up again.
The encoding is msgpack of plain data; baselines inside it go through ``baselines.codec``,
whose unpickler admits only baseline classes.

>>> from detector.config import load_config
>>> from detector.pipeline import Stage2
>>> s = Stage2(load_config(None))
>>> s2 = Stage2(load_config(None)); load_route(s2, dump_route(s, "a\\x1fproduction"))
>>> s2.models == {}
True
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from baselines import codec
from detector.alerts import Incident
from detector.partials import decode_partial, encode
from detector.pipeline import Stage2
from detector.scoring import CohortModel

__all__ = ["dump_route", "load_route", "routes"]

_INCIDENT_FIELDS = Incident.__slots__
#: A changelog value is input like any other: refuse to inflate one past this.
MAX_STATE_BYTES = 64 << 20


def routes(s: Stage2) -> set[str]:
    """Every route key this instance holds state for."""
    out = {s.route_of(*key) for key in s.models}
    out |= {p.route for slot in s.pending.values() for p in slot.values()}
    out |= {s.route_of(k[1], k[2]) for k in s.life.active}
    return out


def dump_route(s: Stage2, route: str) -> bytes:
    models = [
        [lvl, list(cohort), m.windows, m.persist, m.versions, m.recent,
         {name: codec.dumps(b) for name, b in sorted(m.baselines.items())}]
        for (lvl, cohort), m in sorted(s.models.items()) if s.route_of(lvl, cohort) == route
    ]
    pending = [encode(p) for w in sorted(s.pending) for _, p in sorted(s.pending[w].items())
               if p.route == route]
    alerts = [
        [list(key[2]), key[0], key[1], {f: getattr(inc, f) for f in _INCIDENT_FIELDS}]
        for key, inc in sorted(s.life.active.items()) if s.route_of(key[1], key[2]) == route
    ]
    doc = msgspec.msgpack.encode({"v": 1, "next_window": s.next_window, "models": models,
                                  "pending": pending, "alerts": alerts})
    # Baselines repeat their shape: level-1 zlib shrinks a busy route key ~10x (279 KB to
    # 27 KB measured) for about a millisecond, and this is rewritten on every change.
    return zlib.compress(doc, 1)


def load_route(s: Stage2, data: bytes) -> None:
    """Merge one route key's state into ``s`` (replacing what it held for those cohorts)."""
    z = zlib.decompressobj()
    raw = z.decompress(data, MAX_STATE_BYTES)
    if z.unconsumed_tail or not z.eof:
        raise ValueError(f"stage-2 state is larger than {MAX_STATE_BYTES} bytes or truncated")
    doc: dict[str, Any] = msgspec.msgpack.decode(raw)
    if doc.get("v") != 1:
        raise ValueError(f"unknown stage-2 state version {doc.get('v')!r}")
    nw = doc["next_window"]
    if nw is not None and (s.next_window is None or nw > s.next_window):
        s.next_window = nw
    for lvl, cohort, windows, persist, versions, recent, bls in doc["models"]:
        m = CohortModel(lvl)
        m.windows = windows
        m.persist = dict(persist)
        m.recent = {k: [tuple(e) for e in v] for k, v in recent.items()}
        m.versions = [{k: list(e) for k, e in v.items()} for v in versions]
        m.baselines = {name: codec.loads(b) for name, b in bls.items()}
        s.models[(lvl, tuple(cohort))] = m
    for raw in doc["pending"]:
        s.add_partial(decode_partial(raw))
    for cohort, signal, lvl, fields in doc["alerts"]:
        inc = Incident.__new__(Incident)
        for f in _INCIDENT_FIELDS:
            setattr(inc, f, fields[f])
        s.life.active[(signal, lvl, tuple(cohort))] = inc
