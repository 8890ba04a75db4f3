"""Runs of messages decoded joined (events.decode_many): every message decodes exactly as it
would alone, the same events or the same dead letter with the same reason and message index,
whatever its neighbours; and the scan that decides which messages may join a run
(_shapes.c) answers as its Python twin (events._shapes_py)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core import events
from detector.core.events import MAX_MESSAGE_BYTES, decode, decode_many
from tests.test_events import _one_by_one

EV = b'{"ts":1,"operation":"chat"}'
EV2 = b'{"ts":2,"operation":"chat","tenant":"t2"}'
# Escapes inside strings: an escaped quote, an escaped backslash before the closing quote.
ESC = b'{"ts":3,"operation":"chat","tenant":"a\\"b","app":"c\\\\"}'
ARRAY = b"[" + EV + b"," + EV2 + b"]"

# The report's forgery: a string left open before the final brace, a message that closes it,
# one that holds two events. Each is not_json alone; joined they parse as three items.
OPENS = b'{"ts":1,"operation":"chat","x":"}'
CLOSES = b'{","y":1}'
TWO = EV + b"," + EV2

# Pieces of hostile runs: open strings (plain, after \" and after \\\"), brackets left open or
# closed early across messages, separators alone, whitespace and a BOM, an empty message, an
# array of events (which joins its run), and valid events to be absorbed.
PIECES = [
    EV, EV2, ESC, ARRAY, b"[]", OPENS, CLOSES, TWO,
    b'{"ts":1,"operation":"chat","x":"\\"}', b'{"ts":1,"operation":"chat","x":"\\\\\\"}',
    b'{"a":"\\\\"}', b'{"x":"', b'"}', b'{"ts":1,"operation":"chat","x":[}', b"]}",
    b"[" + EV, EV + b"]", b"]", b",", b"][", b"[", b"{", b"}", b"",
    b" " + EV, EV + b" ", b"\xef\xbb\xbf" + EV, b"[" + EV + b"],[" + EV2 + b"]",
    EV + EV2, b"{}", b'{"ts":1,"operation":"chat"}}', b'{{"ts":1,"operation":"chat"}',
]


def _as_alone(messages: list[bytes]) -> None:
    ok, bad = decode_many(messages)
    want_ok, want_bad = _one_by_one(messages)
    assert ok == want_ok
    assert [(r.message, r.reason, r.field, r.detail, r.payload) for r in bad] == want_bad


def test_a_string_left_open_across_messages_is_not_decoded_as_events() -> None:
    """The forgery: three not_json messages that joined parse as three events for three
    messages are each dead-lettered, with its own index."""
    ok, bad = decode_many([OPENS, CLOSES, TWO])
    assert ok == []
    assert [(r.message, r.reason) for r in bad] == [(0, "not_json"), (1, "not_json"),
                                                     (2, "not_json")]
    # Between valid events, the valid ones are decoded and attributed to nothing else.
    ok, bad = decode_many([EV2, OPENS, CLOSES, TWO, EV2])
    assert [e.tenant for e in ok] == ["t2", "t2"]
    assert [r.message for r in bad] == [1, 2, 3]


def test_every_ordered_triple_of_hostile_pieces_decodes_as_its_messages_alone() -> None:
    """Every ordered triple of the pieces (bounded: len(PIECES) ** 3 runs), and each between
    valid events: decode_many gives what decoding each message alone gives."""
    for trio in itertools.product(PIECES, repeat=3):
        _as_alone(list(trio))
    for trio in itertools.islice(itertools.product(PIECES, repeat=3), 0, None, 7):
        _as_alone([EV, *trio, EV2, ESC])


def test_valid_messages_with_escapes_and_arrays_still_decode_as_one_run(monkeypatch) -> None:
    """The scan turns away no valid message: a run of events with escaped quotes and
    backslashes, arrays and empty arrays is parsed joined, none decoded alone."""
    alone: list[bytes] = []
    real = events.decode

    def counted(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES):  # type: ignore[no-untyped-def]
        alone.append(data)
        return real(data, max_bytes)

    monkeypatch.setattr(events, "decode", counted)
    messages = [EV, ESC, ARRAY, b"[]", b"[" + ESC + b"]"] * 20
    ok, bad = decode_many(messages)
    assert bad == [] and alone == []
    assert len(ok) == 20 * 5 and ok[1].tenant == 'a"b' and ok[1].app == "c\\"


# Valid events whose strings hold what the scan must read right: escaped quotes, backslash
# runs of both parities, brackets, commas and quotes' neighbours.
_TEXT = st.text(st.sampled_from('ab"\\{}[],: '), max_size=12)
_EVENT = st.builds(lambda t, a: {"ts": 1, "operation": "chat", "tenant": t, "app": a},
                   _TEXT, _TEXT)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_EVENT, st.lists(_EVENT, max_size=3)), min_size=1, max_size=6),
       st.data())
def test_valid_events_spliced_at_random_bytes_decode_as_their_pieces_alone(
        items: list, data: st.DataObject) -> None:
    """Valid events (and arrays of them) written one after another with separators, cut at
    random byte positions (most of them at quotes, backslashes, brackets and commas) into
    consecutive pieces, and slices of them taken anywhere: whatever the pieces, decode_many
    gives what decoding each alone gives. (Against the item count check alone, as before
    _shapes.c, this finds a forgery in most runs.)"""
    stream = b",".join(map(orjson.dumps, items))
    special = sorted({0, len(stream), *(i for i, c in enumerate(stream) if c in b'"\\{}[],'),
                      *(i + 1 for i, c in enumerate(stream) if c in b'"\\{}[],')})
    at = st.one_of(st.sampled_from(special), st.integers(0, len(stream)))
    edges = sorted({0, len(stream), *data.draw(st.lists(at, max_size=8))})
    pieces = [stream[a:b] for a, b in itertools.pairwise(edges)]
    # Slices from an opening bracket to just after a closing one, as the forgery's are.
    opens = [i for i, c in enumerate(stream) if c in b"{["]
    ends = [i + 1 for i, c in enumerate(stream) if c in b"}]"]
    slices = [stream[a:b] for a, b in data.draw(st.lists(st.tuples(
        st.sampled_from(opens), st.sampled_from(ends)), max_size=7)) if a < b]
    _as_alone(pieces)
    for messages in (slices, [EV, *slices, EV2], [*pieces, *slices]):
        _as_alone(messages)


_BYTES = [b'"', b"{", b"}", b"[", b"]", b",", b"a", b" ", b"\x00", b"\xff"]
# With backslashes, and without (the Python twin's usual path, strings ending at a quote).
_HEAVY = st.binary(max_size=0) | st.lists(st.sampled_from([*_BYTES, b"\\"]), max_size=300).map(
    b"".join) | st.lists(st.sampled_from(_BYTES), max_size=300).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(_HEAVY.map(lambda b: (b"{" + b) if b[:1] not in (b"{", b"[") else b)
                | _HEAVY, max_size=8),
       st.integers(0, 400))
def test_the_scan_in_c_is_the_python_one(messages: list[bytes], max_bytes: int) -> None:
    """shapes (_shapes.c) gives _shapes_py's answer, messages of bytes that count (quotes,
    backslashes, brackets) across 64-byte blocks and their tails."""
    if events._shapes is events._shapes_py:
        pytest.skip("the C twin was not built (or DETECTOR_NO_EXTENSIONS is set)")
    assert events._shapes(messages, max_bytes) == events._shapes_py(messages, max_bytes)


@pytest.mark.parametrize("at", range(56, 136))
def test_the_scan_reads_escapes_and_brackets_at_every_block_edge(at: int) -> None:
    """An escaped quote, an escaped backslash, a bracket closed early or a string left open at
    each position around the first two 64-byte boundaries: both twins answer as the decoder
    parses."""
    pad = b"x" * max(0, at - 9)
    cases = {
        b'{"a":"' + pad + b'\\""}': True,          # an escaped quote inside the string
        b'{"a":"' + pad + b'\\\\"}': True,         # an escaped backslash closes it
        b'{"a":"' + pad + b'\\\\\\"}': False,      # \\\" : left open
        b'{"a":"' + pad + b'"},{"b":1}': False,   # closed early
        b'{"a":"' + pad + b'}': False,            # left open
        b'[{"a":"' + pad + b'"}]': True,
    }
    for m, whole in cases.items():
        assert events._shapes_py([m], MAX_MESSAGE_BYTES)[0] == ([] if whole else [0])
        assert events._shapes([m], MAX_MESSAGE_BYTES)[0] == ([] if whole else [0])
        # Whole here means JSON alone (a missing field is another matter).
        assert whole is not any(r.reason == "not_json" for r in decode(m)[1])


def test_the_scan_takes_bytes_like_messages_and_refuses_other_types() -> None:
    """Any sequence of bytes-like messages is read (a Kafka client may hand over a
    bytearray); a message of another type is a TypeError, never a crash."""
    assert events._shapes([bytearray(EV), memoryview(b"]")], 100) == ([1], b"{]")
    with pytest.raises(TypeError):
        events._shapes([EV, "text"], 100)
    assert events._shapes((EV, b"x"), 100) == ([1], b"{x")


def test_without_extensions_the_python_scan_keeps_runs_honest() -> None:
    """With DETECTOR_NO_EXTENSIONS=1 the Python twin decides, with the same outcome."""
    code = ("from detector.core import events as e\n"
            "assert e._shapes is e._shapes_py\n"
            f"ok, bad = e.decode_many([{OPENS!r}, {CLOSES!r}, {TWO!r}, {EV!r}])\n"
            "print(len(ok), [(r.message, r.reason) for r in bad])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "DETECTOR_NO_EXTENSIONS": "1"}, timeout=60,
                         check=True).stdout
    assert out.strip() == "1 [(0, 'not_json'), (1, 'not_json'), (2, 'not_json')]"
