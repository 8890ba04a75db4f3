"""Hostile input: whatever arrives, decoding never raises, a poison message is dead-lettered
alone with a clear reason, and nothing a producer put in a field reaches a dead letter whole."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.config import Config
from detector.core.events import REASONS, TraceEvent, decode, decode_many
from detector.core.stage1 import Stage1
from detector.lab import tracefile
from detector.lab.tracefile import Oversized, read_lines

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
    # A batch that holds it is split around it, without recursion: only the deep item goes.
    ok, bad = decode(b"[" + GOOD + b"," + poison + b"]")
    assert len(ok) == 1 and [r.reason for r in bad] == ["too_deep"]
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


# -- stage 1 as a whole, property-tested ----------------------------------------------------

#: JSON values in raw form, each with whether it makes its whole message unsplittable
#: (bad syntax, or nesting past the decoder's limit) rather than only its own item bad.
_SYNTAX_POISON = [b"NaN", b"Infinity", b"-Infinity", b"[1,]", b"{" * 3000 + b"}" * 3000]
# Well-formed but too deep for the decoder: the item that holds it goes, a batch is split
# around it.
_DEPTH_POISON = [b"[" * 20_000 + b"]" * 20_000]
_ITEM_POISON = [*_DEPTH_POISON, b"1e400", b"-1e999", b"1" + b"0" * 400, b'"\xff\xfe"',
                b'"\xed\xa0\x80"', b'"' + b"y" * 200_000 + b'"', b"[" * 40 + b"]" * 40,
                b'{"a": {"b": [1, {}]}}',
                b"-1", b"18446744073709551616", b"1.7976931348623157e308", b'""', b"null"]
_FIELDS = [*(f for f in TraceEvent.__struct_fields__ if f != "ts"), "x", "prompt", "p" * 100]
_plain = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=80),
                   st.lists(st.text(max_size=8), max_size=40))


def _json(v: object) -> bytes:
    return json.dumps(v).encode()   # not orjson: it writes no integer past 64 bits


@st.composite
def _item(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    """One item of a message: (raw JSON, poisons the whole message, its first poison is
    nesting past the decoder's limit)."""
    kind = draw(st.sampled_from(["good", "hostile", "scalar", "missing"]))
    if kind == "scalar":
        return draw(st.sampled_from([b"5", b'"event"', b"true", b"null", b"1e400"])), False, False
    base = {"ts": draw(st.sampled_from([1700000000, 1700000030.5, "2023-11-14T22:13:20Z"])),
            "operation": draw(st.sampled_from(["chat", "execute_tool", "x" * 70])),
            "tenant": draw(st.sampled_from(["t1", "t2"])), "app": "a"}
    if kind == "missing":
        base.pop(draw(st.sampled_from(["ts", "operation"])))
    pairs = [(orjson.dumps(k), orjson.dumps(v)) for k, v in base.items()]
    poison = deep = False
    if kind == "hostile":
        for _ in range(draw(st.integers(1, 4))):
            # "ts" may come again (a duplicate key), but never as a valid far-off time:
            # huge timestamps are the windowing's concern, not decoding's.
            key = draw(st.sampled_from([*_FIELDS, "ts"]))
            if key == "ts":
                raw = draw(st.sampled_from([b'"yesterday"', b"-5", b"[]", b"NaN"]))
            else:
                raw = draw(st.one_of(st.sampled_from(_SYNTAX_POISON + _ITEM_POISON),
                                     _plain.map(_json)))
            pairs.insert(draw(st.integers(0, len(pairs))), (orjson.dumps(key), raw))
        # The decoder stops at the first poison it reads: bad syntax makes the message one
        # rejection, nesting past its limit (read first) splits the batch around this item.
        first = next((v for _, v in pairs if v in _SYNTAX_POISON or v in _DEPTH_POISON), None)
        poison = first in _SYNTAX_POISON
        deep = first in _DEPTH_POISON
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}", poison, deep


@st.composite
def _message(draw: st.DrawFn) -> tuple[bytes, int]:
    """A message and how many outcomes (events + rejections) it must give."""
    if draw(st.integers(0, 4)) == 0:
        data = draw(st.binary(max_size=200))
        return data, _outcomes_of_bytes(data)
    items = draw(st.lists(_item(), min_size=1, max_size=6))
    if len(items) == 1 and draw(st.booleans()):
        data, n = items[0][0], 1
    else:
        data = b"[" + b", ".join(i for i, _, _ in items) + b"]"
        # The first poisoned item (in reading order) decides: bad syntax makes the whole
        # message one rejection; too deep splits the batch, every item its own outcome.
        first = next(((p, d) for _, p, d in items if p or d), (False, False))
        n = 1 if first[0] else len(items)
    return data, 1 if len(data) > 1 << 20 else n


def _outcomes_of_bytes(data: bytes) -> int:
    """Arbitrary bytes: one outcome, or one per item if they happen to form a JSON array."""
    if data.lstrip()[:1] != b"[":
        return 1
    try:
        return len(msgspec.json.decode(data, type=list[msgspec.Raw]))
    except msgspec.DecodeError:
        return 1


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_message(), max_size=12))
def test_stage1_never_raises_and_accounts_for_every_message(config: Config,
                                                             messages: list) -> None:
    stage1 = Stage1(config)
    out = stage1.feed_many([m for m, _ in messages])
    end = stage1.finish()    # what the event clock still held, counted or dead-lettered
    assert (out.decoded + len(out.rejects) + end.decoded + len(end.rejects)
            == sum(n for _, n in messages))
    for r in out.rejects + end.rejects:
        assert r.reason in REASONS and len(r.to_json()) < 4096
    decoding = [r.message for r in out.rejects if r.reason != "bad_timestamp"]
    assert sorted(decoding) == decoding
    assert all(0 <= r.message < max(len(messages), 1) for r in out.rejects + end.rejects)


