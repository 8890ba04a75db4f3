from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from detector.core.events import REASONS, TraceEvent, decode, decode_many
from tests.conftest import CONTRACTS

GOOD = {"ts": "2026-05-10T03:59:35.114Z", "operation": "execute_tool",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
        "tenant": "acme", "app": "support-agent", "environment": "production",
        "tool_name": "send_email", "tool_authorized": False, "tool_side_effect": "external",
        "latency_ms": 412.5, "safety_hits": ["pii"], "retries": 0}


def test_contract_example_decodes_with_epoch_ts() -> None:
    ok, bad = decode(orjson.dumps(GOOD))
    assert bad == []
    assert ok[0].ts == 1778385575.114
    assert ok[0].tool_authorized is False and ok[0].safety_hits == ["pii"]


def test_epoch_and_rfc3339_with_offset_agree() -> None:
    a = decode(b'{"ts": "2026-05-10T05:59:35+02:00", "operation": "chat"}')[0][0]
    b = decode(b'{"ts": 1778385575, "operation": "chat"}')[0][0]
    assert a.ts == b.ts


def test_environment_defaults_to_production_and_other_operations_are_kept() -> None:
    ev = decode(b'{"ts": 1, "operation": "rerank"}')[0][0]
    assert ev.environment == "production" and ev.operation == "rerank"


def test_text_fields_are_dropped_everywhere() -> None:
    secret = "MY SYSTEM PROMPT IS SECRET"
    good = dict(GOOD, prompt=secret, completion=secret, override_reason=secret)
    bad = dict(good, retries=-1)
    ok, rej = decode(orjson.dumps([good, bad]))
    assert len(ok) == 1 and len(rej) == 1
    assert secret not in repr(ok[0]) and secret.encode() not in rej[0].to_json()
    assert rej[0].payload["_dropped_fields"] == ["completion", "override_reason", "prompt"]


def test_batch_rejects_only_the_bad_event() -> None:
    batch = [GOOD, {"ts": 1}, 5, dict(GOOD, trace_id="zz" * 16), dict(GOOD, latency_ms=-1)]
    ok, bad = decode(orjson.dumps(batch))
    assert len(ok) == 1
    assert [(r.reason, r.field) for r in bad] == [
        ("missing_field", "operation"), ("not_object", None), ("out_of_range", "trace_id"),
        ("out_of_range", "latency_ms")]


def test_ids_must_be_hex_exactly_in_every_decode_path() -> None:
    """32 characters that are not all hex digits: whitespace, non-ASCII digits, a sign."""
    tid = GOOD["trace_id"]
    bad_ids = [tid[:8] + " " + tid[9:], tid[:31] + "\t", tid[:31] + "g", "٣" + tid[1:],
               "+" + tid[1:], "0x" + tid[2:]]
    for bad_id in bad_ids:
        bad_ev = orjson.dumps(dict(GOOD, trace_id=bad_id))
        good_ev = orjson.dumps(GOOD)
        for ok, rej in (decode(bad_ev), decode(b"[" + good_ev + b"," + bad_ev + b"]"),
                        decode_many([good_ev, bad_ev, good_ev])):
            assert [(r.reason, r.field) for r in rej] == [("out_of_range", "trace_id")], bad_id
            assert all(e.trace_id == tid for e in ok)
    ok, rej = decode_many([orjson.dumps(dict(GOOD, span_id="00F067AA0BA902B7"))] * 3)
    assert len(ok) == 3 and rej == []


def test_rfc3339_without_an_offset_is_rejected_in_every_decode_path() -> None:
    msg = b'{"ts": "2026-05-10T03:59:35", "operation": "chat"}'
    for ok, rej in (decode(msg), decode(b"[" + msg + b"]"), decode_many([msg, msg])):
        assert ok == [] and {(r.reason, r.field) for r in rej} == {("bad_timestamp", "ts")}


def test_each_reason() -> None:
    cases = {
        b"x" * 20_000: "too_large",
        b"{not json": "not_json",
        b'"a string"': "not_object",
        b'{"operation": "chat"}': "missing_field",
        b'{"ts": 1, "operation": "chat", "refusal": "yes"}': "wrong_type",
        b'{"ts": 1, "operation": "chat", "refusal": null}': "wrong_type",
        b'{"ts": 1, "operation": "chat", "input_tokens": 1.5}': "wrong_type",
        b'{"ts": 1, "operation": "chat", "tenant": "' + b"t" * 129 + b'"}': "out_of_range",
        b'{"ts": 1, "operation": "chat", "tool_side_effect": "delete"}': "out_of_range",
        b'{"ts": 1, "operation": "chat", "span_id": "0x0f067aa0ba902b7"}': "out_of_range",
        b'{"ts": "2026-05-10T03:59:35", "operation": "chat"}': "bad_timestamp",
        b'{"ts": "yesterday", "operation": "chat"}': "bad_timestamp",
        b'{"ts": -1, "operation": "chat"}': "out_of_range",
        b'{"ts": 1, "operation": "chat", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}": "too_deep",
    }
    for data, reason in cases.items():
        ok, bad = decode(data, max_bytes=10_000)
        assert ok == [] and [r.reason for r in bad] == [reason], data
    # bad_otlp is the OTLP decoder's (tests/test_otlp.py)
    assert {r for r in cases.values()} == set(REASONS) - {"bad_otlp"}


