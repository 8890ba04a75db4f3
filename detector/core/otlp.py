"""OpenTelemetry input: OTLP trace messages (``otlp_proto``, ``otlp_json``) as trace events.

One Kafka message value holds one ``TracesData`` (byte-identical to an
``ExportTraceServiceRequest``) with 1..N spans, as the Collector's Kafka exporter writes it.
Each GenAI span (one with ``gen_ai.operation.name``, or, from instrumentations older than the
v1.36 conventions, ``gen_ai.system``) becomes one :class:`~detector.core.events.TraceEvent`, mapped
by ``[input.otlp]`` and validated as a native event is (same reasons, same sanitised dead
letters); other spans are counted and skipped. The result has the native decoder's shape.

Privacy by construction: only the attribute names the mapping lists are ever read as values.
Message content (``gen_ai.input.messages``, ``gen_ai.prompt.*``, …) stays unread bytes: in upb's
arena for protobuf, an undecoded :class:`msgspec.Raw` slice for JSON; and the mapping may not
name it (:func:`check_mapping`).

>>> from detector.config import load_config
>>> dec = decoder_for("otlp_json", load_config(None).input.otlp)
>>> msg = (b'{"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",'
...        b' "value": {"stringValue": "support"}}]}, "scopeSpans": [{"spans": [{"traceId":'
...        b' "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "00f067aa0ba902b7",'
...        b' "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000250000000",'
...        b' "attributes": [{"key": "gen_ai.operation.name",'
...        b' "value": {"stringValue": "execute_tool"}},'
...        b' {"key": "gen_ai.tool.name", "value": {"stringValue": "send_email"}},'
...        b' {"key": "ai.tool_authorized", "value": {"boolValue": false}}]},'
...        b' {"name": "GET /health", "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}')
>>> ok, bad, skipped = dec([msg], 1 << 20)
>>> e = ok[0]
>>> e.operation, e.app, e.tool_name, e.tool_authorized, e.latency_ms, e.trace_id[:8], skipped
('execute_tool', 'support', 'send_email', False, 250.0, '4bf92f35', 1)
>>> dec([b"\\x00garbage"], 1 << 20)[1][0].reason
'bad_otlp'
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
from collections.abc import Callable, Iterable
from itertools import chain, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

import msgspec

from detector.config import ConfigError
from detector.core.events import (
    Rejection,
    TraceEvent,
    _finish_all,
    _one_item,
    decode_many,
    eval_key,
    too_large,
)
from detector.core.otlp_wire import (
    JKV,
    json_traces,
    json_value,
    nanos,
    proto_value,
    proto_view,
)

if TYPE_CHECKING:
    from detector.config import Config, OtlpMapping

# The span mapping in C, unless it was not built (no compiler) or DETECTOR_NO_EXTENSIONS is
# set, as for counting's _tally.
_spans: Any = None
if not os.environ.get("DETECTOR_NO_EXTENSIONS"):
    with contextlib.suppress(ImportError):
        _spans = importlib.import_module("detector.core._spans")

__all__ = ["CONTENT_ATTRIBUTES", "Decoder", "OtlpDecoder", "check_backend", "check_mapping",
           "decoder_for", "native_decoder"]

#: A decoder: messages and the size limit in; events, rejections and non-GenAI spans skipped out.
Decoder = Callable[[list[bytes], int], tuple[list[TraceEvent], list[Rejection], int]]

#: Attribute name prefixes that carry message content (prompts, completions, tool arguments
#: and results): never read, and never allowed in the mapping.
CONTENT_ATTRIBUTES: Final = ("gen_ai.input.messages", "gen_ai.output.messages",
                             "gen_ai.prompt", "gen_ai.completion", "gen_ai.system_instructions",
                             "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
                             "gen_ai.evaluation.explanation")
_OPERATION: Final = "gen_ai.operation.name"
_LEGACY: Final = ("gen_ai.system", "gen_ai.provider.name")   # GenAI spans without the above
_EVAL_EVENT: Final = "gen_ai.evaluation.result"
_EVAL_NAME, _EVAL_SCORE = "gen_ai.evaluation.name", "gen_ai.evaluation.score.value"
_MAX_EVALS: Final = 16
_ERROR: Final = 2   # Status.STATUS_CODE_ERROR
_FIELDS: Final = ("tenant", "region", "app", "environment", "model", "model_version",
                  "prompt_version", "policy_version", "input_tokens", "output_tokens",
                  "finish_reason", "refusal", "instruction_violation", "output_format_valid",
                  "safety_hits", "retries", "error_type", "tool_name", "tool_authorized",
                  "tool_side_effect", "tool_approved", "schema_valid", "tool_result_fabricated",
                  "tool_status", "memory_bytes", "output_entropy", "escalated")
_MISSING: Final = object()
_LEGACY_FIELD: Final = "_gen_ai_system"
_FROM_REASONS: Final = "_refusal_from_finish_reasons"
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
_CACHE_ENTRIES: Final = 1 << 16
_CACHE_KEYS: Final = 1 << 12
_VALUES_PER_UNMAPPED: Final = 256
#: An unmapped attribute is cached only if its name has none of these words (a content
#: attribute's name with a byte changed is unmapped, not content) and it is at most this long.
_CONTENT_WORDS: Final = ("message", "prompt", "completion", "content", "instruction",
                         "argument", "result", "explanation", "input", "output")
_UNMAPPED_MAX_BYTES: Final = 96
_RESOURCES: Final = 1 << 10


def check_mapping(cfg: Config) -> None:
    """A mapping that names a content attribute would copy prompt text into a field; and
    otlp_proto anywhere needs the upb backend (:func:`check_backend`)."""
    if cfg.input.format == "otlp_proto":
        check_backend()
    for i, t in enumerate(cfg.kafka.extra_traces_topics):
        if t.format == "otlp_proto":
            check_backend(f"kafka.extra_traces_topics[{i}].format")
    m = cfg.input.otlp
    for f in _FIELDS:
        for i, name in enumerate(getattr(m, f)):
            if name.startswith(CONTENT_ATTRIBUTES):
                raise ConfigError(f"input.otlp.{f}[{i}]: {name!r} carries message content, "
                                  "which is never read")


def _content_like(name: str) -> bool:
    """Whether an unmapped attribute's name may carry message text, so its value is never
    cached: the content names with a byte changed, and names of the same kind.

    >>> _content_like("gen_ai\x1dinput.messages"), _content_like("app.Prompt_text")
    (True, True)
    >>> _content_like("http.route"), _content_like("gen_ai.request.temperature")
    (False, False)
    """
    low = name.lower()
    return any(w in low for w in _CONTENT_WORDS)


def check_backend(key: str = "input.format") -> None:
    """Refuse protobuf's pure-Python backend: ten times slower than upb at parsing."""
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() == "python":
        raise ConfigError(
            f"{key}: otlp_proto needs protobuf's upb backend, and this process runs the "
            "pure-Python one; unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION, or install a "
            "binary wheel: pip install --force-reinstall --only-binary=:all: 'protobuf>=5'")


