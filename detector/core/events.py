"""Trace events: the contract in ``shared/schema/trace-event.md``, decoded and validated.

Decoding never raises. Each message yields accepted events and rejections; a rejection
carries a reason code from :data:`REASONS` and a sanitised copy of the input for the
dead-letter destination (contract fields only: prompt or response text never leaves here).

Validation is done by msgspec in C while parsing, so one pass both parses and checks every
field's type and range; fields outside the contract (including any prompt or response text)
are never materialised.

>>> ok, bad = decode(b'{"ts": 1700000000, "operation": "chat", "refusal": true, "prompt": "hi"}')
>>> ok[0].operation, ok[0].refusal, ok[0].ts
('chat', True, 1700000000.0)
>>> ok, bad = decode(b'[{"ts": 1, "operation": "chat"},'
...                  b' {"ts": 1, "operation": "chat", "retries": -1}]')
>>> len(ok), bad[0].reason, bad[0].field
(1, 'out_of_range', 'retries')
>>> decode(b'not json')[1][0].reason
'not_json'
>>> decode(b'{"ts": 1, "operation": "chat", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}")[1][0].reason
'too_deep'
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import re
import sys
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from datetime import datetime
from itertools import accumulate, chain, compress, repeat
from operator import attrgetter, itemgetter
from typing import Annotated, Any, Final, Literal, NamedTuple, cast

import msgspec
import orjson
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MODEL_OPERATIONS",
    "OPERATIONS",
    "REASONS",
    "Rejection",
    "TraceEvent",
    "decode",
    "decode_many",
    "eval_key",
    "sanitise",
    "too_large",
]

MAX_MESSAGE_BYTES: Final = 1 << 20

#: Operations the contract names; any other value is accepted and counted as ``other``.
OPERATIONS: Final = frozenset(
    {"chat", "text_completion", "generate_content", "execute_tool", "invoke_agent",
     "memory_write", "human_override"}
)
#: Operations that are a model call (the denominator of most rate signals).
MODEL_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content"})

#: Every reason a message or event can be rejected for; a bounded set (it labels a metric).
REASONS: Final = (
    "too_large", "not_json", "not_object", "missing_field", "wrong_type", "out_of_range",
    "bad_timestamp", "too_deep", "bad_otlp",
)

Str32 = Annotated[str, Meta(max_length=32)]
Str64 = Annotated[str, Meta(max_length=64)]
Str128 = Annotated[str, Meta(max_length=128)]
Count = Annotated[int, Meta(ge=0)]
_FLOAT_MAX: Final = sys.float_info.max   # excludes inf (1e400 parses as inf); NaN is not JSON
#: Evaluation scores: at most this many per event, each finite within +-EVAL_MAX (stage 1
#: sums them as fixed-point integers, which must stay within int64), names of evaluators as
#: :func:`eval_key` sanitises them.
MAX_EVALS: Final = 32
EVAL_MAX: Final = 1000.0
EvalName = Annotated[str, Meta(min_length=1, max_length=64,
                               pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:/-]*$")]
EvalScore = Annotated[float, Meta(ge=-EVAL_MAX, le=EVAL_MAX)]


class TraceEvent(Struct, gc=False, omit_defaults=True, kw_only=True):
    """One trace event. Absent optional fields are ``UNSET`` (``null`` is a type error,
    as in the JSON Schema). ``ts`` is seconds since the epoch after :func:`decode`.

    Fields are declared in the contract's order (the JSON Schema's ``properties``): msgspec
    matches keys fastest when they arrive in declared order, and a producer built from the
    contract writes them so (Go's encoding/json and, by default, Jackson write a struct's
    fields in declared order; Python and JavaScript objects keep insertion order). Keys in any other
    order decode the same, ~20 % slower (sorted keys, for one)."""

    # An offset and finiteness are checked in C; RFC 3339 stamps become epoch seconds after.
    ts: Annotated[datetime, Meta(tz=True)] | Annotated[float, Meta(ge=0, le=_FLOAT_MAX)]
    operation: Annotated[str, Meta(min_length=1, max_length=64)]
    # Length is checked here in C; hex digits in _finish (a msgspec regex costs more).
    trace_id: Annotated[str, Meta(min_length=32, max_length=32)] | UnsetType = UNSET
    span_id: Annotated[str, Meta(min_length=16, max_length=16)] | UnsetType = UNSET
    tenant: Str128 | UnsetType = UNSET
    region: Str64 | UnsetType = UNSET
    app: Str128 | UnsetType = UNSET
    environment: Str32 = "production"
    model: Str128 | UnsetType = UNSET
    model_version: Str128 | UnsetType = UNSET
    prompt_version: Str128 | UnsetType = UNSET
    policy_version: Str128 | UnsetType = UNSET
    input_tokens: Count | UnsetType = UNSET
    output_tokens: Count | UnsetType = UNSET
    latency_ms: Annotated[float, Meta(ge=0)] | UnsetType = UNSET
    finish_reason: Str64 | UnsetType = UNSET
    refusal: bool | UnsetType = UNSET
    instruction_violation: bool | UnsetType = UNSET
    output_format_valid: bool | UnsetType = UNSET
    safety_hits: Annotated[list[Str64], Meta(max_length=32)] | UnsetType = UNSET
    retries: Count | UnsetType = UNSET
    error_type: Str128 | UnsetType = UNSET
    tool_name: Str128 | UnsetType = UNSET
    tool_authorized: bool | UnsetType = UNSET
    tool_side_effect: Literal["none", "read", "write", "external"] | UnsetType = UNSET
    tool_approved: bool | UnsetType = UNSET
    schema_valid: bool | UnsetType = UNSET
    tool_result_fabricated: bool | UnsetType = UNSET
    tool_status: Str32 | UnsetType = UNSET
    memory_bytes: Count | UnsetType = UNSET
    # The contract's override_reason is free text; it is validated but never kept.
    override_reason: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET
    # Evaluator name -> score (OpenTelemetry's gen_ai.evaluation.result); names sanitised by
    # eval_key after decoding, so "Answer Relevance" counts for evaluator "answer_relevance".
    eval_scores: Annotated[dict[EvalName, EvalScore], Meta(max_length=MAX_EVALS)] | None = None
    # Leading indicators (docs/contracts.md). The producer's number for how spread out the
    # output was (entropy, or a proxy such as minus the mean token logprob): never one made
    # from the text here, which is never read.
    output_entropy: Annotated[float, Meta(ge=0, le=_FLOAT_MAX)] | UnsetType = UNSET
    # The operation handed the conversation to a human (an escalation).
    escalated: bool | UnsetType = UNSET


class Rejection(NamedTuple):
    """Why one message or event was rejected, and what the dead-letter destination gets."""

    reason: str
    field: str | None
    detail: str
    payload: dict[str, Any]
    message: int = 0   # index of the message in a decode_many call (for its source offset)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"reason": self.reason, "field": self.field, "detail": self.detail,
             "payload": self.payload},  # not the batch index: it is the caller's
            option=orjson.OPT_SORT_KEYS,
        )


_one: Final = msgspec.json.Decoder(TraceEvent)
_many: Final = msgspec.json.Decoder(list[TraceEvent])
# A run of messages some of which are batches: an item per message.
_mixed: Final = msgspec.json.Decoder(list[TraceEvent | list[TraceEvent]])
_raw: Final = msgspec.json.Decoder()
_split: Final = msgspec.json.Decoder(list[msgspec.Raw])   # a batch's items, unparsed
_CONTRACT_FIELDS: Final = frozenset(TraceEvent.__struct_fields__) - {"override_reason"}
_AT = re.compile(r" - at `(?:key` in `)?\$(?:\[\d+\])?\.?([A-Za-z_]\w*)?")


def _fingerprint(data: bytes) -> dict[str, Any]:
    # Unparseable bytes may hold anything, prompt text included: keep only a fingerprint.
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def too_large(size: int, sha256: str, max_bytes: int) -> Rejection:
    """The rejection of a message over the size limit, from its length and digest alone (a
    reader that skips an over-long line never holds it)."""
    return Rejection("too_large", None, f"{size} bytes > limit {max_bytes}",
                     {"bytes": size, "sha256": sha256})


#: Strings in a dead letter longer than this (or than their field's contract allows) keep
#: only a prefix, their length and a digest: a producer may have put prompt text anywhere.
KEEP_CHARS: Final = 64
PREFIX_CHARS: Final = 16
_MAX_ITEMS: Final = 32    # list items and dropped field names kept
_INT64: Final = range(-(1 << 63), 1 << 64)   # what orjson can write


def _str_limit(t: msgspec.inspect.Type) -> int:
    """The longest string a field's contract admits, capped at KEEP_CHARS (a field that
    admits no string keeps only as much as the prefix would show)."""
    types = t.types if isinstance(t, msgspec.inspect.UnionType) else (t,)
    limit = PREFIX_CHARS
    for u in types:
        if isinstance(u, msgspec.inspect.ListType):
            u = u.item_type
        if isinstance(u, msgspec.inspect.StrType | msgspec.inspect.DateTimeType):
            limit = max(limit, min(KEEP_CHARS, getattr(u, "max_length", None) or KEEP_CHARS))
        elif isinstance(u, msgspec.inspect.LiteralType):
            limit = max(limit, max(len(str(v)) for v in u.values))
    return limit


_KEEP: Final = {f.name: _str_limit(f.type) for f in
                cast(msgspec.inspect.StructType, msgspec.inspect.type_info(TraceEvent)).fields}
_HEX_IDS: Final = frozenset({"trace_id", "span_id"})


def _digest(s: str, prefix: int = PREFIX_CHARS) -> dict[str, Any]:
    """A long string as a bounded prefix, its length and a short digest.

    >>> _digest("x" * 100)
    {'prefix': 'xxxxxxxxxxxxxxxx', 'chars': 100, 'sha256': '09ecb6ebc8bcefc7'}
    """
    h = hashlib.sha256(s.encode()).hexdigest()[:16]
    return {"prefix": s[:prefix], "chars": len(s), "sha256": h}


def _bounded(v: object, limit: int, depth: int = 0) -> object:
    """``v`` with every string over ``limit`` digested, lists cut to _MAX_ITEMS, nested
    containers and integers orjson cannot write summarised: bounded in size and depth."""
    if isinstance(v, str):
        return v if len(v) <= limit else _digest(v)
    if isinstance(v, bool) or v is None or isinstance(v, float):
        return v
    if isinstance(v, int):
        return v if v in _INT64 else {"json_type": "int", "bits": v.bit_length()}
    if isinstance(v, list) and depth == 0:
        kept = [_bounded(x, limit, 1) for x in v[:_MAX_ITEMS]]
        return [*kept, {"more_items": len(v) - _MAX_ITEMS}] if len(v) > _MAX_ITEMS else kept
    # An object's keys may be prompt text too: only its type and size.
    return {"json_type": type(v).__name__, "items": len(v) if isinstance(v, Sized) else None}


_FIELD_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_NAME_PREFIX: Final = 8


def sanitise(obj: object) -> dict[str, Any]:
    """The part of an input object the dead-letter destination may keep: contract fields,
    bounded (:func:`_bounded`), and the names of the others, bounded in count and length.

    >>> p = sanitise({"ts": 1, "tenant": "t" * 200, "trace_id": "not hex", "p" * 80: "hi",
    ...               "gen_ai.prompt": "x", "Ignore all previous": 1})
    >>> p["tenant"]["chars"], p["trace_id"]["prefix"], p["_dropped_fields"][0]
    (200, 'not hex', {'prefix': 'Ignore a', 'chars': 19, 'sha256': ...})
    >>> p["_dropped_fields"][1:2], p["_dropped_fields"][2]["chars"]
    (['gen_ai.prompt'], 80)
    """
    if not isinstance(obj, dict):
        return {"json_type": type(obj).__name__}
    kept: dict[str, Any] = {}
    for k, v in obj.items():
        if k in _CONTRACT_FIELDS:
            # A non-hex id is free text to us: keep less of it than the shorter id's length.
            hidden = k in _HEX_IDS and isinstance(v, str) and not _is_hex(v)
            kept[k] = _digest(v, PREFIX_CHARS // 2) if hidden else _bounded(v, _KEEP[k])
    dropped = [k for k in obj if k not in _CONTRACT_FIELDS]
    if dropped:
        dropped.sort()
        # A name is input text too: kept as it is only when it reads like a field name,
        # else a short prefix and a digest (prompt text put into a key stays out).
        kept["_dropped_fields"] = [k if _FIELD_NAME.fullmatch(k) else _digest(k, _NAME_PREFIX)
                                   for k in dropped[:_MAX_ITEMS]]
        if len(dropped) > _MAX_ITEMS:
            kept["_dropped_field_count"] = len(dropped)
    return kept


_ENUM_VALUE = re.compile(r"Invalid enum value '.*'(?= - at)", re.S)


def _classify(message: str) -> tuple[str, str | None]:
    m = _AT.search(message)
    field = m.group(1) if m else None
    if message.startswith("Object missing required field"):
        return "missing_field", message.split("`")[1]
    if field == "ts" and any(s in message for s in ("RFC3339", "out of range", "timezone")):
        return "bad_timestamp", field
    if any(s in message for s in (">=", "<=", "length", "Invalid enum", "out of range",
                                  "matching regex")):
        return "out_of_range", field
    return "wrong_type", field


def _is_hex(s: str) -> bool:
    """Only hex digits. ``bytes.fromhex`` fails on anything else but whitespace, which it
    skips, shortening the result."""
    try:
        return len(bytes.fromhex(s)) * 2 == len(s)
    except ValueError:
        return False


def _finish(ev: TraceEvent) -> Rejection | None:
    """The hex check msgspec cannot do cheaply, and ``ts`` normalised to epoch seconds."""
    ts = ev.ts
    if ts.__class__ is datetime:
        ev.ts = ts.timestamp()
    if ev.trace_id is not UNSET and not _is_hex(ev.trace_id):
        return Rejection("out_of_range", "trace_id", "trace_id must be 32 hex digits", {})
    if ev.span_id is not UNSET and not _is_hex(ev.span_id):
        return Rejection("out_of_range", "span_id", "span_id must be 16 hex digits", {})
    if ev.override_reason is not UNSET:
        ev.override_reason = UNSET   # free text: validated, never kept
    if ev.eval_scores:
        ev.eval_scores = _eval_keys(ev.eval_scores)
    return None


_NOT_ALNUM: Final = re.compile(r"[^a-z0-9]+")


def eval_key(name: str) -> str:
    """An evaluator's name as configured and counted: lower case, runs of anything but
    letters and digits as one ``_``, none at either end.

    >>> eval_key("Answer Relevance"), eval_key("ragas.faithfulness"), eval_key("tox-v2")
    ('answer_relevance', 'ragas_faithfulness', 'tox_v2')
    """
    return _NOT_ALNUM.sub("_", name.lower()).strip("_")


def _eval_keys(scores: dict[str, float]) -> dict[str, float]:
    """Scores under sanitised names (two names that sanitise alike: the later one counts).

    >>> ok, _ = decode(b'{"ts": 1, "operation": "chat", "eval_scores": {"Relevance": 0.5}}')
    >>> ok[0].eval_scores
    {'relevance': 0.5}
    """
    if all(map(_CLEAN.fullmatch, scores)):
        return scores   # the usual case
    return {eval_key(k): v for k, v in scores.items()}


_CLEAN: Final = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")


def _one_item(item: object) -> TraceEvent | Rejection:
    if not isinstance(item, dict):
        return Rejection("not_object", None, f"expected an object, got {type(item).__name__}",
                         sanitise(item))
    try:
        ev = msgspec.convert(item, TraceEvent, strict=True)
    except msgspec.ValidationError as e:
        reason, field = _classify(str(e))
        # The one msgspec message that quotes the input: a long value could be prompt text.
        detail = _ENUM_VALUE.sub("Invalid enum value", str(e))
        return Rejection(reason, field, detail, sanitise(item))
    except RecursionError:
        return _too_deep(sanitise(item))
    bad = _finish(ev)
    return bad._replace(payload=sanitise(item)) if bad else ev


_ts, _tid, _sid, _reason, _evals = (attrgetter(f) for f in ("ts", "trace_id", "span_id",
                                                             "override_reason", "eval_scores"))
_ONLY_UNSET: Final = frozenset((UNSET,))


def _finish_all_py(evs: list[TraceEvent]) -> bool:
    """:func:`_finish` for a whole batch, ``False`` if an id is not hex (the caller then redoes
    the batch event by event). The hot path: each step is one C-level pass over the batch;
    the reference for ``finish_all`` in _finish.c, which does it in one pass."""
    stamped = list(compress(evs, map(isinstance, map(_ts, evs), repeat(datetime))))
    if stamped:   # RFC 3339 stamps to epoch seconds
        deque(map(setattr, stamped, repeat("ts"), map(datetime.timestamp, map(_ts, stamped))), 0)
    if not _ONLY_UNSET.issuperset(map(_reason, evs)):   # rare: human overrides
        for ev in evs:
            ev.override_reason = UNSET   # free text: validated, never kept
    if any(map(_evals, evs)):   # None and {} are falsy
        for ev in evs:
            if ev.eval_scores:
                ev.eval_scores = _eval_keys(ev.eval_scores)
    # Ids have exact lengths already (checked in C), so all are hex exactly when their
    # concatenation is. UNSET is falsy.
    ids = "".join(filter(None, chain(map(_tid, evs), map(_sid, evs))))
    return _is_hex(ids)


# The C twin of _finish_all_py, unless it was not built (no compiler) or DETECTOR_NO_EXTENSIONS
# is set (tests/test_events.py holds the two alike).
_finish_all: Callable[[list[TraceEvent]], bool] = _finish_all_py
if not os.environ.get("DETECTOR_NO_EXTENSIONS"):
    with contextlib.suppress(ImportError):
        _c = importlib.import_module("detector.core._finish")
        _c.configure(TraceEvent, UNSET, _eval_keys)
        _finish_all = _c.finish_all


def decode(
    data: bytes, max_bytes: int = MAX_MESSAGE_BYTES
) -> tuple[list[TraceEvent], list[Rejection]]:
    """Decode one message (an event or a JSON array of events); never raises."""
    if len(data) > max_bytes:
        return [], [too_large(len(data), hashlib.sha256(data).hexdigest(), max_bytes)]
    head = data.lstrip()[:1]
    try:
        evs = _many.decode(data) if head == b"[" else [_one.decode(data)]
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _slow_path(data)
    if not _finish_all(evs):
        # Rare: a check only _finish makes failed; redo the message item by item.
        return _slow_path(data)
    return evs, []


def decode_many(
    messages: list[bytes], max_bytes: int = MAX_MESSAGE_BYTES
) -> tuple[list[TraceEvent], list[Rejection]]:
    """Decode several messages, events in message order; the same result as calling
    :func:`decode` on each, whatever a message's neighbours, but runs of messages that are
    each one whole object or array of them (:func:`_whole`) are parsed in one call.

    >>> ok, bad = decode_many([b'{"ts": 1, "operation": "chat"}', b'[{"ts": 2, "operation": "x"}]',
    ...                        b'{"ts": 3}', b'{"ts": 4, "operation": "chat"}'])
    >>> [e.ts for e in ok], [(r.reason, r.message) for r in bad]
    ([1.0, 2.0, 4.0], [('missing_field', 2)])
    """
    ok: list[TraceEvent] = []
    bad: list[Rejection] = []
    n = len(messages)
    start = 0
    odd, heads = _shapes(messages, max_bytes)
    for i in [*odd, n]:
        if i > start:
            _decode_run(messages[start:i], start, max_bytes, ok, bad, b"[" in heads[start:i])
        if i < n:
            evs, rej = decode(messages[i], max_bytes)
            ok += evs
            bad += [r._replace(message=i) for r in rej]
        start = i + 1
    return ok, bad


_first = itemgetter(0)
_BRACKET: Final = re.compile(rb'["\\\[\]{}]')
_NOT_BRACKETS: Final = bytes(c for c in range(256) if c not in b"[]{}")
_NOT_QUOTE_OR_BRACKET: Final = bytes(c for c in range(256) if c not in b'"[]{}')


def _whole(m: bytes) -> bool:
    r"""Whether ``m`` (its first byte ``{`` or ``[``) is one whole bracketed value: its bracket
    depth, counted outside strings, first returns to 0 at its last byte. Only then does
    joining it into a run leave its bytes one item of the run's array: a string left open, a
    bracket left open or closed early would carry its neighbours' bytes into it or its own
    into theirs. (Where this reads strings otherwise than a JSON parser, the bytes are not
    JSON, so the joined parse fails and the run is split: only its reading of JSON counts.)

    >>> _whole(b'{"a": "}"}'), _whole(b'{"a": "\\\\"}'), _whole(b'{"a": "\\"}')
    (True, True, False)
    >>> _whole(b'{"a": 1},{"b": 2}'), _whole(b'[{"a": 1}]'), _whole(b'{"a": [}')
    (False, True, False)
    """
    if b"\\" not in m:   # the usual case: strings end at their next quote
        # Quotes and brackets only; then adjacent quotes dropped in pairs, which leaves every
        # bracket behind as many quotes, modulo 2, as before: with none left, none is inside
        # a string (the usual case: strings without brackets).
        brackets = m.translate(None, _NOT_QUOTE_OR_BRACKET).replace(b'""', b"")
        if b'"' in brackets:
            parts = m.split(b'"')   # outside strings, inside, outside, ...
            if len(parts) % 2 == 0:
                return False   # a string left open
            brackets = b"".join(parts[::2]).translate(None, _NOT_BRACKETS)
        return m[-1] in b"]}" and _closes_at_end(bytes(brackets))   # hashable
    depth, last = 0, len(m) - 1
    for c, i in _outside_strings(m, _BRACKET):
        if c in b"[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0 and i != last:
                return False
    return depth == 0   # (a string left open hides the closing bracket: depth stays above 0)


def _outside_strings(data: bytes, tokens: re.Pattern[bytes]) -> Iterator[tuple[bytes, int]]:
    r"""The ``tokens`` matches of ``data`` that are outside its JSON strings, with their
    positions; ``tokens`` must match quotes and backslashes too (they are not yielded).

    >>> list(_outside_strings(b'["a\\"]", "b"]', _BRACKET))
    [(b'[', 0), (b']', 12)]
    """
    string, escaped = False, -2
    for t in tokens.finditer(data):
        c, i = t.group(), t.start()
        if string:
            if c == b"\\":
                escaped = i if escaped != i - 1 else -2   # a pair of backslashes escapes none
            elif c == b'"' and escaped != i - 1:
                string = False
        elif c == b'"':
            string = True
        elif c != b"\\":
            yield c, i


@functools.lru_cache(maxsize=1024)   # a producer's events have few bracket patterns
def _closes_at_end(brackets: bytes) -> bool:
    """Whether the depth of a string of brackets first returns to 0 at its end."""
    depth = 0
    for b in brackets[:-1]:
        depth += 1 if b in b"[{" else -1
        if depth == 0:
            return False
    return depth == 1 and brackets[-1:] in (b"]", b"}")


def _shapes_py(messages: list[bytes], max_bytes: int) -> tuple[list[int], bytes]:
    """The indexes of the messages that may not join a run (any but one whole ``{…}`` or
    ``[…]``, :func:`_whole`, within the size limit), in order, and every message's first byte
    (0 for an empty or over-long one). The reference for ``shapes`` in _shapes.c."""
    fit = [m if 0 < len(m) <= max_bytes else b"\0" for m in messages]
    heads = bytes(map(_first, fit))
    return [i for i, m in enumerate(fit) if m[0] not in b"{[" or not _whole(m)], heads


# The C twin of _shapes_py, unless it was not built or DETECTOR_NO_EXTENSIONS is set
# (tests/test_events_runs.py holds the two alike).
_shapes: Callable[[list[bytes], int], tuple[list[int], bytes]] = _shapes_py
if not os.environ.get("DETECTOR_NO_EXTENSIONS"):
    with contextlib.suppress(ImportError):
        _shapes = importlib.import_module("detector.core._shapes").shapes


def _decode_run(run: list[bytes], start: int, max_bytes: int, ok: list[TraceEvent],
                bad: list[Rejection], arrays: bool = False) -> None:
    """Decode a run of messages, each one object or (``arrays``: some of them) one array of
    objects, in one call; when that fails, the messages
    before and after the failing one as runs again and the failing one alone. A bad message
    then costs about two runs' parsing rather than its run's every message parsed alone (the
    decoder's error names the failing item: a hint only, every part is checked as a whole
    run is). Parts wait on a stack, not in recursion: the decoder's depth limit is the
    interpreter's less the caller's stack, so a deep message's fate must not depend on them."""
    todo = [(0, len(run), True)]   # (first, end, as a run): popped in message order
    while todo:
        a, b, as_run = todo.pop()
        if a == b:
            continue
        if not as_run:
            for i in range(a, b):
                e, r = decode(run[i], max_bytes)
                ok += e
                bad += [x._replace(message=start + i) for x in r]
            continue
        part = run[a:b]
        hint: int | None = None
        items: list[Any] | None
        try:
            items = (_mixed if arrays else _many).decode(_array_of(part))
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
            items, hint = None, _failed_item(str(e), part)
        # One item per message (always, once the joined parse succeeds: every message is one
        # whole value, _shapes; kept as a second line), and every late check passing; else
        # message by message, so each bad message is rejected alone.
        if items is not None and len(items) == len(part) and _finish_all(
                evs := _flat(items) if arrays else cast(list[TraceEvent], items)):
            ok += evs
        elif b - a <= _SPLIT_MIN:
            todo.append((a, b, False))
        elif hint is not None:
            i = a + hint
            todo += [(i + 1, b, True), (i, i + 1, False), (a, i, True)]
        else:
            i = (a + b) // 2
            todo += [(i, b, True), (a, i, True)]


def _array_of(part: list[bytes]) -> bytes:
    """``b"[" + b",".join(part) + b"]"`` in one allocation of its size: a run is often over
    100 kB, and two more copies of it (the concatenations) cost more than the join.

    >>> _array_of([b"1"]), _array_of([b"1", b"2", b"3"])
    (b'[1]', b'[1,2,3]')
    """
    if len(part) == 1:
        return b"[" + part[0] + b"]"
    return b",".join([b"[" + part[0], *part[1:-1], part[-1] + b"]"])


def _flat(items: list[Any]) -> list[TraceEvent]:
    """A run's items, an array message's events in its place."""
    evs: list[TraceEvent] = []
    for x in items:
        if x.__class__ is list:
            evs += x
        else:
            evs.append(x)
    return evs


#: Runs at most this long are decoded message by message once they fail as a whole.
_SPLIT_MIN: Final = 4
_ITEM: Final = re.compile(r"`\$\[(\d+)\]")
_BYTE: Final = re.compile(r"\(byte (\d+)\)")


def _failed_item(message: str, run: list[bytes]) -> int | None:
    """The index in ``run`` of the message a decode error of the joined run points at (the
    item a validation error names, or the message holding the byte a malformed-JSON error
    names), or None if it names neither.

    >>> run = [b'{"a": 1}', b'{"b": 2}', b'{"c": ]']
    >>> _failed_item("Expected `int`, got `str` - at `$[1].x`", run)
    1
    >>> _failed_item("JSON is malformed: invalid character (byte 24)", run)
    2
    >>> _failed_item("Input data was truncated", run) is None
    True
    """
    m = _ITEM.search(message)
    if m is not None:
        i = int(m.group(1))
    else:
        m = _BYTE.search(message)
        if m is None:
            return None
        # Message j starts at byte 1 + its predecessors' lengths and commas.
        i = bisect_right(list(accumulate((len(x) + 1 for x in run), initial=1)),
                         int(m.group(1))) - 1
    return i if 0 <= i < len(run) else None


def _slow_path(data: bytes) -> tuple[list[TraceEvent], list[Rejection]]:
    """Item-by-item decode, so one bad event in a batch is rejected alone (also one that is
    well-formed JSON but not decodable: invalid UTF-8, a number out of range)."""
    try:
        obj = _raw.decode(data)
    except RecursionError:
        items = _items(data)
        if items is None:
            return [], [_too_deep(_fingerprint(data))]
        return _outcomes(map(_part, items))   # a batch: only the deep item goes
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        parts: Sequence[msgspec.Raw | bytes] | None
        try:
            parts = _split.decode(data) if data.lstrip()[:1] == b"[" else None
        except RecursionError:
            parts = _items(data)   # well-formed but deep somewhere: split without recursion
        except (msgspec.DecodeError, UnicodeDecodeError):
            parts = None
        if parts is None:
            return [], [_not_json(data, e)]
        return _outcomes(map(_part, parts))
    return _outcomes(map(_one_item, obj if isinstance(obj, list) else [obj]))


_TOKEN: Final = re.compile(rb'["\\\[\]{},]')


def _items(data: bytes) -> list[bytes] | None:
    """The top-level items of a JSON array, split without recursion (a batch too deep for
    the decoder as a whole), or None if ``data`` is not one array of well-nested items. Only
    the bytes that matter are visited: quotes, backslashes, brackets, braces and commas.

    >>> _items(b' [1, {"a": [2, "],"]}, [[3]] ] ')
    [b'1', b'{"a": [2, "],"]}', b'[[3]]']
    >>> _items(b'{"a": 1}') is None, _items(b'[1, [2]') is None
    (True, True)
    """
    body = data.strip()
    if body[:1] != b"[" or body[-1:] != b"]":
        return None
    depth, start = 0, 1
    out: list[bytes] = []
    for c, i in _outside_strings(body, _TOKEN):
        if c in b"[{":
            depth += 1
        elif c in b"]}":
            depth -= 1
            if depth < 0 or (depth == 0 and i != len(body) - 1):
                return None
        elif depth == 1:   # a comma between items
            out.append(body[start:i].strip())
            start = i + 1
    if depth != 0:   # (a string left open hides the closing bracket: depth stays above 0)
        return None
    last = body[start:-1].strip()
    if last:
        out.append(last)
    return out if all(out) else None


def _part(raw: msgspec.Raw | bytes) -> TraceEvent | Rejection:
    """One item of a batch that did not parse as a whole."""
    try:
        return _one_item(_raw.decode(raw))
    except RecursionError:
        return _too_deep(_fingerprint(bytes(raw)))
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        return _not_json(bytes(raw), e)


def _outcomes(results: Iterable[TraceEvent | Rejection]) -> tuple[list[TraceEvent],
                                                                   list[Rejection]]:
    ok: list[TraceEvent] = []
    bad: list[Rejection] = []
    for r in results:
        if isinstance(r, TraceEvent):
            ok.append(r)
        else:
            bad.append(r)
    return ok, bad


def _not_json(data: bytes, e: Exception) -> Rejection:
    return Rejection("not_json", None, str(e)[:200], _fingerprint(data))


def _too_deep(payload: dict[str, Any]) -> Rejection:
    # msgspec's limit is the interpreter's recursion limit (1000) less the caller's stack.
    return Rejection("too_deep", None, "JSON nested deeper than the decoder's limit", payload)
