"""The two wire forms of OTLP traces as :mod:`detector.core.otlp` reads them.

* ``otlp_json``: msgspec structs holding only what the mapping can use; every attribute value
  stays an unparsed :class:`msgspec.Raw` slice until its name is one the mapping lists (ids
  are hex strings, enums integers, 64-bit integers strings: OTLP's JSON, not protobuf's).
* ``otlp_proto``: :func:`proto_view`, opentelemetry-proto's TracesData with each attribute
  handed over as its serialised bytes; upb does all the parsing.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = ["JKV", "JTraces", "json_traces", "json_value", "nanos", "proto_value", "proto_view"]


# -- OTLP JSON -------------------------------------------------------------------------------
class JScalar(msgspec.Struct):
    stringValue: str | None = None
    boolValue: bool | None = None
    intValue: int | str | None = None
    doubleValue: float | str | None = None


class JArray(msgspec.Struct):
    values: list[JScalar] = []


class JAny(JScalar):
    arrayValue: JArray | None = None


class JKV(msgspec.Struct):
    key: str = ""
    value: msgspec.Raw = msgspec.Raw(b"null")


class JEvent(msgspec.Struct):
    name: str = ""
    attributes: list[JKV] = []


class JStatus(msgspec.Struct):
    code: int | str = 0


class JSpan(msgspec.Struct):
    traceId: str = ""
    spanId: str = ""
    name: str = ""
    startTimeUnixNano: int | str = 0
    endTimeUnixNano: int | str = 0
    attributes: list[JKV] = []
    events: list[JEvent] = []
    status: JStatus | None = None


class JScope(msgspec.Struct):
    spans: list[JSpan] = []


class JResource(msgspec.Struct):
    attributes: list[JKV] = []


class JResourceSpans(msgspec.Struct):
    resource: JResource | None = None
    scopeSpans: list[JScope] = []


class JTraces(msgspec.Struct):
    resourceSpans: list[JResourceSpans]   # required: a native event here is a mistake


json_traces: Final = msgspec.json.Decoder(JTraces)
_any_value: Final = msgspec.json.Decoder(JAny)


def _json_scalar(v: JScalar) -> object:
    if v.stringValue is not None:
        return v.stringValue
    if v.boolValue is not None:
        return v.boolValue
    if v.intValue is not None:   # int64 is a string in proto3 JSON
        i = v.intValue
        return int(i) if isinstance(i, str) and i.lstrip("-").isdigit() else i
    if v.doubleValue is not None:
        return v.doubleValue
    return None


def json_value(raw: msgspec.Raw) -> object:
    try:
        v = _any_value.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return "\x00"   # not a value: fails the field's type check as a wrong type
    if v.arrayValue is not None:
        return [_json_scalar(x) for x in v.arrayValue.values]
    return _json_scalar(v)


# -- OTLP protobuf ---------------------------------------------------------------------------
def proto_value(v: Any) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_proto_scalar(x) for x in v.array_value.values]
    return _proto_scalar(v, kind)


def _proto_scalar(v: Any, kind: str | None = "") -> object:
    kind = v.WhichOneof("value") if kind == "" else kind
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, kind)
    return None if kind is None else "\x00"   # bytes, nested: not a contract value


def proto_view() -> tuple[Any, Any]:
    """``TracesData`` as opentelemetry-proto declares it, except that every ``attributes``
    field is ``repeated bytes``: the same wire format (a length-delimited KeyValue), handed
    to Python as one bytes object per attribute instead of a KeyValue and an AnyValue
    wrapper. A known attribute's bytes are a cache key (:meth:`OtlpDecoder._attr`); upb does
    all the parsing. Returns the view's TracesData and the official KeyValue."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    pool = descriptor_pool.DescriptorPool()
    old, new = ".opentelemetry.proto.", ".detector.otlp_view."

    def retype(m: Any) -> None:
        for f in m.field:
            if f.name == "attributes" and f.type_name == old + "common.v1.KeyValue":
                f.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                f.ClearField("type_name")
            elif f.type_name.startswith(old):
                f.type_name = new + f.type_name[len(old):]
        for n in m.nested_type:
            retype(n)

    for mod in (common_pb2, resource_pb2, trace_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)
        fdp.name = "detector_otlp_view/" + fdp.name
        fdp.package = fdp.package.replace(old[1:-1], new[1:-1], 1)
        fdp.dependency[:] = ["detector_otlp_view/" + d for d in fdp.dependency]
        for m in fdp.message_type:
            retype(m)
        pool.Add(fdp)
    traces = pool.FindMessageTypeByName(new[1:] + "trace.v1.TracesData")
    return message_factory.GetMessageClass(traces), common_pb2.KeyValue


def nanos(v: int | str) -> int:
    if isinstance(v, str):
        return int(v) if v.isdigit() else 0
    return v if v > 0 else 0
