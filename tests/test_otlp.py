"""OpenTelemetry input: GenAI spans from opentelemetry-sdk, encoded by the official OTLP
encoder, decoded into trace events; privacy, hostile bytes, replay and equivalence."""

from __future__ import annotations

import io
import logging
import os
import random
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from msgspec import UNSET

from detector.config import ConfigError, load_config, parse_config
from detector.core.alert import Alert, alert_record
from detector.core.events import REASONS, Rejection, TraceEvent
from detector.core.otlp import OtlpDecoder, decoder_for
from detector.core.pipeline import Pipeline
from detector.lab.genai_spans import to_otlp_json, to_otlp_proto, write_otlp
from detector.lab.replay import replay
from detector.lab.tracefile import Oversized, TraceFileError, read_proto_messages
from tests.genai_sdk import MS, PROMPT, T0, agent_spans, per_trace, traces_data, traces_json

CFG = load_config(None, env=False)
MARK = PROMPT.encode()
FORMATS = {"otlp_proto": traces_data, "otlp_json": traces_json}


def _decode(fmt: str, *messages: bytes) -> tuple[list[TraceEvent], list[Rejection], int]:
    return decoder_for(fmt, CFG.input.otlp)(list(messages), 1 << 20)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_agent_turn_maps_onto_trace_events(fmt: str) -> None:
    ok, bad, skipped = _decode(fmt, FORMATS[fmt](agent_spans()))
    assert bad == [] and skipped == 1   # the HTTP span: counted, not dead-lettered
    by = {(e.operation, e.model if e.model else None): e for e in ok}
    assert sorted(e.operation for e in ok) == ["chat", "chat", "chat", "execute_tool",
                                               "invoke_agent"]
    chat = by[("chat", "gpt-4o-2024-08-06")]   # response model before request model
    assert (chat.tenant, chat.app, chat.environment, chat.region) == (
        "acme", "support-agent", "production", "eu-west-1")
    assert (chat.input_tokens, chat.output_tokens, chat.finish_reason, chat.refusal) == (
        812, 96, "tool_calls", False)
    assert (chat.prompt_version, chat.model_version) == ("v42", "2024-08-06")
    assert chat.ts == T0 / 1e9 + 0.3 and chat.latency_ms == 298.0
    assert chat.eval_scores == {"relevance": 0.82}   # named as input.evaluators names them
    assert len(chat.trace_id) == 32 and len(chat.span_id) == 16
    tool = by[("execute_tool", None)]
    assert (tool.tool_name, tool.tool_authorized, tool.tool_side_effect) == (
        "send_email", False, "external")
    # Older conventions: gen_ai.system, prompt/completion tokens; content_filter is a refusal.
    old = by[("chat", "gpt-3.5-turbo")]
    assert (old.input_tokens, old.output_tokens, old.refusal, old.finish_reason) == (
        40, 0, True, "content_filter")
    failed = by[("chat", "gpt-4o")]
    assert failed.error_type == "_OTHER" and failed.refusal is UNSET
    assert len({e.trace_id for e in ok}) == 1


def test_otlp_json_ids_are_hex_and_decode_as_protobuf_does() -> None:
    spans = agent_spans()
    doc = orjson.loads(traces_json(spans))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == f"{spans[0].context.trace_id:032x}" and span["kind"] in (1, 2, 3)
    assert _decode("otlp_json", traces_json(spans)) == _decode("otlp_proto", traces_data(spans))


def test_tenant_falls_back_to_service_namespace_and_a_span_attribute_beats_the_resource() -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.namespace": "globex",
                                                  "service.name": "svc",
                                                  "ai.prompt_version": "v1"}))
    tp.add_span_processor(SimpleSpanProcessor(exp))
    s = tp.get_tracer("x").start_span("chat m", start_time=T0, attributes={
        "gen_ai.operation.name": "chat", "ai.prompt_version": "v2",
        "deployment.environment": "canary"})
    s.end(end_time=T0 + MS)
    [ev], _, _ = _decode("otlp_proto", traces_data(list(exp.get_finished_spans())))
    assert (ev.tenant, ev.app, ev.prompt_version, ev.environment) == (
        "globex", "svc", "v2", "canary")


