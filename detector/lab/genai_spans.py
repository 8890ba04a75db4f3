"""Trace events as OpenTelemetry GenAI spans, encoded by the official OTLP encoder
(``opentelemetry-exporter-otlp-proto-common``): what ``detector simulate --format`` writes and
what the OTLP tests and bench feed the decoder. The inverse of :mod:`detector.core.otlp` under the
default ``[input.otlp]`` mapping: cohort fields on the resource, the rest on the span.

Needs ``opentelemetry-sdk`` and the exporter's common package (the ``test`` extra); the
detector itself does not.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import IO, Any, Final

from msgspec import UNSET

from detector.core.events import TraceEvent, decode

__all__ = ["RESOURCE_ATTRIBUTES", "SPAN_ATTRIBUTES", "to_otlp_json", "to_otlp_proto", "to_spans",
           "write_otlp"]

#: Resource attribute of each cohort field (the first the default mapping tries there).
RESOURCE_ATTRIBUTES: Final = {"tenant": "tenant.id", "app": "service.name",
                              "environment": "deployment.environment.name",
                              "region": "cloud.region"}
#: Span attribute of each other field: the GenAI conventions' name where there is one.
SPAN_ATTRIBUTES: Final = {
    "model": "gen_ai.response.model", "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens", "error_type": "error.type",
    "tool_name": "gen_ai.tool.name",
    **{f: f"ai.{f}" for f in (
        "model_version", "prompt_version", "policy_version", "refusal",
        "instruction_violation", "output_format_valid", "safety_hits", "retries",
        "tool_authorized", "tool_side_effect", "tool_approved", "schema_valid",
        "tool_result_fabricated", "tool_status", "memory_bytes")},
}
_IDS: Final = ("traceId", "spanId", "parentSpanId")


def to_spans(events: Iterable[TraceEvent]) -> list[Any]:
    """One SDK ``ReadableSpan`` per event, as a GenAI instrumentation ends it."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

    scope = InstrumentationScope("detector.lab.simulate")
    resources: dict[tuple[Any, ...], Any] = {}
    spans = []
    for ev in events:
        key = tuple(getattr(ev, f) for f in RESOURCE_ATTRIBUTES)
        res = resources.get(key)
        if res is None:
            res = resources[key] = Resource({a: v for a, v in zip(
                RESOURCE_ATTRIBUTES.values(), key, strict=True) if v is not UNSET})
        attrs: dict[str, Any] = {"gen_ai.operation.name": ev.operation}
        for f, a in SPAN_ATTRIBUTES.items():
            v = getattr(ev, f)
            if v is not UNSET:
                attrs[a] = v
        if ev.finish_reason is not UNSET:
            attrs["gen_ai.response.finish_reasons"] = [ev.finish_reason]
        # Whole microseconds first: ts * 1e9 is past a float's exact integers.
        end = round(ev.ts * 1e6) * 1000   # type: ignore[operator]  # decode() gave epoch seconds
        # No latency: no start time (0), which the decoder reads as no latency.
        start = end - round(ev.latency_ms * 1e3) * 1000 if ev.latency_ms is not UNSET else 0
        evs = [Event("gen_ai.evaluation.result", {"gen_ai.evaluation.name": n,
                                                  "gen_ai.evaluation.score.value": s}, end)
               for n, s in (ev.eval_scores or {}).items()]
        ctx = SpanContext(int(ev.trace_id, 16) if ev.trace_id else 0,
                          int(ev.span_id, 16) if ev.span_id else 0, False)
        status = Status(StatusCode.ERROR if ev.error_type is not UNSET else StatusCode.UNSET)
        name = f"{ev.operation} {ev.tool_name if ev.tool_name else ev.model or ''}".strip()
        spans.append(ReadableSpan(
            name, ctx, resource=res, attributes=attrs, events=evs, kind=SpanKind.CLIENT,
            status=status, start_time=start, end_time=end, instrumentation_scope=scope))
    return spans


def to_otlp_proto(events: Iterable[TraceEvent]) -> bytes:
    """One ``ExportTraceServiceRequest`` (= ``TracesData``) as the Collector's Kafka exporter
    writes a message value with ``encoding: otlp_proto``."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(to_spans(events)).SerializeToString()


def to_otlp_json(events: Iterable[TraceEvent]) -> bytes:
    """The same as OTLP JSON (``encoding: otlp_json``): ids as hex, enums as integers
    (protobuf's JSON mapping would write the ids in base64)."""
    import orjson
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    doc = json_format.MessageToDict(encode_spans(to_spans(events)),
                                    use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for s in ss.get("spans", ()):
                for k in _IDS:
                    if k in s:
                        s[k] = base64.b64decode(s[k]).hex()
    return orjson.dumps(doc)


def write_otlp(lines: Iterable[bytes], out: IO[bytes], fmt: str) -> tuple[int, int]:
    """Native trace-event lines as OTLP files the Collector's file exporter writes: one
    message per line that holds events (``otlp_json``: a JSON line; ``otlp_proto``: 4-byte
    big-endian length, then the message). Lines without a valid event are left out (spans
    cannot be malformed the same way). Returns (messages, spans) written."""
    messages = spans = 0
    for line in lines:
        evs, _ = decode(line)
        if not evs:
            continue
        if fmt == "otlp_json":
            out.write(to_otlp_json(evs) + b"\n")
        else:
            data = to_otlp_proto(evs)
            out.write(len(data).to_bytes(4, "big") + data)
        messages += 1
        spans += len(evs)
    return messages, spans