def test_unparseable_input_keeps_only_a_fingerprint() -> None:
    rej = decode(b"\xff password=hunter2 \x00")[1][0]
    assert rej.reason == "not_json" and set(rej.payload) == {"bytes", "sha256"}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decode_never_raises_on_bytes(data: bytes) -> None:
    ok, bad = decode(data)
    assert all(isinstance(e, TraceEvent) for e in ok)
    assert all(r.reason in REASONS for r in bad)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=5), ch, max_size=3),
    max_leaves=10)
_fields = st.sampled_from(["ts", "operation", "trace_id", "retries", "refusal", "safety_hits",
                           "latency_ms", "tool_side_effect", "environment", "app",
                           "eval_scores"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_fields, _json, max_size=6))
def test_decode_agrees_with_the_json_schema(obj: dict) -> None:
    """What decode accepts, the contract's JSON Schema accepts (and the reverse, where the
    schema can express the rule: timestamps and hex ids are checked by decode alone)."""
    schema = json.loads((CONTRACTS / "trace-event.schema.json").read_text())
    valid = Draft202012Validator(schema).is_valid(obj)
    ok, _ = decode(json.dumps(obj).encode())
    if ok:
        assert valid, obj
    elif valid:
        assert isinstance(obj.get("ts"), str) or "trace_id" in obj, obj


_scores = st.dictionaries(st.sampled_from(["faithfulness", "Answer Relevance", "", "<b>",
                                           "x" * 65, "ok.v2"]),
                          st.one_of(st.floats(-2000, 2000), st.integers(-5, 5), st.text(max_size=2),
                                    st.none()), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_scores, _json))
def test_eval_scores_decode_as_the_json_schema_says(scores: object) -> None:
    """Evaluation scores: an object of at most 32 finite numbers within +-1000 under names
    of 1-64 plain characters; anything else dead-letters the event, naming the field."""
    obj = {"ts": 1, "operation": "chat", "eval_scores": scores}
    schema = json.loads((CONTRACTS / "trace-event.schema.json").read_text())
    valid = Draft202012Validator(schema).is_valid(obj)
    ok, bad = decode(json.dumps(obj).encode())
    assert bool(ok) == valid, obj
    if bad and bad[0].reason != "not_json":   # json.dumps writes inf as Infinity
        assert bad[0].field == "eval_scores" and bad[0].reason in ("wrong_type", "out_of_range")
        if isinstance(scores, dict):   # names never reach a dead letter
            assert bad[0].payload["eval_scores"] == {"json_type": "dict", "items": len(scores)}


def test_eval_scores_are_kept_under_sanitised_names() -> None:
    ok, bad = decode(b'[{"ts": 1, "operation": "chat", "eval_scores": {"Answer Relevance": 0.5,'
                     b' "ragas.faithfulness": 1, "toxicity": -0.25}}, {"ts": 2, "operation": "x"}]')
    assert bad == [] and ok[1].eval_scores is None
    assert ok[0].eval_scores == {"answer_relevance": 0.5, "ragas_faithfulness": 1.0,
                                 "toxicity": -0.25}


def test_too_many_or_unbounded_eval_scores_dead_letter_the_event_alone() -> None:
    many = {f"e{i}": 0.5 for i in range(33)}
    ok, bad = decode(orjson.dumps([{"ts": 1, "operation": "chat", "eval_scores": many},
                                   {"ts": 1, "operation": "chat", "eval_scores": {"e": 1e3}},
                                   {"ts": 1, "operation": "chat", "eval_scores": {"e": 1001}}]))
    assert len(ok) == 1 and ok[0].eval_scores == {"e": 1000.0}
    assert [(r.reason, r.field) for r in bad] == [("out_of_range", "eval_scores")] * 2
    assert bad[0].payload["eval_scores"] == {"json_type": "dict", "items": 33}


#: Messages that fail a run's decode in each way it can fail: a validation error naming the
#: item, malformed JSON naming a byte, truncation naming nothing, a late check (a non-hex id),
#: two objects in one message, a string spilling into the next message, nesting too deep.
_BAD_MESSAGES = [
    orjson.dumps(dict(GOOD, latency_ms="slow")), orjson.dumps({"ts": 1}),
    b'{"ts": 1, "operation": "chat", "x": ]}', b'{"ts": 1, "operation": "ch}',
    orjson.dumps(dict(GOOD, span_id="zz" * 8)), orjson.dumps(GOOD) + b"," + orjson.dumps(GOOD),
    b'{"ts": 1, "operation": "chat", "app": "}', b'{"ts": 1, "operation": "chat", "x": '
    + b"[" * 3000 + b"]" * 3000 + b"}", b'{"ts": 1, "operation": "chat", "retries": -1}',
]


