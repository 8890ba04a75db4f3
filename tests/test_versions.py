"""Version combinations are named tuples end to end; the joined strings written before still
load (old state, envelopes in flight, held hits)."""

from __future__ import annotations

import msgspec
import pytest

from detector.core.alert import alert_record
from detector.core.partials import (
    LegacyPartial,
    Partial,
    Versions,
    decode_partial,
    empty_partial,
    encode,
)
from detector.core.pipeline import Pipeline
from detector.core.rules import LegacyHit, RuleHit, decode_hit, encode_hit
from detector.stream.stage1_runner import Envelope, decode_envelope, encode_envelope
from detector.stream.stage2_partition import pack, unpack
from tests.traffic import stream


def test_a_version_holding_the_old_separator_is_named_whole(config) -> None:
    """A prompt version with a \\x1f in it was split into two fields (the policy version
    came out as its tail); it is one value now, and the suspected change names it."""
    def fx(m: int, c: dict) -> dict:
        return {"refusal": 0.30} if 40 <= m < 50 else {}

    def ver(m: int, c: dict) -> dict:
        return {"prompt_version": "v\x1f2" if m >= 40 else "v\x1f1"}

    pipe = Pipeline(config)
    alerts = [alert_record(a) for m in stream(45, effect=fx, versions=ver)
              for a in pipe.feed(m)]
    firing = [a for a in alerts if a["signal"] == "refusal_rate"]
    assert firing
    change = firing[0]["suspected_change"]
    assert {k: change[k] for k in ("field", "baseline", "now")} == {
        "field": "prompt_version", "baseline": "v\x1f1", "now": "v\x1f2"}
    model = pipe.stage2.models[(1, ("acme", "agent", "production"))]
    assert set(model.versions[2]) == {"p1"}   # the policy version is the policy version


def test_partials_written_with_joined_combinations_load_upgraded() -> None:
    old = LegacyPartial(3, 0, ("agent", "production"), [1, 2], {}, {},
                        {"m1\x1fv1\x1fp1": 5, "unknown\x1funknown\x1funknown": 1}, "r")
    p = decode_partial(encode(old))
    assert type(p) is Partial
    assert p.versions == {Versions("m1", "v1", "p1"): 5,
                          Versions("unknown", "unknown", "unknown"): 1}
    assert (p.window, p.level, p.cohort, p.counts, p.route) == (
        3, 0, ("agent", "production"), [1, 2], "r")
    new = empty_partial(3, 0, ("agent", "production"), 2, "r")
    new.versions = {Versions("m1", "v1", "p1"): 5}
    assert decode_partial(encode(new)) == new


def test_held_hits_written_with_joined_combinations_load_upgraded() -> None:
    old = LegacyHit("unauthorized_tool_call", ("acme", "agent", "production"), 60.0, "t" * 32,
                    "m1\x1fv1\x1fp1", "agent\x1fproduction")
    hit = decode_hit(encode_hit(old))
    assert type(hit) is RuleHit and hit.versions == Versions("m1", "v1", "p1")
    state, hits, offset = unpack(pack(b"s", [old], 7))   # a stage-2 table value from before
    assert (state, hits, offset) == (b"s", [hit], 7)


def test_envelopes_in_flight_from_before_load_upgraded() -> None:
    old = Envelope({0: (60.0, False, 61.0)}, 1,
                   [LegacyPartial(3, 0, ("a",), [1], {}, {}, {"m\x1fv\x1fp": 1}, "a")],
                   [LegacyHit("x", ("a",), 61.0, None, "m\x1fv\x1fp", "a")])
    env = decode_envelope(encode_envelope(old))
    assert env.partials[0].versions == {Versions("m", "v", "p"): 1}
    assert env.hits[0].versions == Versions("m", "v", "p")


def test_a_garbled_partial_is_still_a_decode_error() -> None:
    bad = msgspec.msgpack.encode([1, 0, ["a"], [1], {}, {}, {"x": "not a count"}, "r"])
    with pytest.raises(msgspec.ValidationError, match="Expected `int`"):
        decode_partial(bad)
