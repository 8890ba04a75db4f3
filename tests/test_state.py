from __future__ import annotations

import zlib

import msgspec
import pytest

from detector import state
from detector.pipeline import Pipeline
from tests.traffic import stream


def test_state_round_trips_compressed_and_refuses_bombs(config, monkeypatch) -> None:
    pipe = Pipeline(config)
    for m in stream(40):
        pipe.feed(m)
    (route,) = state.routes(pipe.stage2)
    blob = state.dump_route(pipe.stage2, route)
    raw = zlib.decompress(blob)
    assert len(blob) * 3 < len(raw)               # compression earns its keep
    fresh = Pipeline(config)
    state.load_route(fresh.stage2, blob)
    assert state.dump_route(fresh.stage2, route) == blob
    bomb = zlib.compress(msgspec.msgpack.encode({"v": 1, "pad": "x" * 100_000}))
    monkeypatch.setattr(state, "MAX_STATE_BYTES", 10_000)
    with pytest.raises(ValueError, match="larger than"):
        state.load_route(fresh.stage2, bomb)
    with pytest.raises(zlib.error):
        state.load_route(fresh.stage2, b"not state")