def _one_by_one(messages: list[bytes]) -> tuple[list[TraceEvent], list[tuple]]:
    ok: list[TraceEvent] = []
    bad: list[tuple] = []
    for i, m in enumerate(messages):
        e, r = decode(m)
        ok += e
        bad += [(i, x.reason, x.field, x.detail, x.payload) for x in r]
    return ok, bad


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.just(None), st.integers(0, 3), st.sampled_from(_BAD_MESSAGES)),
                min_size=1, max_size=300))
def test_a_run_with_bad_messages_decodes_as_its_messages_one_by_one(picks: list) -> None:
    """Wherever bad messages sit in a run of single events and batches (of 0 to 3 events),
    decode_many's events and rejections (with their message index) are what decoding each
    message alone gives."""
    messages = [orjson.dumps(dict(GOOD, tenant=f"t{i}", retries=i)) if p is None
                else orjson.dumps([dict(GOOD, retries=i + j) for j in range(p)])
                if isinstance(p, int) else p for i, p in enumerate(picks)]
    ok, bad = decode_many(messages)
    want_ok, want_bad = _one_by_one(messages)
    assert ok == want_ok
    assert [(r.message, r.reason, r.field, r.detail, r.payload) for r in bad] == want_bad


def test_one_bad_message_in_a_long_run_leaves_the_others_decoded_as_runs(monkeypatch) -> None:
    """Only the failing message is decoded alone: the run around it is split at it, not
    redone message by message; a batch in the run is parsed with it."""
    from detector.core import events

    alone: list[bytes] = []
    real = events.decode

    def counted(data: bytes, max_bytes: int = events.MAX_MESSAGE_BYTES):  # type: ignore[no-untyped-def]
        alone.append(data)
        return real(data, max_bytes)

    monkeypatch.setattr(events, "decode", counted)
    messages = [orjson.dumps(dict(GOOD, retries=i)) for i in range(256)]
    messages[100] = orjson.dumps(dict(GOOD, latency_ms="slow"))
    messages[200] = b'{"ts": 1, "operation": "chat", "x": ]}'
    messages[150] = orjson.dumps([GOOD, GOOD])
    ok, bad = decode_many(messages)
    assert len(ok) == 255 and [(r.message, r.reason) for r in bad] == [
        (100, "wrong_type"), (200, "not_json")]
    assert alone == [messages[100], messages[200]]


_OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.one_of(st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=_OFFSETS),
              st.floats(0, 1e12)),
    st.sampled_from([GOOD["trace_id"], GOOD["trace_id"].upper(), "g" * 32, " " + "a" * 31,
                     "٣" * 32, None]),
    st.sampled_from([GOOD["span_id"], "0x" + "a" * 14, None]),
    st.sampled_from([None, "free text", ""]),
    st.one_of(st.sampled_from([None, {}]), st.dictionaries(st.sampled_from(
        ["relevance", "answer_relevance", "a1_b2_c3", "Answer Relevance", "x.y", "a__b", "a_",
         "tox-v2", "0", "ragas:faith", "rel evance"]), st.floats(-1, 1), max_size=4))),
    min_size=1, max_size=8))
def test_the_late_checks_in_c_are_the_python_ones(rows: list) -> None:
    """finish_all (_finish.c) leaves a decoded batch as _finish_all_py does, and says the same
    about its ids: RFC 3339 stamps at any offset and any year (the far ones through
    timestamp() itself) and epoch numbers, hex and not-hex ids, override text, evaluation
    scores with names to clean."""
    from detector.core import events

    if events._finish_all is events._finish_all_py:
        pytest.skip("the C twin was not built (or DETECTOR_NO_EXTENSIONS is set)")
    batch = []
    for ts, tid, sid, reason, evals in rows:
        ev: dict = {"ts": ts.isoformat() if isinstance(ts, datetime) else ts,
                    "operation": "human_override"}
        for k, v in (("trace_id", tid), ("span_id", sid), ("override_reason", reason),
                     ("eval_scores", evals)):
            if v is not None:
                ev[k] = v
        batch.append(ev)
    data = orjson.dumps(batch)
    try:
        one, two = events._many.decode(data), events._many.decode(data)
    except msgspec.ValidationError:
        return   # (a stamp whose UTC time is outside years 1-9999: rejected before either)
    assert events._finish_all(one) == events._finish_all_py(two)
    for a, b in zip(one, two, strict=True):
        assert repr(a.ts) == repr(b.ts) and a == b