def native_decoder(messages: list[bytes], max_bytes: int) -> tuple[list[TraceEvent],
                                                                      list[Rejection], int]:
    return (*decode_many(messages, max_bytes), 0)


def decoder_for(fmt: str, mapping: OtlpMapping) -> Decoder:
    """The decoder of an ``input.format``; ``otlp_proto`` refuses protobuf's pure-Python
    backend (ten times slower) with a :class:`ConfigError` that says how to fix it."""
    return native_decoder if fmt == "native" else OtlpDecoder(fmt, mapping)


def _fingerprint(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


_RANK, _FIELD_VALUE = itemgetter(1), itemgetter(0, 2)


def _resolve(res: list[tuple[str, int, object]],
             hits: list[tuple[tuple[str, int, object], ...]]) -> dict[str, object]:
    """field -> value of its best-ranked attribute: sorted worst first, so the best is
    written last (C-level passes: the hot path; real spans often carry two names of one
    field, such as the request and the response model)."""
    trip = res + list(chain.from_iterable(hits))
    trip.sort(key=_RANK, reverse=True)
    return dict(map(_FIELD_VALUE, trip))


class OtlpDecoder:
    """``otlp_proto`` or ``otlp_json`` messages to trace events (see the module doc)."""

    def __init__(self, fmt: str, mapping: OtlpMapping) -> None:
        if fmt == "otlp_proto":
            check_backend()
            self._parse: Callable[[bytes], Iterable[Any]] = self._proto
            self._traces, self._kv = proto_view()
        elif fmt == "otlp_json":
            self._parse = self._json
        else:
            raise ConfigError(f"input.format: {fmt!r} is not an OTLP format")
        self.fmt = fmt
        # attribute name -> (field, rank): the first name of a field ranks best; a span's
        # attribute beats its resource's of the same name (rank + 1).
        self.index: dict[str, list[tuple[str, int]]] = {}
        for f in _FIELDS:
            for i, name in enumerate(getattr(mapping, f)):
                self.index.setdefault(name, []).append((f, 2 * i))
        self.index.setdefault(_OPERATION, []).append(("operation", 0))
        for name in _LEGACY:
            self.index.setdefault(name, []).append((_LEGACY_FIELD, 0))
        # KeyValue bytes -> its ((field, rank, value), ...); bounded, and never content.
        self.cache: dict[bytes, tuple[tuple[str, int, object], ...]] = {}
        self.pairs: dict[bytes, tuple[tuple[str, object], ...]] = {}   # the same, unranked
        self.resources: dict[tuple[bytes, ...], Any] = {}   # _resource's, bounded
        self.unmapped: dict[str, int] = {}   # unmapped name -> its values cached
        self.refusals = frozenset(mapping.refusal_finish_reasons)
        # The same again for the C mapping: KeyValue bytes -> ((slot offset, rank, value), ...),
        # each value as msgspec's check of its field gives it, or False if a check fails.
        self.checked: dict[bytes, tuple[tuple[int, int, object], ...] | bool] = {}
        self.offsets: dict[str, int] = {}
        if _spans is not None:
            self.offsets = _spans.configure(TraceEvent(ts=0.0, operation="-"),
                                            ("operation", *_FIELDS))
            self.offsets.update({_FROM_REASONS: -1, _LEGACY_FIELD: -2})

    # -- messages --------------------------------------------------------------------------
    def __call__(self, messages: list[bytes], max_bytes: int) -> tuple[list[TraceEvent],
                                                                       list[Rejection], int]:
        """Decode several messages; never raises."""
        items: list[dict[str, Any]] = []
        where: list[int] = []
        bad: list[Rejection] = []
        skipped = 0
        for i, data in enumerate(messages):
            if len(data) > max_bytes:
                bad.append(too_large(len(data), hashlib.sha256(data).hexdigest(), max_bytes)
                           ._replace(message=i))
                continue
            try:
                spans = list(self._parse(data))
            except Exception as e:   # any bytes: the parsers' errors differ by backend
                bad.append(Rejection("bad_otlp", None,
                                     f"not an OTLP {self.fmt} traces message "
                                     f"({type(e).__name__})", _fingerprint(data), i))
                continue
            kept = list(filter(None, spans))   # None: not a GenAI span
            skipped += len(spans) - len(kept)
            items += kept
            where += [i] * len(kept)
        ok = self._validate(items, where, bad, messages)
        if len(bad) > 1:
            bad.sort(key=lambda r: r.message)
        return ok, bad, skipped

    def _validate(self, items: list[Any], where: list[int], bad: list[Rejection],
                  messages: list[bytes]) -> list[TraceEvent]:
        """The native checks in one C pass; item by item (for the reasons) if one fails.
        Events the C mapping made are checked already."""
        done = list(map(isinstance, items, repeat(TraceEvent)))
        if all(done):
            return items
        todo = items if not any(done) else [x for x, d in zip(items, done, strict=True)
                                             if not d]
        try:
            evs = msgspec.convert(todo, list[TraceEvent], strict=True)
        except msgspec.ValidationError:
            evs = None
        if evs is not None and _finish_all(evs):   # JSON ids may not be hex
            if todo is items:
                return evs
            it = iter(evs)
            return [x if d else next(it) for x, d in zip(items, done, strict=True)]
        results = [x if type(x) is TraceEvent else _one_item(x) for x in items]
        if self.fmt == "otlp_proto":
            # The fast path orders a span's fields otherwise, and msgspec names the first bad
            # one: a message with a bad span is mapped again as the ranked path does.
            failed = {i for r, i in zip(results, where, strict=True)
                      if not isinstance(r, TraceEvent)}
            for i in sorted(failed, reverse=True):
                at = where.index(i)
                redo = [_one_item(x) for x in self._proto(messages[i], ranked=True) if x]
                results[at:at + len(redo)] = redo
        ok: list[TraceEvent] = []
        for r, i in zip(results, where, strict=True):
            if isinstance(r, TraceEvent):
                ok.append(r)
            else:
                bad.append(r._replace(message=i))
        return ok

    def _proto(self, data: bytes, ranked: bool = False,
               fast: bool = True) -> list[dict[str, Any] | None]:
        """The hot path. A resource's attributes are resolved once for all its spans; each
        span is mapped by :meth:`_map_span`, or by its C twin (``fast`` and built), which hands
        back to it, with their resource, the spans it does not map itself."""
        msg = self._traces()
        msg.ParseFromString(data)
        if _spans is not None and fast and not ranked:
            got: list[Any] = []
            if _spans.map_message(msg, self._based, self.checked, self._fill, got):
                got = [self._map_span(x[0], *self._resource(tuple(x[1].resource.attributes))[:2],
                                      False) if type(x) is tuple else x for x in got]
            return got
        out: list[dict[str, Any] | None] = []
        for rs in msg.resource_spans:
            res, base, _ = self._resource(tuple(rs.resource.attributes))
            for ss in rs.scope_spans:
                out += [self._map_span(s, res, base, ranked) for s in ss.spans]
        return out

    def _based(self, rs: Any) -> tuple[tuple[int, int, object], ...] | bool:
        """A resource's attributes as the C mapping's checked pairs (False: its spans are
        mapped in Python)."""
        return self._resource(tuple(rs.resource.attributes))[2]

    def _fill(self, b: bytes) -> tuple[tuple[int, int, object], ...] | bool:
        """An attribute's entry in ``checked`` (the C mapping's miss), cached as ``pairs``
        caches it (never content)."""
        got = self._check(self._attr(b)[1])
        if b in self.pairs:
            self.checked[b] = got
        return got

    def _check(self, triples: Iterable[tuple[str, int, object]]
               ) -> tuple[tuple[int, int, object], ...] | bool:
        """(field, rank, value) as (slot offset, rank, checked value), or False if msgspec
        refuses a value (the span is then mapped and rejected in Python, which names why)."""
        out = []
        for f, rank, v in triples:
            if f in (_FROM_REASONS, _LEGACY_FIELD):
                out.append((self.offsets[f], rank, v))
                continue
            item = {"ts": 0.0, "operation": "-", f: v}
            try:
                ev = msgspec.convert(item, TraceEvent, strict=True)
            except (msgspec.ValidationError, RecursionError):
                return False
            out.append((self.offsets[f], rank, getattr(ev, f)))
        return tuple(out)

    def _map_span(self, s: Any, res: list[tuple[str, int, object]], base: dict[str, object],
                  ranked: bool) -> dict[str, Any] | None:
        """One span (the reference of _spans.c): its fields are one dict of its attributes'
        cached (field, value) pairs, merged with its resource's, unless a field is named
        twice (or ``ranked``: then :func:`_resolve`)."""
        attrs = s.attributes
        # C-level; misses (None) parsed once just below
        hits: list[Any] = list(map(self.pairs.get, attrs))
        if None in hits:
            hits = [self._attr(b)[0] if h is None else h
                    for h, b in zip(hits, attrs, strict=True)]
        best = dict(chain.from_iterable(hits))
        if (ranked or len(best) != sum(map(len, hits))
                or not base.keys().isdisjoint(best)):
            best = _resolve(res, list(map(self._triples, attrs)))
        elif base:
            best.update(base)
        if "operation" in best:
            name = ""   # read only for a span without it (below)
        elif _LEGACY_FIELD in best:
            name = s.name
        else:
            return None   # not a GenAI operation: nothing else read
        events = s.events
        return self._span(
            best,
            [(e.name, [self._kv.FromString(b) for b in e.attributes], proto_value)
             for e in events if e.name == _EVAL_EVENT] if events else (),
            s.trace_id.hex(), s.span_id.hex(), name, s.start_time_unix_nano,
            s.end_time_unix_nano, s.status.code if s.HasField("status") else 0)

    def _resource(self, attrs: tuple[bytes, ...]) -> tuple[
            list[tuple[str, int, object]], dict[str, object],
            tuple[tuple[int, int, object], ...] | bool]:
        """A resource's ranked attributes, its own best fields and those as the C mapping's
        checked pairs: the same for every message of one service, so cached (bounded) unless
        it has an uncached attribute."""
        got = self.resources.get(attrs)
        if got is None:
            res = self._hits(map(self._triples, attrs), 1)
            base = _resolve(res, [])
            got = res, base, self._check(res) if self.offsets else False
            if all(map(self.cache.__contains__, attrs)):   # never content
                if len(self.resources) >= _RESOURCES:
                    self.resources.clear()
                self.resources[attrs] = got
        return got

    def _triples(self, b: bytes) -> tuple[tuple[str, int, object], ...]:
        t = self.cache.get(b)
        return self._attr(b)[1] if t is None else t

    def _attr(self, b: bytes) -> tuple[tuple[tuple[str, object], ...],
                                       tuple[tuple[str, int, object], ...]]:
        """What one attribute (a serialised KeyValue) maps to: its ((field, value), …) and
        ((field, rank, value), …), parsed by upb and cached. Content attributes are never cached
        or read, nor unmapped ones whose values keep changing (a response id would fill the
        cache and clear it)."""
        kv = self._kv.FromString(b)
        key = kv.key
        hits = self.index.get(key)
        out = self._derive(hits, proto_value(kv.value)) if hits else ()
        pairs = tuple((f, v) for f, _, v in out)
        if key.startswith(CONTENT_ATTRIBUTES):
            return pairs, out
        if not hits:
            if len(b) > _UNMAPPED_MAX_BYTES or _content_like(key):
                return pairs, out
            seen = self.unmapped
            if len(seen) >= _CACHE_KEYS:   # names are input too: bounded
                seen.clear()
            n = seen[key] = seen.get(key, 0) + 1
            if n > _VALUES_PER_UNMAPPED:
                return pairs, out
        if len(self.cache) >= _CACHE_ENTRIES:
            self.cache.clear()
            self.pairs.clear()
            self.checked.clear()
        self.cache[b] = out
        self.pairs[b] = pairs
        return pairs, out

    def _json(self, data: bytes) -> Iterable[dict[str, Any] | None]:
        msg = json_traces.decode(data)
        for rs in msg.resourceSpans:
            res = self._hits(self._jattrs(rs.resource.attributes if rs.resource else ()), 1)
            for ss in rs.scopeSpans:
                for s in ss.spans:
                    code = s.status.code if s.status else 0
                    yield self._span(
                        _resolve(res, self._jattrs(s.attributes)),
                        [(e.name, e.attributes, json_value) for e in s.events
                         if e.name == _EVAL_EVENT],
                        s.traceId.lower(), s.spanId.lower(), s.name,
                        nanos(s.startTimeUnixNano), nanos(s.endTimeUnixNano),
                        _ERROR if code in (_ERROR, "STATUS_CODE_ERROR") else 0)

    def _jattrs(self, attrs: Iterable[JKV]) -> list[tuple[tuple[str, int, object], ...]]:
        index = self.index
        out = []
        for kv in attrs:
            hits = index.get(kv.key)   # an unmapped value stays an unparsed Raw slice
            if hits:
                out.append(self._derive(hits, json_value(kv.value)))
        return out

    def _derive(self, hits: list[tuple[str, int]], v: object) -> tuple[tuple[str, int, object],
                                                                        ...]:
        """(field, rank, value) for each field an attribute maps to, worked out once per
        distinct attribute: the first finish reason, and a refusal from the finish reasons
        (which a refusal attribute overrides: :meth:`_span`); one safety label as a list."""
        out: list[tuple[str, int, object]] = []
        for f, rank in hits:
            if f == "finish_reason":
                reasons = v if isinstance(v, list) else [v]
                if not reasons:
                    continue
                out.append((f, rank, reasons[0]))
                out.append((_FROM_REASONS, rank, not self.refusals.isdisjoint(
                    r for r in reasons if isinstance(r, str))))
            elif f == "safety_hits" and isinstance(v, str):
                out.append((f, rank, [v]))
            else:
                out.append((f, rank, v))
        return tuple(out)

    @staticmethod
    def _hits(hits: Iterable[tuple[tuple[str, int, object], ...]],
              extra: int) -> list[tuple[str, int, object]]:
        """A resource's mapped attributes, ranked after a span's of the same name."""
        return [(f, rank + extra, v) for hit in hits for f, rank, v in hit]

    # -- one span --------------------------------------------------------------------------
    def _span(self, best: dict[str, object], evals: Iterable[Any], tid: str,
              sid: str, name: str, start: int, end: int, status: int) -> dict[str, Any] | None:
        out: dict[str, Any] = best
        legacy = out.pop(_LEGACY_FIELD, _MISSING)
        if "operation" not in out:
            if legacy is _MISSING:
                return None   # not a GenAI operation
            # Instrumentations before gen_ai.operation.name: the span name starts with it.
            out["operation"] = (name.split(" ", 1)[0] or "chat") if name else "chat"
        if end:
            out["ts"] = end / 1_000_000_000   # int / int: correctly rounded
        if tid and tid != _NO_TRACE:   # all zeros: no id (W3C)
            out["trace_id"] = tid
        if sid and sid != _NO_SPAN:
            out["span_id"] = sid
        if start and end >= start:
            out["latency_ms"] = (end - start) / 1_000_000
        refused = out.pop(_FROM_REASONS, _MISSING)
        if refused is not _MISSING and "refusal" not in out:
            out["refusal"] = refused
        if status == _ERROR and "error_type" not in out:
            out["error_type"] = "_OTHER"   # the conventions' value when the class is unknown
        if evals:
            scores = self._evals(evals)
            if scores:
                out["eval_scores"] = scores
        return out

    def _evals(self, events: Iterable[Any]) -> dict[str, float]:
        """``gen_ai.evaluation.result`` events (name, attributes, value reader): evaluator name
        -> score (finite numbers only; the explanation, free text, is never read)."""
        scores: dict[str, float] = {}
        for _, attrs, value in events:
            name = score = None
            for kv in attrs:
                if kv.key == _EVAL_NAME:
                    name = value(kv.value)
                elif kv.key == _EVAL_SCORE:
                    score = value(kv.value)
            if (isinstance(name, str) and 0 < len(name) <= 64
                    and isinstance(score, int | float) and not isinstance(score, bool)
                    and math.isfinite(score) and len(scores) < _MAX_EVALS):
                # Named as input.evaluators names them; the counting ignores the unlisted.
                scores[eval_key(name)] = float(score)
        return scores
