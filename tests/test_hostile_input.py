"""Hostile input: whatever arrives, decoding never raises, a poison message is dead-lettered
alone with a clear reason, and nothing a producer put in a field reaches a dead letter whole."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from detector.config import Config
from detector.events import TraceEvent, decode, decode_many
from detector.pipeline import Stage1

GOOD = b'{"ts": 1700000000, "operation": "chat", "tenant": "t1", "app": "a"}'
MARK = "PROMPTTEXTMARKER"


def _deep(levels: int) -> bytes:
    """An event with a ``levels``-deep array in a field outside the contract."""
    return GOOD[:-1] + b', "x": ' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize("levels", [1000, 3000, 100_000])
def test_deep_nesting_is_dead_lettered_alone_in_every_decode_path(levels: int) -> None:
    poison = _deep(levels)
    ok, bad = decode(poison)
    assert ok == [] and [r.reason for r in bad] == ["too_deep"]
    assert set(bad[0].payload) == {"bytes", "sha256"} and bad[0].to_json()
    # A batch that holds it cannot be split into items: it is one poison message.
    ok, bad = decode(b"[" + GOOD + b"," + poison + b"]")
    assert ok == [] and [r.reason for r in bad] == ["too_deep"]
    # In a run of messages, only the poison one is lost.
    ok, bad = decode_many([GOOD] * 2000 + [poison] + [GOOD] * 2000)
    assert len(ok) == 4000 and [(r.reason, r.message) for r in bad] == [("too_deep", 2000)]


def test_stage1_keeps_a_fetch_with_a_deep_message(config: Config) -> None:
    """4,000 good messages and one poison message in one fetch: 4,000 events, one reject."""
    out = Stage1(config).feed_many([GOOD] * 3000 + [_deep(1000)] + [GOOD] * 1000)
    assert out.decoded == 4000 and [r.reason for r in out.rejects] == ["too_deep"]


def test_dead_letters_of_deep_or_huge_contract_values_can_be_written() -> None:
    """A contract field holding nesting deeper than orjson writes, or an integer beyond 64
    bits, is rejected and its dead letter still serialises (bounded)."""
    deep = GOOD[:-1] + b', "safety_hits": ' + b"[" * 300 + b"]" * 300 + b"}"
    huge = GOOD[:-1] + b', "retries": -' + b"9" * 40 + b"}"
    wide = GOOD[:-1] + b', "safety_hits": [' + b",".join([b'"pii"'] * 1000) + b"]}"
    for msg, reason in ((deep, "wrong_type"), (huge, "out_of_range"), (wide, "out_of_range")):
        for (ok, bad), good in ((decode(msg), 0), (decode(b"[" + msg + b"," + GOOD + b"]"), 1),
                                (decode_many([GOOD, msg, GOOD]), 2)):
            assert [r.reason for r in bad] == [reason] and len(ok) == good
            assert len(bad[0].to_json()) < 2000
    assert decode(huge)[1][0].payload["retries"] == {"json_type": "int", "bits": 133}


_STRING_FIELDS = [f for f in TraceEvent.__struct_fields__ if f != "override_reason"]


@pytest.mark.parametrize("field", _STRING_FIELDS)
def test_a_long_value_in_any_field_is_kept_as_prefix_length_and_digest(field: str) -> None:
    value = "x" * 300 + MARK
    msg = orjson.dumps({"ts": 1700000000, "operation": "chat", field: value})
    for _, bad in (decode(msg), decode(b"[" + msg + b"]"), decode_many([msg, GOOD])):
        assert len(bad) == 1, field
        out = bad[0].to_json()
        assert MARK.encode() not in out, (field, out)
        assert bad[0].payload[field] == {
            "prefix": "x" * (8 if field.endswith("_id") else 16), "chars": 316,
            "sha256": hashlib.sha256(value.encode()).hexdigest()[:16]}


def test_no_field_or_field_name_carries_text_into_a_dead_letter() -> None:
    """Every contract field at once (so all but the first are unvalidated when msgspec stops),
    ids of the right length that are not hex, an enum value, list items, and field names."""
    long = "x" * 70 + MARK
    ev: dict = {f: long for f in _STRING_FIELDS}
    ev["safety_hits"] = ["pii", long] + ["pii"] * 100
    ev["y" * 100 + MARK] = 1
    ev.update({f"extra{i}": MARK for i in range(100)})
    cases = [ev, dict(ev, ts=1, operation="chat"),
             {"ts": 1, "operation": "chat", "trace_id": "x" * 16 + MARK},
             {"ts": 1, "operation": "chat", "span_id": "x" * 8 + MARK[:8]},
             {"ts": 1, "operation": "chat", "tool_side_effect": "x" * 20 + MARK},
             {"ts": 1, "operation": "chat", "refusal": "x" * 20 + MARK},
             {"ts": 1, "operation": "chat", "retries": -1, "trace_id": "x" * 16 + MARK,
              "z" * 70 + MARK: {MARK: MARK}}]
    for case in cases:
        msg = orjson.dumps(case)
        for _, bad in (decode(msg), decode(b"[" + msg + b"]"), decode_many([GOOD, msg])):
            assert len(bad) == 1
            assert MARK[:8].encode() not in bad[0].to_json(), (case, bad[0])
    payload = decode(orjson.dumps(ev))[1][0].payload
    assert len(payload["_dropped_fields"]) == 32 and payload["_dropped_field_count"] == 101
    assert len(payload["safety_hits"]) == 33 and payload["safety_hits"][-1] == {"more_items": 70}


def test_short_contract_values_stay_readable() -> None:
    """Within the bounds, a dead letter still shows what was wrong."""
    msg = b'{"ts": 1, "operation": "chat", "tenant": "acme", "retries": -1, "prompt": "p"}'
    bad = decode(msg)[1][0]
    assert bad.payload == {"ts": 1, "operation": "chat", "tenant": "acme", "retries": -1,
                           "_dropped_fields": ["prompt"]}