def test_the_mapping_is_configurable() -> None:
    raw = {"input": {"otlp": {"tenant": ["customer"], "tool_authorized": ["acl.allowed"],
                              "refusal_finish_reasons": ["stop"]}}}
    m = msgspec.convert(raw["input"]["otlp"], type(CFG.input.otlp))
    dec = OtlpDecoder("otlp_json", m)
    spans = agent_spans()
    ok, _, _ = dec([traces_json(spans)], 1 << 20)
    assert {e.tenant for e in ok} == {UNSET}   # tenant.id is no longer read
    assert all(e.tool_authorized is UNSET for e in ok)


def test_a_mapping_that_names_message_content_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^input\.otlp\.tenant\[1\]: 'gen_ai\.prompt\.0"):
        parse_config({"input": {"otlp": {"tenant": ["tenant.id", "gen_ai.prompt.0.content"]}}})


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_spans_are_rejected_alone_with_native_reasons(fmt: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exp))
    tracer = tp.get_tracer("x")
    for attrs in ({"ai.retries": PROMPT}, {"gen_ai.usage.input_tokens": -3},
                  {"ai.tool_side_effect": PROMPT}, {}):
        s = tracer.start_span("chat", start_time=T0, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.input.messages": PROMPT, **attrs})
        s.end(end_time=T0 + MS)
    ok, bad, _ = _decode(fmt, FORMATS[fmt](list(exp.get_finished_spans())))
    assert len(ok) == 1
    assert [(r.reason, r.field) for r in bad] == [
        ("wrong_type", "retries"), ("out_of_range", "input_tokens"),
        ("out_of_range", "tool_side_effect")]
    assert all(MARK not in r.to_json() for r in bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_message_that_is_not_otlp_is_one_bad_otlp_rejection(fmt: str) -> None:
    native = b'{"ts": 1, "operation": "chat", "prompt": "' + MARK + b'"}'
    ok, bad, _ = _decode(fmt, native, b"\xff" * 7, FORMATS[fmt](agent_spans()))
    assert len(ok) == 5 and [(r.reason, r.message) for r in bad] == [
        ("bad_otlp", 0), ("bad_otlp", 1)]
    assert bad[0].payload == {"bytes": len(native), "sha256": bad[0].payload["sha256"]}
    ok, bad, _ = decoder_for(fmt, CFG.input.otlp)([FORMATS[fmt](agent_spans())], 100)
    assert ok == [] and bad[0].reason == "too_large"


def test_prompt_text_reaches_no_event_alert_dead_letter_log_or_cache(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dec = OtlpDecoder("otlp_proto", CFG.input.otlp)
    pipe = Pipeline(CFG, dec)
    msgs = [traces_data(agent_spans(T0 + i * 20 * 10**9)) for i in range(12)]
    msgs.append(b"\x0a\x05" + MARK)   # a broken message made of prompt text
    alerts = [alert_record(a) for a in pipe.feed_many(msgs) + pipe.finish()]
    assert any(a["signal"] == "unauthorized_tool_call" and a["severity"] == "sev1"
               for a in alerts)
    out = orjson.dumps(alerts) + b"".join(r.to_json() for r in pipe.rejects)
    assert pipe.rejects and MARK not in out
    assert all(MARK not in k for k in dec.cache)   # content attributes are never cached
    assert PROMPT not in caplog.text
    kept = b"".join(msgspec.json.encode(e) for e in dec([msgs[0]], 1 << 20)[0])
    assert b"PROMPT-MARKER" not in kept


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_bytes_give_rejections_never_an_exception(fmt: str) -> None:
    rng = random.Random(14)
    good = FORMATS[fmt](agent_spans())
    dec = decoder_for(fmt, CFG.input.otlp)
    deadline = time.monotonic() + 20
    for i in range(1500):   # bounded in count and time
        if time.monotonic() > deadline:
            break
        b = bytearray(good)
        kind = i % 4
        if kind == 0:
            b = bytearray(rng.randbytes(rng.randint(0, 600)))
        elif kind == 1:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 2:
            b = b[:rng.randrange(len(b))]
        else:
            at = rng.randrange(len(b))
            b[at:at] = rng.choice([b"\x0a\xff\xff\xff\x0f", b"[" * 3000, b"\x12\x00" * 50,
                                   b'{"stringValue": 1e999}'])
        ok, bad, skipped = dec([bytes(b)], 1 << 20)
        assert all(isinstance(e, TraceEvent) for e in ok)
        assert all(r.reason in REASONS for r in bad) and skipped >= 0


def test_protobufs_pure_python_backend_is_refused_with_the_fix(tmp_path: Path) -> None:
    f = tmp_path / "t.pb"
    f.write_bytes(traces_data(agent_spans()))
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    p = subprocess.run([sys.executable, "-m", "detector.cli", "replay", str(f), "--format",
                        "otlp_proto", "--quiet"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    assert "input.format: otlp_proto needs protobuf's upb backend" in p.stderr
    assert "unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION" in p.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("fmt", FORMATS)
def test_replay_pages_sev1_for_an_unauthorized_tool_call_span(fmt: str, tmp_path: Path) -> None:
    spans = agent_spans()
    f = tmp_path / "spans"
    if fmt == "otlp_json":   # the Collector's file exporter: JSON lines
        f.write_bytes(traces_json(spans) + b"\n")
    else:                    # its proto format: 4-byte big-endian length, then the message
        data = traces_data(spans)
        f.write_bytes(len(data).to_bytes(4, "big") + data)
    p = _cli("replay", str(f), "--format", fmt, "--alerts-out", str(tmp_path / "a.jsonl"))
    assert p.returncode == 0, p.stderr
    [alert] = [orjson.loads(x) for x in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    assert (alert["severity"], alert["signal"], alert["status"]) == (
        "sev1", "unauthorized_tool_call", "firing")
    assert alert["evidence"]["trace_ids"] == [f"{spans[0].context.trace_id:032x}"]
    assert "non-GenAI spans skipped 1" in p.stderr
    # The same file as native events pages nobody without --format: not a trace event.
    p = _cli("replay", str(f), "--alerts-out", str(tmp_path / "b.jsonl"))
    assert (tmp_path / "b.jsonl").read_bytes() == b""


def test_a_single_message_proto_file_and_the_collectors_per_trace_split_replay_the_same(
        tmp_path: Path) -> None:
    spans = agent_spans() + agent_spans(T0 + 10 * 10**9, tenant="globex")
    whole = list(read_proto_messages(io.BytesIO(traces_data(spans)), 1 << 20))
    split = [v for _, v in per_trace(spans)]
    assert len(whole) == 1 and len(split) == 2
    framed = b"".join(len(v).to_bytes(4, "big") + v for v in split)
    assert list(read_proto_messages(io.BytesIO(framed), 1 << 20)) == split

    def alerts(msgs: list[bytes]) -> list[bytes]:
        out: list[Alert] = []
        replay(msgs, CFG, out.append, decoder=decoder_for("otlp_proto", CFG.input.otlp),
               binary=True)
        return sorted(orjson.dumps(alert_record(a), option=orjson.OPT_SORT_KEYS) for a in out)

    assert alerts(whole) == alerts(split) != []


def test_proto_files_bound_what_they_hold() -> None:
    big = b"\x0a" + b"x" * 50
    [o] = read_proto_messages(io.BytesIO(big), 10)
    assert isinstance(o, Oversized) and o.size == 51
    framed = (60).to_bytes(4, "big") + b"y" * 60 + (1).to_bytes(4, "big") + b"\x0a"
    got = list(read_proto_messages(io.BytesIO(framed), 10))
    assert isinstance(got[0], Oversized) and got[0].size == 60 and got[1] == b"\x0a"
    with pytest.raises(TraceFileError, match="truncated message"):
        list(read_proto_messages(io.BytesIO((9).to_bytes(4, "big") + b"abc"), 100))


def test_native_and_otlp_traffic_give_the_same_alerts(tmp_path: Path) -> None:
    from detector.lab.simulate import simulate

    simulate(tmp_path, hours=1.5, rate=5.0, seed=4,
             scenarios=["unauthorized_tool", "secret_leak", "refusal_spike"])
    native = (tmp_path / "traces.jsonl").read_bytes().splitlines()

    def alerts(lines: list[bytes], fmt: str, binary: bool = False) -> list[dict[str, object]]:
        out: list[Alert] = []
        replay(lines, CFG, out.append, decoder=decoder_for(fmt, CFG.input.otlp), binary=binary)
        return [alert_record(a) for a in out]

    expected = alerts(native, "native")
    assert {a["signal"] for a in expected} >= {"unauthorized_tool_call", "secret_leak"}
    js = io.BytesIO()
    write_otlp(native, js, "otlp_json")
    assert alerts(js.getvalue().splitlines(), "otlp_json") == expected
    pb = io.BytesIO()
    write_otlp(native, pb, "otlp_proto")
    pb.seek(0)
    assert alerts(list(read_proto_messages(pb, 1 << 20)), "otlp_proto", True) == expected


def test_skipped_spans_are_a_metric_not_dead_letters() -> None:
    from aiokafka.structs import TopicPartition
    from prometheus_client import CollectorRegistry

    from detector.config import TraceTopic
    from detector.obs.metrics import Metrics
    from detector.stream.stage1_runner import SOURCE_STRIDE, Stage1Runner, _Source

    cfg = msgspec.structs.replace(CFG, kafka=msgspec.structs.replace(
        CFG.kafka, extra_traces_topics=[TraceTopic(topic="otlp_spans", format="otlp_proto")]))
    registry = CollectorRegistry()
    r = Stage1Runner(cfg, stage2_topic="s2", stage2_partitions=1, metrics=Metrics(registry))
    tp = TopicPartition("otlp_spans", 2)
    assert r._sid(tp) == SOURCE_STRIDE + 2 and r._tp(SOURCE_STRIDE + 2) == tp
    assert r._tp(3) == TopicPartition(cfg.kafka.traces_topic, 3)
    r.sources = {r._sid(tp): _Source(cfg, 0.0, r.decoders["otlp_spans"])}
    rec = namedtuple("rec", "value offset")
    urgent = r._feed({tp: [rec(traces_data(agent_spans(int(time.time() * 1e9))), 7)]},
                     0.0)
    assert urgent   # the unauthorized tool call
    assert registry.get_sample_value("detector_otlp_spans_skipped_total") == 1
    assert registry.get_sample_value("detector_events_decoded_total") == 5
    assert r.pending == [] and r.sources[r._sid(tp)].next_offset == 8


def test_the_span_encoder_round_trips_native_events() -> None:
    evs = [TraceEvent(ts=1767571204.751, operation="execute_tool", tenant="t", app="a",
                      trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
                      latency_ms=12.3, tool_name="x", tool_authorized=False, retries=2,
                      safety_hits=["pii"], eval_scores={"relevance": 0.5},
                      error_type="timeout", finish_reason="stop", refusal=True),
           TraceEvent(ts=1767571205.0, operation="chat")]
    for fmt, enc in (("otlp_proto", to_otlp_proto), ("otlp_json", to_otlp_json)):
        ok, bad, _ = _decode(fmt, enc(evs))
        assert bad == [] and sorted(ok, key=lambda e: e.ts) == evs


def test_the_compose_collector_writes_what_the_workers_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from detector.config import TraceTopic

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    col = yaml.safe_load((deploy / "otel-collector" / "collector.yaml").read_text())
    compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
    kafka = col["exporters"]["kafka"]
    assert "kafka" in col["service"]["pipelines"]["traces"]["exporters"]
    assert "contrib" in compose["services"]["otel-collector"]["image"]
    for name in ("detector-1", "detector-2"):
        env = compose["services"][name]["environment"]
        topic, fmt = env["DETECTOR_KAFKA_EXTRA_TRACES_TOPICS"].split(":")
        assert (kafka["traces"]["topic"], kafka["traces"]["encoding"]) == (topic, fmt)
        assert kafka["brokers"] == [env["DETECTOR_KAFKA_BROKERS"]]
    assert kafka["producer"]["max_message_bytes"] <= CFG.input.max_message_bytes
    monkeypatch.setenv("DETECTOR_KAFKA_EXTRA_TRACES_TOPICS", f"{topic}:{fmt}")
    assert load_config(None).kafka.extra_traces_topics == [TraceTopic(topic=topic, format=fmt)]


def test_unique_unmapped_attributes_do_not_fill_the_cache() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exp))
    for i in range(2000):   # a response id on every span, as instrumentations set it
        s = tp.get_tracer("x").start_span("chat", start_time=T0, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.response.id": f"chatcmpl-{i}",
            "server.address": "api.example.com"})
        s.end(end_time=T0 + MS)
    dec = OtlpDecoder("otlp_proto", CFG.input.otlp)
    ok, _, _ = dec([traces_data(list(exp.get_finished_spans()))], 1 << 20)
    assert len(ok) == 2000
    assert len(dec.cache) < 300   # 256 response ids, then none; one server.address, one op
    assert dec.unmapped["gen_ai.response.id"] == 2000


def test_the_fast_path_maps_spans_as_ranking_every_attribute_does() -> None:
    # Spans whose fields come from one attribute each take the fast path; the agent turn also
    # has a field named twice (request and response model) and one on both the span and the
    # resource. Mutated copies add bad values, bad ids and broken messages.
    dec = OtlpDecoder("otlp_proto", CFG.input.otlp)
    good = [traces_data(agent_spans(T0 + k * 10**9, tenant=f"t{k % 3}", authorized=bool(k % 2)))
            for k in range(4)]
    rng = random.Random(16)
    msgs = [*good]
    for _ in range(300):   # bounded in count
        b = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        msgs.append(bytes(b))
    compared = 0
    for m in msgs:
        try:
            fast = dec._proto(m, fast=False)   # the C path: the test below
        except Exception:   # a broken message: a rejection, whichever path
            continue
        assert fast == dec._proto(m, ranked=True)   # dicts: the same fields and values
        compared += 1
    assert compared > 50
    assert all(MARK not in b for key in dec.resources for b in key)   # never content


def test_a_span_with_two_bad_fields_is_rejected_for_the_first_in_ranked_order() -> None:
    # msgspec names the first bad field it meets: the fast path's dict order differs from the
    # ranked one (resource fields first), so a message with a bad span is mapped again ranked.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"tenant.id": 5, "service.name": "svc"}))
    tp.add_span_processor(SimpleSpanProcessor(exp))
    for attrs in ({"ai.retries": -1}, {}):
        s = tp.get_tracer("x").start_span("chat", start_time=T0, attributes={
            "gen_ai.operation.name": "chat", **attrs})
        s.end(end_time=T0 + MS)
    ok, bad, _ = _decode("otlp_proto", traces_data(list(exp.get_finished_spans())))
    assert ok == [] and [(r.reason, r.field) for r in bad] == [("wrong_type", "tenant")] * 2


@pytest.mark.parametrize("fmt", ["otlp_proto", "otlp_json"])
def test_the_leading_indicators_map_from_their_ai_attributes(fmt: str) -> None:
    """ai.output_entropy and ai.escalated (no GenAI convention names either) become the
    optional fields; a negative entropy is a bad value, not a crash."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    tp.add_span_processor(SimpleSpanProcessor(exp))
    for attrs in ({"ai.output_entropy": 2.5, "ai.escalated": True}, {"ai.output_entropy": -1.0}):
        s = tp.get_tracer("x").start_span("chat", start_time=T0, attributes={
            "gen_ai.operation.name": "chat", **attrs})
        s.end(end_time=T0 + MS)
    spans = list(exp.get_finished_spans())
    msg = traces_data(spans) if fmt == "otlp_proto" else traces_json(spans)
    ok, bad, _ = _decode(fmt, msg)
    assert [(e.output_entropy, e.escalated) for e in ok] == [(2.5, True)]
    assert [(r.reason, r.field) for r in bad] == [("out_of_range", "output_entropy")]


def _varied_spans(rng: random.Random, k: int, hostile: bool = True) -> bytes:
    """One message of spans drawn from what instrumentations send: new and old GenAI names,
    cohort fields on the span or the resource (or both), fields named twice, missing end
    times, bad ids, statuses, evaluation events, and values of the wrong type or size."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status, StatusCode

    pick = rng.choice
    res = {"service.name": pick(["svc", "svc-2", 7]), "tenant.id": f"t{k % 3}"}
    if rng.random() < 0.3:
        res["gen_ai.request.model"] = "m-res"   # the resource names a span field too
    if rng.random() < 0.2:
        res["gen_ai.system"] = "openai"
    exp = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create(res))
    tp.add_span_processor(SimpleSpanProcessor(exp))
    values: dict[str, list[Any]] = {
        "gen_ai.operation.name": ["chat", "execute_tool", "", "x" * 80, 3],
        "gen_ai.system": ["openai"], "gen_ai.provider.name": ["anthropic"],
        "gen_ai.request.model": ["m-req"], "gen_ai.response.model": ["m-resp", True],
        "gen_ai.usage.input_tokens": [12, -1, 2**62, "12", 1.5],
        "gen_ai.usage.prompt_tokens": [7], "gen_ai.usage.output_tokens": [3, 0],
        "gen_ai.usage.completion_tokens": [9],
        "gen_ai.response.finish_reasons": [("stop",), ("content_filter", "stop"), ("refusal",),
                                           (), (1, 2)],
        "ai.refusal": [True, False, "yes"], "ai.safety_hits": ["pii", ("pii", "toxicity")],
        "ai.retries": [0, 2, -3], "error.type": ["timeout", ""],
        "gen_ai.tool.name": ["send_email"], "ai.tool_authorized": [False, True, 1],
        "ai.tool_side_effect": ["external", "bogus"], "tenant.id": ["t-span"],
        "service.namespace": ["ns"], "ai.memory_bytes": [10, -10],
        "gen_ai.input.messages": [PROMPT], "http.route": ["/x"],
    }
    for _ in range(rng.randint(1, 6)):
        attrs = {key: pick(v) if hostile else v[0] for key, v in values.items()
                 if rng.random() < 0.35}
        # Fields added later draw from their own generator: the draws above stay as they were.
        more = random.Random(len(attrs) * 1000 + k)
        attrs.update({key: more.choice(v) if hostile else v[0] for key, v in (
            ("ai.output_entropy", [1.25, 3, -0.5, "high"]),
            ("ai.escalated", [True, False, "no"])) if more.random() < 0.35})
        start = T0 + rng.randrange(10**9)
        s = tp.get_tracer("x").start_span(pick(["chat gpt-4o", "completion", ""]),
                                          start_time=pick([start, start, 0]),
                                          attributes=attrs)
        if rng.random() < 0.15:
            s.add_event("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "Relevance",
                                                     "gen_ai.evaluation.score.value": 0.5})
        if rng.random() < 0.2:
            s.set_status(Status(StatusCode.ERROR))
        s.end(end_time=pick([start + rng.randrange(10**9), start - 5, start]))
    return traces_data(list(exp.get_finished_spans()))


def test_the_c_span_mapping_gives_what_the_python_reference_gives() -> None:
    from detector.core import otlp

    assert otlp._spans is not None, "detector.core._spans did not build; see setup.py"
    rng = random.Random(14)
    # Well-formed values (old and new names, fields named twice) and hostile ones.
    msgs = [_varied_spans(rng, k, hostile=k % 2 == 1) for k in range(120)]   # bounded
    # Hostile copies: bytes flipped, ids of other lengths.
    for m in msgs[:60]:
        b = bytearray(m)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        msgs.append(bytes(b))
    c_dec = OtlpDecoder("otlp_proto", CFG.input.otlp)
    py_dec = OtlpDecoder("otlp_proto", CFG.input.otlp)
    in_c = compared = 0
    for m in msgs:
        try:
            fast = c_dec._proto(m)
        except Exception:   # a broken message: a rejection, whichever path
            continue
        ref = py_dec._proto(m, fast=False)
        assert len(fast) == len(ref)
        for got, want in zip(fast, ref, strict=True):
            if isinstance(got, TraceEvent):   # made in C: as msgspec makes it from the dict
                in_c += 1
                assert isinstance(want, dict)
                assert got == msgspec.convert(want, TraceEvent, strict=True), want
            else:
                assert got == want
        compared += 1
        # The whole decoder: the same events, rejections (reasons, fields) and skips.
        a, b = c_dec([m], 1 << 20), _pure(py_dec, [m])
        assert a[0] == b[0] and a[2] == b[2]
        assert [(r.reason, r.field, r.payload) for r in a[1]] == \
            [(r.reason, r.field, r.payload) for r in b[1]]
    assert compared > 100 and in_c > 40   # C mapped spans itself, not handed them all back
    assert not any(MARK in b for b in c_dec.checked)   # never content


def test_a_content_name_with_a_byte_changed_is_never_cached() -> None:
    """A mangled content name is no longer content, but unmapped: its value (prompt text) is
    not kept by any of the decoder's caches, on the C path or the Python one; nor is a long
    value under a name of our own."""
    base = traces_data(agent_spans())
    name = b"gen_ai.input.messages"
    assert name in base
    msgs = [base.replace(name, name[:i] + bytes([c]) + name[i + 1:])
            for i in range(len(name)) for c in (0x1D, ord("x"))]   # bounded: 42 messages
    msgs.append(base.replace(name, b"app.notes.of.the.turn"))   # same length, not content
    for fast in (True, False):
        dec = OtlpDecoder("otlp_proto", CFG.input.otlp)
        for m in msgs:
            assert dec._proto(m, fast=fast)   # decoded: the GenAI spans are still mapped
        kept = [*dec.cache, *dec.pairs, *dec.checked, *dec.unmapped,
                *(b for key in dec.resources for b in key)]
        assert kept and not any(MARK in (k if isinstance(k, bytes) else k.encode())
                                for k in kept)


def _pure(dec: OtlpDecoder, msgs: list[bytes]) -> tuple[list[TraceEvent], list[Rejection], int]:
    from detector.core import otlp

    c, otlp._spans = otlp._spans, None
    try:
        return dec(msgs, 1 << 20)
    finally:
        otlp._spans = c


def test_events_made_in_c_share_no_list() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exp))
    for _ in range(2):
        s = tp.get_tracer("x").start_span("chat", start_time=T0, attributes={
            "gen_ai.operation.name": "chat", "ai.safety_hits": "pii"})
        s.end(end_time=T0 + MS)
    ok, _, _ = _decode("otlp_proto", traces_data(list(exp.get_finished_spans())))
    assert ok[0].safety_hits == ["pii"] and ok[0].safety_hits is not ok[1].safety_hits