def test_replay_of_hostile_lines_exits_0_with_every_line_accounted_for(tmp_path: Path) -> None:
    lines, outcomes = [], 0
    for raw in _SYNTAX_POISON + _ITEM_POISON:
        bad = GOOD[:-1] + b', "x": ' + raw + b"}"
        lines += [bad, b"[" + GOOD + b", " + bad + b"]", b'{"ts": ' + raw + b"}"]
        outcomes += 1 + (1 if raw in _SYNTAX_POISON else 2) + 1
    rng = random.Random(7)
    junk = [b"\x00" + rng.randbytes(200).replace(b"\n", b"") for _ in range(50)]
    lines += [*junk, b"", b"   ", b"[]", b"[[[[", GOOD]
    outcomes += len(junk) + 2   # "[]" holds no event; the blank lines are no message
    src = tmp_path / "hostile.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    r = subprocess.run([sys.executable, "-m", "detector.cli", "replay", str(src),
                        "--dead-letter", str(tmp_path / "d.jsonl")],
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    n = {k: int(v.replace(",", "")) for k, v in
         re.findall(r"^(events decoded|rejected|  blank) +([\d,]+)$", r.stderr, re.M)}
    assert n["events decoded"] + n["rejected"] == outcomes and n["  blank"] == 2, r.stderr
    assert len((tmp_path / "d.jsonl").read_bytes().splitlines()) == n["rejected"]


@pytest.mark.parametrize("raw", [b"1e400", b'"\xff\xfe"'])
def test_an_undecodable_item_of_a_batch_is_rejected_alone(raw: bytes) -> None:
    """Well-formed JSON that does not decode (a number out of range, invalid UTF-8) in one
    item: the batch's other items are kept."""
    bad = GOOD[:-1] + b', "latency_ms": ' + raw + b"}"
    batch = b"[" + GOOD + b", " + bad + b", " + GOOD + b"]"
    ok, rej = decode(batch)
    assert len(ok) == 2 and [r.reason for r in rej] == ["not_json"]
    ok, rej = decode_many([GOOD, batch])
    assert len(ok) == 3 and [(r.reason, r.message) for r in rej] == [("not_json", 1)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
                max_size=30),
       st.integers(0, 30), st.integers(1, 50), st.booleans())
def test_read_lines_splits_any_chunking_like_split(lines: list[bytes], max_bytes: int,
                                                   chunk: int, final_newline: bool) -> None:
    """Whatever the chunk size, the lines are those of ``bytes.split``, the over-long ones
    as their length and digest."""
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    want = [x if len(x) <= max_bytes + 1 else Oversized(len(x), hashlib.sha256(x).hexdigest())
            for x in (data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"))]
    if data == b"":
        want = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracefile, "_CHUNK", chunk)
        assert list(read_lines(io.BytesIO(data), max_bytes)) == want


def test_a_deep_item_in_a_batch_takes_only_itself() -> None:
    """A batch whose one event carries a bomb too deep for the decoder as a whole: the batch
    is split without recursion, the ten valid events count, and only the deep one goes."""
    from detector.core.events import decode
    good = b'{"ts": 1767571200, "operation": "chat", "tenant": "t"}'
    bomb = b'{"ts": 1767571200, "operation": "chat", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    ok, bad = decode(b"[" + b",".join([good] * 10 + [bomb]) + b"]")
    assert len(ok) == 10 and [r.reason for r in bad] == ["too_deep"]
    ok, bad = decode(b"[" + good + b", " + b"[" * 5000 + b"]" * 5000 + b"]")
    assert len(ok) == 1 and len(bad) == 1


def test_a_field_name_that_is_not_a_name_is_digested() -> None:
    from detector.core.events import decode
    name = "PRMPT-MARKER-7Q2X Ignore all previous instructions"
    _, bad = decode(orjson.dumps({"ts": 1767571200, "operation": "chat", "retries": -1,
                                  name: "x", "gen_ai.prompt": "y"}))
    (r,) = bad
    assert b"PRMPT-MARKER-7Q2X" not in r.to_json()
    assert "gen_ai.prompt" in r.payload["_dropped_fields"]


def test_a_batch_too_deep_is_split_around_the_deep_item_even_when_it_is_malformed(
        config: Config) -> None:
    """Found by the property test above: an item nested past the decoder's limit and malformed
    after that point. The decoder cannot read past the depth, so the batch is split around
    that item (too_deep) and the good event beside it is kept: two outcomes, each once."""
    deep = b'{"operation": ' + b"[" * 20_000 + b"]" * 20_000 + b', "x": NaN}'
    good = b'{"ts": 1700000000, "operation": "chat", "tenant": "t1", "app": "a"}'
    stage1 = Stage1(config)
    out, end = stage1.feed_many([b"[" + good + b", " + deep + b"]"]), stage1.finish()
    assert out.decoded + end.decoded == 1
    assert [r.reason for r in out.rejects + end.rejects] == ["too_deep"]