def test_the_c_mapping_hands_back_what_it_does_not_map_and_python_gets_it_right() -> None:
    """Spans the C side gives to Python (more attributes than it holds) or reads itself in
    a rarer form (all-zero ids: none, an error status) come out as the reference has them."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Status, TracesData

    def kv(k: str, v: object) -> KeyValue:
        return KeyValue(key=k, value=AnyValue(int_value=v) if isinstance(v, int)
                        else AnyValue(string_value=str(v)))

    td = TracesData()
    ss = td.resource_spans.add().scope_spans.add()
    many = [kv("gen_ai.operation.name", "chat"), kv("tenant.id", "t1")]
    many += [kv(f"x.extra{i}", i) for i in range(80)]
    ss.spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)),
                 start_time_unix_nano=T0, end_time_unix_nano=T0 + 5 * MS, attributes=many)
    ss.spans.add(trace_id=bytes(16), span_id=bytes(8), start_time_unix_nano=T0,
                 end_time_unix_nano=T0 + MS, status=Status(code=Status.STATUS_CODE_ERROR),
                 attributes=[kv("gen_ai.operation.name", "chat")])
    ok, bad, skipped = _decode("otlp_proto", td.SerializeToString())
    assert bad == [] and skipped == 0 and len(ok) == 2
    assert ok[0].tenant == "t1" and ok[0].trace_id == bytes(range(1, 17)).hex()
    assert ok[0].span_id == bytes(range(1, 9)).hex() and ok[0].latency_ms == 5.0
    assert ok[1].trace_id is UNSET and ok[1].span_id is UNSET and ok[1].error_type == "_OTHER"
    py = OtlpDecoder("otlp_proto", CFG.input.otlp)
    assert _pure(py, [td.SerializeToString()]) == (ok, [], 0)
